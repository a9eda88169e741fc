// 2-D convolution with OIHW weights (torch.nn.Conv2d, square kernel), on NCHW or channels-last
// NHWC tensors.
#pragma once

#include <string>

#include "engine/parameter_store.hpp"
#include "engine/plan.hpp"

namespace engine {

struct Conv2d {
  Conv2d(ParameterStore& store, const std::string& name, int64_t in_channels, int64_t out_channels,
         int64_t kernel_size, int64_t stride = 1, int64_t padding = 0, bool bias = true,
         Layout layout = Layout::nchw);
  // src [B, C, H, W] (NHWC: [B, H, W, C]) -> dst [B, O, H', W'] (NHWC: [B, H', W', O]),
  // H' = (H + 2·padding - kernel) / stride + 1. src must stay alive until backward.
  const Tensor& forward(Context& ctx, const Tensor& src);
  // Overwrites the weight and bias gradients; returns diff_src, shaped as src (not written
  // without input_gradient).
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);
  // torch's default: weight and bias uniform in ±1/√(C·k·k).
  void reset_parameters(Context& ctx);

  int64_t in_channels, out_channels, kernel_size, stride, padding;
  Layout layout;
  bool input_gradient = true;  // false: backward skips diff_src (the network's first layer)
  Parameter* weight;           // [O, C, k, k], always torch's OIHW
  Parameter* bias;             // [O], or nullptr

 private:
  // With NHWC the kernels want their own weight layout: the OIHW parameter is reordered into
  // it before use, and the weight gradient back out of it (weights are small next to the
  // activations, so this costs little).
  struct WeightCopy {
    dnnl::memory mem;
    dnnl::reorder reorder;  // empty when mem is the parameter itself
  };
  struct Plan {
    dnnl::convolution_forward fwd;
    dnnl::convolution_backward_data bwd_data;
    dnnl::convolution_backward_weights bwd_weights;
    dnnl::memory src, weight, bias, dst, diff_dst, diff_src, diff_weight, diff_bias;
    WeightCopy fwd_weight, bwd_data_weight, bwd_diff_weight;
    Tensor dst_tensor, diff_src_tensor;
  };
  std::unique_ptr<Plan> build(Context& ctx, const Dims& src_dims);
  PlanCache<Plan> plans_;
};

}  // namespace engine
