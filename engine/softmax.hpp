// Softmax over the last axis (attention probabilities).
#pragma once

#include "engine/plan.hpp"

namespace engine {

class Softmax {
 public:
  // How backward runs. oneDNN 2.6 has a jit softmax backward only for AVX-512; elsewhere its
  // reference kernel took 6 % of a ViT training step. The composite computes the same
  // dx = y ⊙ (dy − Σ_j y ⊙ dy) from three jit primitives (multiply, row sum, subtract-and-
  // multiply) over a [rows, N] view, about six times faster on AVX2.
  enum class Backward { automatic, primitive, composite };

  const Tensor& forward(Context& ctx, const Tensor& src);
  // Uses the saved output, not the input: src may be reused after forward. diff_dst must not
  // share memory with the returned gradient.
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);

  std::string grad_slot;  // non-empty: diff_src shared through Context::shared_buffer
  Backward backward_kind = Backward::automatic;  // read when a shape's plan is built
  // Which backward the last forward's plan runs ("primitive" or "composite").
  const char* backward_used() const;

 private:
  struct Plan {
    dnnl::softmax_forward fwd;
    bool composite = false;
    dnnl::softmax_backward bwd;
    // The composite, over [rows, N]: t = y ⊙ dy (into diff_src), s = Σ_j t, dx = (dy − s) ⊙ y.
    dnnl::binary mul, sub_mul;
    dnnl::reduction row_sum;
    dnnl::memory row_sums;
    dnnl::memory src, dst, diff_dst, diff_src;
    Tensor dst_tensor, diff_src_tensor;
  };
  PlanCache<Plan> plans_;
};

}  // namespace engine
