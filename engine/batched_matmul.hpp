// dst = alpha · A·B over the last two axes, for every index of the leading (batch) axes.
// A and B are Views, so a transpose or one head of a fused qkv tensor is read in place;
// for attention, alpha carries the 1/√d scale as a oneDNN output scale.
#pragma once

#include "engine/plan.hpp"

namespace engine {

class BatchedMatmul {
 public:
  explicit BatchedMatmul(float alpha = 1.0f) : alpha(alpha) {}

  // a [..., M, K], b [..., K, N], any strides -> dst [..., M, N], plain row-major.
  // The data of a and b must stay alive until backward.
  const Tensor& forward(Context& ctx, const View& a, const View& b);
  // From diff_dst [..., M, N] writes diff_a = alpha·diff_dst·Bᵀ and diff_b = alpha·Aᵀ·diff_dst,
  // laid out as a and b were (same dims and strides). Either may be skipped by a null data.
  void backward(Context& ctx, const Tensor& diff_dst, const View& diff_a, const View& diff_b);

  float alpha;

 private:
  struct Plan {
    View a, b;
    dnnl::matmul fwd, bwd_a, bwd_b;
    bool a_transposed = false, b_transposed = false;  // last axis not contiguous
    dnnl::memory a_mem, b_mem, a_t, b_t, dst, diff_dst, diff_dst_t, diff_a, diff_b;
    Tensor dst_tensor;
  };
  std::unique_ptr<Plan> build(Context& ctx, const View& a, const View& b);
  PlanCache<Plan> plans_;
};

}  // namespace engine
