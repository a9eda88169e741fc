// 2-D convolution on NCHW tensors with OIHW weights (torch.nn.Conv2d, square kernel).
#pragma once

#include <string>

#include "engine/parameter_store.hpp"
#include "engine/plan.hpp"

namespace engine {

struct Conv2d {
  Conv2d(ParameterStore& store, const std::string& name, int64_t in_channels, int64_t out_channels,
         int64_t kernel_size, int64_t stride = 1, int64_t padding = 0, bool bias = true);

  // src [B, C, H, W] -> dst [B, O, H', W'], H' = (H + 2·padding - kernel) / stride + 1.
  // src must stay alive until backward.
  const Tensor& forward(Context& ctx, const Tensor& src);
  // Overwrites the weight and bias gradients; returns diff_src [B, C, H, W].
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);
  // torch's default: weight and bias uniform in ±1/√(C·k·k).
  void reset_parameters(Context& ctx);

  int64_t in_channels, out_channels, kernel_size, stride, padding;
  Parameter* weight;  // [O, C, k, k]
  Parameter* bias;    // [O], or nullptr

 private:
  struct Plan {
    dnnl::convolution_forward fwd;
    dnnl::convolution_backward_data bwd_data;
    dnnl::convolution_backward_weights bwd_weights;
    dnnl::memory src, weight, bias, dst, diff_dst, diff_src, diff_weight, diff_bias;
    Tensor dst_tensor, diff_src_tensor;
  };
  std::unique_ptr<Plan> build(Context& ctx, const Dims& src_dims);
  PlanCache<Plan> plans_;
};

}  // namespace engine
