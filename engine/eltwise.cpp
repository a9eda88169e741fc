#include "engine/eltwise.hpp"

namespace engine {

const Tensor& Eltwise::forward(Context& ctx, const Tensor& src) {
  Plan& p = plans_.get(src.dims(), [&] {
    auto plan = std::make_unique<Plan>();
    const dnnl::memory::desc md = plain_desc(src.dims());
    dnnl::eltwise_forward::primitive_desc fwd_pd(
        {dnnl::prop_kind::forward_training, algorithm_, md, alpha_, 0.f}, ctx.eng);
    plan->fwd = dnnl::eltwise_forward(fwd_pd);
    plan->bwd = dnnl::eltwise_backward({{algorithm_, md, md, alpha_, 0.f}, ctx.eng, fwd_pd});
    plan->dst_tensor = Tensor(ctx.eng, src.dims());
    plan->diff_src_tensor = gradient_buffer(ctx, grad_slot, src.dims());
    plan->src = memory_over(ctx, md);
    plan->dst = memory_over(ctx, md, plan->dst_tensor.data());
    plan->diff_dst = memory_over(ctx, md);
    plan->diff_src = memory_over(ctx, md, plan->diff_src_tensor.data());
    return plan;
  });
  p.src.set_data_handle(src.data());
  p.fwd.execute(ctx.strm, {{DNNL_ARG_SRC, p.src}, {DNNL_ARG_DST, p.dst}});
  return p.dst_tensor;
}

const Tensor& Eltwise::backward(Context& ctx, const Tensor& diff_dst) {
  Plan& p = plans_.current("Eltwise");
  check_same_dims(diff_dst.dims(), p.dst_tensor.dims(), "Eltwise", "diff_dst");
  p.diff_dst.set_data_handle(diff_dst.data());
  p.bwd.execute(
      ctx.strm,
      {{DNNL_ARG_SRC, p.src}, {DNNL_ARG_DIFF_DST, p.diff_dst}, {DNNL_ARG_DIFF_SRC, p.diff_src}});
  return p.diff_src_tensor;
}

}  // namespace engine
