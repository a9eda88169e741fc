#include "engine/softmax.hpp"

#include <string>

namespace engine {

const Tensor& Softmax::forward(Context& ctx, const Tensor& src) {
  Plan& p = plans_.get(src.dims(), [&] {
    auto plan = std::make_unique<Plan>();
    const dnnl::memory::desc md = plain_desc(src.dims());
    const int axis = static_cast<int>(src.dims().size()) - 1;
    dnnl::softmax_forward::primitive_desc fwd_pd({dnnl::prop_kind::forward_training, md, axis},
                                                 ctx.eng);
    plan->fwd = dnnl::softmax_forward(fwd_pd);
    const dnnl::softmax_backward::primitive_desc bwd_pd({md, md, axis}, ctx.eng, fwd_pd);
    // The composite's primitives see [rows, N]: oneDNN's binary has a jit kernel for a
    // [rows, 1] operand broadcast over a 2-D tensor but not over a 4-D one. With N = 1 the
    // reduction would be empty, which oneDNN refuses.
    const int64_t n = src.dims().back(), rows = src.numel() / n;
    plan->composite =
        n > 1 && (backward_kind == Backward::composite ||
                  (backward_kind == Backward::automatic &&
                   std::string(bwd_pd.impl_info_str()).find("ref") != std::string::npos));
    const dnnl::memory::desc flat = plain_desc({rows, n}), sums = plain_desc({rows, 1});
    if (plan->composite) {
      plan->mul = dnnl::binary({{dnnl::algorithm::binary_mul, flat, flat, flat}, ctx.eng});
      plan->row_sum =
          dnnl::reduction({{dnnl::algorithm::reduction_sum, flat, sums, 0.0f, 0.0f}, ctx.eng});
      dnnl::post_ops times_y;
      times_y.append_binary(dnnl::algorithm::binary_mul, flat);
      dnnl::primitive_attr attr;
      attr.set_post_ops(times_y);
      plan->sub_mul =
          dnnl::binary({{dnnl::algorithm::binary_sub, flat, sums, flat}, attr, ctx.eng});
      plan->row_sums = owned_memory(ctx, sums);
    } else {
      plan->bwd = dnnl::softmax_backward(bwd_pd);
    }
    const dnnl::memory::desc& view = plan->composite ? flat : md;
    plan->dst_tensor = Tensor(ctx.eng, src.dims());
    plan->diff_src_tensor = gradient_buffer(ctx, grad_slot, src.dims());
    plan->src = memory_over(ctx, md);
    plan->dst = memory_over(ctx, view, plan->dst_tensor.data());
    plan->diff_dst = memory_over(ctx, view);
    plan->diff_src = memory_over(ctx, view, plan->diff_src_tensor.data());
    return plan;
  });
  p.src.set_data_handle(src.data());
  p.fwd.execute(ctx.strm, {{DNNL_ARG_SRC, p.src}, {DNNL_ARG_DST, p.dst}});
  return p.dst_tensor;
}

const char* Softmax::backward_used() const {
  return plans_.current("Softmax").composite ? "composite" : "primitive";
}

const Tensor& Softmax::backward(Context& ctx, const Tensor& diff_dst) {
  Plan& p = plans_.current("Softmax");
  check_same_dims(diff_dst.dims(), p.dst_tensor.dims(), "Softmax", "diff_dst");
  require(diff_dst.data() != p.diff_src_tensor.data(),
          "Softmax: diff_dst shares memory with diff_src");
  p.diff_dst.set_data_handle(diff_dst.data());
  if (!p.composite) {
    p.bwd.execute(
        ctx.strm,
        {{DNNL_ARG_DST, p.dst}, {DNNL_ARG_DIFF_DST, p.diff_dst}, {DNNL_ARG_DIFF_SRC, p.diff_src}});
    return p.diff_src_tensor;
  }
  p.mul.execute(
      ctx.strm,
      {{DNNL_ARG_SRC_0, p.dst}, {DNNL_ARG_SRC_1, p.diff_dst}, {DNNL_ARG_DST, p.diff_src}});
  p.row_sum.execute(ctx.strm, {{DNNL_ARG_SRC, p.diff_src}, {DNNL_ARG_DST, p.row_sums}});
  p.sub_mul.execute(ctx.strm, {{DNNL_ARG_SRC_0, p.diff_dst},
                               {DNNL_ARG_SRC_1, p.row_sums},
                               {DNNL_ARG_DST, p.diff_src},
                               {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, p.dst}});
  return p.diff_src_tensor;
}

}  // namespace engine
