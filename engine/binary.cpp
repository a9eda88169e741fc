#include "engine/binary.hpp"

#include <random>

namespace engine {

void Binary::operator()(Context& ctx, const Tensor& src0, const Tensor& src1, const Tensor& dst) {
  check_same_dims(src1.dims(), src0.dims(), "Binary", "src1");
  check_same_dims(dst.dims(), src0.dims(), "Binary", "dst");
  Plan& p = plans_.get(src0.dims(), [&] {
    auto plan = std::make_unique<Plan>();
    const dnnl::memory::desc md = plain_desc(src0.dims());
    plan->prim = dnnl::binary({{algorithm_, md, md, md}, ctx.eng});
    plan->src0 = memory_over(ctx, md);
    plan->src1 = memory_over(ctx, md);
    plan->dst = memory_over(ctx, md);
    return plan;
  });
  p.src0.set_data_handle(src0.data());
  p.src1.set_data_handle(src1.data());
  p.dst.set_data_handle(dst.data());
  p.prim.execute(ctx.strm,
                 {{DNNL_ARG_SRC_0, p.src0}, {DNNL_ARG_SRC_1, p.src1}, {DNNL_ARG_DST, p.dst}});
}

const Tensor& Add::forward(Context& ctx, const Tensor& a, const Tensor& b) {
  const Tensor& dst =
      dst_.get(a.dims(), [&] { return std::make_unique<Tensor>(ctx.eng, a.dims()); });
  add_(ctx, a, b, dst);
  return dst;
}

Dropout::Dropout(float p_) : p(p_) {
  require(p_ >= 0.0f && p_ < 1.0f, "Dropout: p must be in [0, 1), got " + std::to_string(p_));
}

const Tensor& Dropout::forward(Context& ctx, const Tensor& src) {
  active_ = training && p > 0.0f;
  if (!active_) return src;
  Plan& plan = plans_.get(src.dims(), [&] {
    auto pl = std::make_unique<Plan>();
    pl->mask = Tensor(ctx.eng, src.dims());
    pl->dst = Tensor(ctx.eng, src.dims());
    pl->diff_src = Tensor(ctx.eng, src.dims());
    return pl;
  });
  std::bernoulli_distribution keep(1.0 - p);
  const float scale = 1.0f / (1.0f - p);
  for (int64_t i = 0; i < plan.mask.numel(); ++i) plan.mask[i] = keep(ctx.rng) ? scale : 0.0f;
  mul_(ctx, src, plan.mask, plan.dst);
  return plan.dst;
}

const Tensor& Dropout::backward(Context& ctx, const Tensor& diff_dst) {
  if (!active_) return diff_dst;
  Plan& plan = plans_.current("Dropout");
  mul_(ctx, diff_dst, plan.mask, plan.diff_src);
  return plan.diff_src;
}

}  // namespace engine
