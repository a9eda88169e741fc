// Element-wise activations: Gelu (erf form, torch.nn.GELU's default), any oneDNN eltwise
// algorithm by name (GELU's tanh form, QuickGELU as swish with β 1.702) and Relu.
#pragma once

#include "engine/plan.hpp"

namespace engine {

class Eltwise {
 public:
  explicit Eltwise(dnnl::algorithm algorithm, float alpha = 0.0f)
      : algorithm_(algorithm), alpha_(alpha) {}
  // src must stay alive until backward: the gradient of both is computed from it.
  const Tensor& forward(Context& ctx, const Tensor& src);
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);

  std::string grad_slot;  // non-empty: diff_src shared through Context::shared_buffer

 private:
  struct Plan {
    dnnl::eltwise_forward fwd;
    dnnl::eltwise_backward bwd;
    dnnl::memory src, dst, diff_dst, diff_src;
    Tensor dst_tensor, diff_src_tensor;
  };
  dnnl::algorithm algorithm_;
  float alpha_;  // the algorithm's parameter (swish's β)
  PlanCache<Plan> plans_;
};

struct Gelu : Eltwise {
  Gelu() : Eltwise(dnnl::algorithm::eltwise_gelu_erf) {}
};

struct Relu : Eltwise {
  Relu() : Eltwise(dnnl::algorithm::eltwise_relu) {}
};

}  // namespace engine
