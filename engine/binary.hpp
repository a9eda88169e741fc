// Element-wise binary layers on same-shaped tensors: the residual Add, in-place Accumulate
// (where a tensor fans out, the gradients of its branches are summed) and Dropout.
#pragma once

#include "engine/plan.hpp"

namespace engine {

// dst = src0 (op) src1 with a oneDNN binary primitive; dst may alias src0 (in place).
class Binary {
 public:
  explicit Binary(dnnl::algorithm algorithm) : algorithm_(algorithm) {}
  void operator()(Context& ctx, const Tensor& src0, const Tensor& src1, const Tensor& dst);

 private:
  struct Plan {
    dnnl::binary prim;
    dnnl::memory src0, src1, dst;
  };
  dnnl::algorithm algorithm_;
  PlanCache<Plan> plans_;
};

// dst = a + b: a residual connection. Its backward is the identity for both inputs.
class Add {
 public:
  const Tensor& forward(Context& ctx, const Tensor& a, const Tensor& b);
  const Tensor& backward(const Tensor& diff_dst) const { return diff_dst; }

  // non-empty: the output is shared through Context::shared_buffer (an Add that sums gradients)
  std::string grad_slot;

 private:
  Binary add_{dnnl::algorithm::binary_add};
  PlanCache<Tensor> dst_;
};

// dst += src, in place.
class Accumulate {
 public:
  void operator()(Context& ctx, const Tensor& dst, const Tensor& src) { add_(ctx, dst, src, dst); }

 private:
  Binary add_{dnnl::algorithm::binary_add};
};

// dst[b] = src[b] + table for every index b of the leading axis (timm's x + pos_embed, the
// table [1, ...] broadcast over the batch). Backward: diff_src = diff_dst, and
// diff_table = Σ_b diff_dst[b], written (not accumulated) where the caller says.
class BroadcastAdd {
 public:
  const Tensor& forward(Context& ctx, const Tensor& src, const Tensor& table);
  void backward(Context& ctx, const Tensor& diff_dst, const Tensor& diff_table);

 private:
  struct Plan {
    dnnl::binary add;
    RowSum sum_rows;  // diff_table = Σ_b diff_dst[b]
    dnnl::memory src, table, dst, diff_dst, diff_table;
    Tensor dst_tensor;
  };
  PlanCache<Plan> plans_;
};

// Inverted dropout (torch.nn.Dropout): in training each element is zeroed with probability p
// and the rest scaled by 1/(1-p); in evaluation, or with p = 0, it is the identity and
// returns its input. The mask comes from ctx.rng, so a seed fixes it.
class Dropout {
 public:
  explicit Dropout(float p);
  const Tensor& forward(Context& ctx, const Tensor& src);
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);

  float p;
  bool training = true;
  std::string grad_slot;  // non-empty: diff_src shared through Context::shared_buffer

 private:
  struct Plan {
    Tensor mask, dst, diff_src;  // mask holds 0 or 1/(1-p)
  };
  bool active_ = false;  // whether the last forward applied a mask
  Binary mul_{dnnl::algorithm::binary_mul};
  PlanCache<Plan> plans_;
};

// Stochastic depth (timm's DropPath): in training each sample's residual branch is dropped
// with probability p and kept ones scaled by 1/(1-p); the identity otherwise.
class DropPath {
 public:
  explicit DropPath(float p);
  const Tensor& forward(Context& ctx, const Tensor& src);  // src [B, ...]
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);

  float p;
  bool training = true;
  std::string grad_slot;  // non-empty: diff_src shared through Context::shared_buffer

 private:
  struct Plan {
    dnnl::binary mul;  // src [B, rest] · mask [B, 1]
    dnnl::memory src, mask, dst;
    Tensor mask_tensor, dst_tensor, diff_src_tensor;
  };
  bool active_ = false;
  PlanCache<Plan> plans_;
};

}  // namespace engine
