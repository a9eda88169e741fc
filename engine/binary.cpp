#include "engine/binary.hpp"

#include <algorithm>
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
  const Tensor& dst = dst_.get(a.dims(), [&] {
    return std::make_unique<Tensor>(gradient_buffer(ctx, grad_slot, a.dims()));
  });
  add_(ctx, a, b, dst);
  return dst;
}

const Tensor& BroadcastAdd::forward(Context& ctx, const Tensor& src, const Tensor& table) {
  const int64_t B = src.dim(0), rest = src.numel() / B;
  require(table.numel() == rest && table.dim(0) == 1,
          "BroadcastAdd: table " + to_string(table.dims()) + " does not fit input " +
              to_string(src.dims()));
  Plan& p = plans_.get(src.dims(), [&] {
    auto plan = std::make_unique<Plan>();
    const dnnl::memory::desc src_md = plain_desc({B, rest}), table_md = plain_desc({1, rest});
    plan->add = dnnl::binary({{dnnl::algorithm::binary_add, src_md, table_md, src_md}, ctx.eng});
    plan->sum_rows = RowSum(ctx, B, rest);
    plan->dst_tensor = Tensor(ctx.eng, src.dims());
    plan->src = memory_over(ctx, src_md);
    plan->table = memory_over(ctx, table_md);
    plan->dst = memory_over(ctx, src_md, plan->dst_tensor.data());
    plan->diff_dst = memory_over(ctx, src_md);
    plan->diff_table = memory_over(ctx, table_md);
    return plan;
  });
  p.src.set_data_handle(src.data());
  p.table.set_data_handle(table.data());
  p.add.execute(ctx.strm,
                {{DNNL_ARG_SRC_0, p.src}, {DNNL_ARG_SRC_1, p.table}, {DNNL_ARG_DST, p.dst}});
  return p.dst_tensor;
}

void BroadcastAdd::backward(Context& ctx, const Tensor& diff_dst, const Tensor& diff_table) {
  Plan& p = plans_.current("BroadcastAdd");
  check_same_dims(diff_dst.dims(), p.dst_tensor.dims(), "BroadcastAdd", "diff_dst");
  require(diff_table.numel() == diff_dst.numel() / diff_dst.dim(0),
          "BroadcastAdd: diff_table has shape " + to_string(diff_table.dims()));
  p.diff_dst.set_data_handle(diff_dst.data());
  p.diff_table.set_data_handle(diff_table.data());
  p.sum_rows(ctx, p.diff_dst, p.diff_table);
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
    pl->diff_src = gradient_buffer(ctx, grad_slot, src.dims());
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

namespace engine {

DropPath::DropPath(float p_) : p(p_) {
  require(p_ >= 0.0f && p_ < 1.0f, "DropPath: p must be in [0, 1), got " + std::to_string(p_));
}

const Tensor& DropPath::forward(Context& ctx, const Tensor& src) {
  active_ = training && p > 0.0f;
  if (!active_) return src;
  const int64_t B = src.dim(0), rest = src.numel() / B;
  Plan& plan = plans_.get(src.dims(), [&] {
    auto pl = std::make_unique<Plan>();
    const dnnl::memory::desc src_md = plain_desc({B, rest}), mask_md = plain_desc({B, 1});
    pl->mul = dnnl::binary({{dnnl::algorithm::binary_mul, src_md, mask_md, src_md}, ctx.eng});
    pl->mask_tensor = Tensor(ctx.eng, {B, 1});
    pl->dst_tensor = Tensor(ctx.eng, src.dims());
    pl->diff_src_tensor = gradient_buffer(ctx, grad_slot, src.dims());
    pl->src = memory_over(ctx, src_md);
    pl->mask = memory_over(ctx, mask_md, pl->mask_tensor.data());
    pl->dst = memory_over(ctx, src_md);
    return pl;
  });
  std::bernoulli_distribution keep(1.0 - p);
  const float scale = 1.0f / (1.0f - p);
  for (int64_t b = 0; b < B; ++b) plan.mask_tensor[b] = keep(ctx.rng) ? scale : 0.0f;
  plan.src.set_data_handle(src.data());
  plan.dst.set_data_handle(plan.dst_tensor.data());
  plan.mul.execute(
      ctx.strm,
      {{DNNL_ARG_SRC_0, plan.src}, {DNNL_ARG_SRC_1, plan.mask}, {DNNL_ARG_DST, plan.dst}});
  return plan.dst_tensor;
}

const Tensor& DropPath::backward(Context& ctx, const Tensor& diff_dst) {
  if (!active_) return diff_dst;
  Plan& plan = plans_.current("DropPath");
  check_same_dims(diff_dst.dims(), plan.dst_tensor.dims(), "DropPath", "diff_dst");
  plan.src.set_data_handle(diff_dst.data());
  plan.dst.set_data_handle(plan.diff_src_tensor.data());
  plan.mul.execute(
      ctx.strm,
      {{DNNL_ARG_SRC_0, plan.src}, {DNNL_ARG_SRC_1, plan.mask}, {DNNL_ARG_DST, plan.dst}});
  return plan.diff_src_tensor;
}

}  // namespace engine
