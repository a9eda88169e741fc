// timm's LayerScale (CaiT, DeiT III, DINOv2): x · γ, a learned scale per channel that starts at
// init_values, so a deep model's residual branches start small. [..., D] -> [..., D].
#pragma once

#include <string>

#include "engine/parameter_store.hpp"
#include "engine/plan.hpp"

namespace engine {

struct LayerScale {
  LayerScale(ParameterStore& store, const std::string& name, int64_t dim, float init_values);
  // src must stay alive until backward: γ's gradient is Σ diff_dst · src over the rows.
  const Tensor& forward(Context& ctx, const Tensor& src);
  // -> diff_src = diff_dst · γ; overwrites γ's gradient.
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);
  void reset_parameters();  // γ = init_values

  int64_t dim;
  float init_values;
  Parameter* gamma;       // [D], not decayed
  std::string grad_slot;  // non-empty: diff_src shared through Context::shared_buffer

 private:
  struct Plan {
    dnnl::binary scale;    // [M, D] · [1, D]
    dnnl::binary product;  // [M, D] · [M, D]
    RowSum sum_rows;       // [M, D] -> [1, D]
    dnnl::memory src, gamma, dst, diff_dst, diff_src, products, diff_gamma;
    Tensor dst_tensor, diff_src_tensor, products_tensor;
  };
  PlanCache<Plan> plans_;
};

}  // namespace engine
