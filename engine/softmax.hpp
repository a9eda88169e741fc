// Softmax over the last axis (attention probabilities).
#pragma once

#include "engine/plan.hpp"

namespace engine {

class Softmax {
 public:
  const Tensor& forward(Context& ctx, const Tensor& src);
  // Uses the saved output, not the input: src may be reused after forward.
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);

  std::string grad_slot;  // non-empty: diff_src shared through Context::shared_buffer

 private:
  struct Plan {
    dnnl::softmax_forward fwd;
    dnnl::softmax_backward bwd;
    dnnl::memory src, dst, diff_dst, diff_src;
    Tensor dst_tensor, diff_src_tensor;
  };
  PlanCache<Plan> plans_;
};

}  // namespace engine
