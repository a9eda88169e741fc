// LayerNorm over the last axis with a learned scale and shift (torch.nn.LayerNorm; timm's
// ViT uses eps 1e-6).
#pragma once

#include <string>

#include "engine/fused.hpp"
#include "engine/parameter_store.hpp"
#include "engine/plan.hpp"

namespace engine {

struct LayerNorm {
  LayerNorm(ParameterStore& store, const std::string& name, int64_t dim, float eps = 1e-6f);

  // src [..., D] -> dst [..., D]; keeps the mean and variance for backward.
  const Tensor& forward(Context& ctx, const Tensor& src);
  // diff_dst [..., D] -> diff_src; overwrites the weight and bias gradients.
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);
  void reset_parameters();  // weight 1, bias 0

  // Fused inference: f32 [rows, D] -> f32 [rows, D], reading the weight and bias in place.
  struct Fused {
    dnnl::layer_normalization_forward prim;
    dnnl::memory scale, shift;
    void run(dnnl::stream& s, const dnnl::memory& src, const dnnl::memory& dst) const;
  };
  // With `scale`, the output times scale (folded into the weight and bias).
  Fused fused(FusedBuild& f, int64_t rows, float scale = 1.0f) const;

  int64_t dim;
  float eps;
  Parameter* weight;      // [D], the scale (gamma)
  Parameter* bias;        // [D], the shift (beta)
  std::string grad_slot;  // non-empty: diff_src shared through Context::shared_buffer

 private:
  struct Plan {
    dnnl::layer_normalization_forward fwd;
    dnnl::layer_normalization_backward bwd;
    dnnl::memory src, dst, mean, variance, scale, shift, diff_dst, diff_src, diff_scale, diff_shift,
        workspace;
    Tensor dst_tensor, diff_src_tensor;
  };
  std::unique_ptr<Plan> build(Context& ctx, const Dims& src_dims);
  PlanCache<Plan> plans_;
};

}  // namespace engine
