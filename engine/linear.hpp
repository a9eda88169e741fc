// Linear: dst = src·Wᵀ + b over the last axis, any leading axes (torch.nn.Linear).
#pragma once

#include <string>

#include "engine/parameter_store.hpp"
#include "engine/plan.hpp"

namespace engine {

struct Linear {
  // weight_shape: how the weight is named in the state dict when it is not [out, in], e.g.
  // timm's patch_embed.proj.weight [D, C, P, P]; same memory, same matrix.
  Linear(ParameterStore& store, const std::string& name, int64_t in_features, int64_t out_features,
         bool bias = true, Dims weight_shape = {});

  // src [..., in] -> dst [..., out]. src must stay alive until backward.
  const Tensor& forward(Context& ctx, const Tensor& src);
  // diff_dst [..., out] -> diff_src [..., in]; overwrites the weight and bias gradients.
  // Without input_gradient the returned tensor is not written.
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);
  // torch's default: weight and bias uniform in ±1/√in_features.
  void reset_parameters(Context& ctx);

  int64_t in_features, out_features;
  bool input_gradient = true;  // false: backward skips diff_src (the network's first layer)
  Parameter* weight;           // [out, in]
  Parameter* bias;             // [out], or nullptr

 private:
  struct Plan {
    dnnl::matmul fwd, bwd_data, bwd_weights;
    RowSum bwd_bias;  // the bias gradient, M = 1 included
    dnnl::memory src, weight, weight_t, bias, dst, diff_dst, diff_dst_t, diff_src, diff_weight,
        diff_bias;
    Tensor dst_tensor, diff_src_tensor;  // [..., out], [..., in]
  };
  std::unique_ptr<Plan> build(Context& ctx, const Dims& src_dims);
  PlanCache<Plan> plans_;
};

}  // namespace engine
