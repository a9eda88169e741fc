#include "engine/batched_matmul.hpp"

namespace engine {

using dnnl::memory;

std::unique_ptr<BatchedMatmul::Plan> BatchedMatmul::build(Context& ctx, const View& a,
                                                          const View& b) {
  const size_t r = a.dims.size();
  require(r >= 2 && b.dims.size() == r && a.strides.size() == r && b.strides.size() == r,
          "BatchedMatmul: operands " + to_string(a.dims) + " and " + to_string(b.dims) +
              " must have the same rank, at least 2");
  require(a.dims[r - 1] == b.dims[r - 2],
          "BatchedMatmul: inner sizes differ: " + to_string(a.dims) + " · " + to_string(b.dims));
  for (size_t i = 0; i + 2 < r; ++i)
    require(a.dims[i] == b.dims[i],
            "BatchedMatmul: batch axes differ: " + to_string(a.dims) + " · " + to_string(b.dims));
  auto p = std::make_unique<Plan>();
  p->a = a;
  p->b = b;
  Dims dst_dims = a.dims;
  dst_dims[r - 1] = b.dims[r - 1];
  p->dst_tensor = Tensor(ctx.eng, dst_dims);
  const memory::desc dst_md = plain_desc(dst_dims);
  const memory::desc dst_t_md = p->dst_tensor.as_view().transposed().desc();
  const memory::desc a_md = a.desc(), b_md = b.desc();
  const memory::desc a_t_md = a.transposed().desc(), b_t_md = b.transposed().desc();

  p->fwd = make_matmul(ctx.eng, a_md, b_md, dst_md, alpha);
  // oneDNN's fast matmul wants a destination whose last axis is contiguous; for a gradient
  // laid out as a transposed view (kᵀ in attention), compute its transpose instead:
  // diff_aᵀ = alpha·B·diff_dstᵀ, diff_bᵀ = alpha·diff_dstᵀ·A.
  p->a_transposed = a.strides[r - 1] != 1;
  p->b_transposed = b.strides[r - 1] != 1;
  p->bwd_a = p->a_transposed ? make_matmul(ctx.eng, b_md, dst_t_md, a_t_md, alpha)
                             : make_matmul(ctx.eng, dst_md, b_t_md, a_md, alpha);
  p->bwd_b = p->b_transposed ? make_matmul(ctx.eng, dst_t_md, a_md, b_t_md, alpha)
                             : make_matmul(ctx.eng, a_t_md, dst_md, b_md, alpha);

  p->a_mem = memory_over(ctx, a_md);
  p->b_mem = memory_over(ctx, b_md);
  p->a_t = memory_over(ctx, a_t_md);
  p->b_t = memory_over(ctx, b_t_md);
  p->dst = memory_over(ctx, dst_md, p->dst_tensor.data());
  p->diff_dst = memory_over(ctx, dst_md);
  p->diff_dst_t = memory_over(ctx, dst_t_md);
  p->diff_a = memory_over(ctx, p->a_transposed ? a_t_md : a_md);
  p->diff_b = memory_over(ctx, p->b_transposed ? b_t_md : b_md);
  return p;
}

const Tensor& BatchedMatmul::forward(Context& ctx, const View& a, const View& b) {
  Dims key = a.dims;
  key.insert(key.end(), a.strides.begin(), a.strides.end());
  key.insert(key.end(), b.dims.begin(), b.dims.end());
  key.insert(key.end(), b.strides.begin(), b.strides.end());
  Plan& p = plans_.get(key, [&] { return build(ctx, a, b); });
  p.a_mem.set_data_handle(a.data);
  p.b_mem.set_data_handle(b.data);
  p.a_t.set_data_handle(a.data);
  p.b_t.set_data_handle(b.data);
  p.fwd.execute(ctx.strm,
                {{DNNL_ARG_SRC, p.a_mem}, {DNNL_ARG_WEIGHTS, p.b_mem}, {DNNL_ARG_DST, p.dst}});
  return p.dst_tensor;
}

void BatchedMatmul::backward(Context& ctx, const Tensor& diff_dst, const View& diff_a,
                             const View& diff_b) {
  Plan& p = plans_.current("BatchedMatmul");
  check_same_dims(diff_dst.dims(), p.dst_tensor.dims(), "BatchedMatmul", "diff_dst");
  p.diff_dst.set_data_handle(diff_dst.data());
  p.diff_dst_t.set_data_handle(diff_dst.data());
  if (diff_a.data != nullptr) {
    require(diff_a.dims == p.a.dims && diff_a.strides == p.a.strides,
            "BatchedMatmul: diff_a must be laid out as a");
    p.diff_a.set_data_handle(diff_a.data);
    if (p.a_transposed)
      p.bwd_a.execute(
          ctx.strm,
          {{DNNL_ARG_SRC, p.b_mem}, {DNNL_ARG_WEIGHTS, p.diff_dst_t}, {DNNL_ARG_DST, p.diff_a}});
    else
      p.bwd_a.execute(
          ctx.strm,
          {{DNNL_ARG_SRC, p.diff_dst}, {DNNL_ARG_WEIGHTS, p.b_t}, {DNNL_ARG_DST, p.diff_a}});
  }
  if (diff_b.data != nullptr) {
    require(diff_b.dims == p.b.dims && diff_b.strides == p.b.strides,
            "BatchedMatmul: diff_b must be laid out as b");
    p.diff_b.set_data_handle(diff_b.data);
    if (p.b_transposed)
      p.bwd_b.execute(
          ctx.strm,
          {{DNNL_ARG_SRC, p.diff_dst_t}, {DNNL_ARG_WEIGHTS, p.a_mem}, {DNNL_ARG_DST, p.diff_b}});
    else
      p.bwd_b.execute(
          ctx.strm,
          {{DNNL_ARG_SRC, p.a_t}, {DNNL_ARG_WEIGHTS, p.diff_dst}, {DNNL_ARG_DST, p.diff_b}});
  }
}

}  // namespace engine
