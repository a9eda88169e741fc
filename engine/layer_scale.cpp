#include "engine/layer_scale.hpp"

#include "engine/init.hpp"

namespace engine {

LayerScale::LayerScale(ParameterStore& store, const std::string& name, int64_t dim_,
                       float init_values_)
    : dim(dim_), init_values(init_values_) {
  gamma = &store.add(name + ".gamma", {dim_}, /*decay=*/false);
}

void LayerScale::reset_parameters() {
  fill(gamma->value, init_values);
}

const Tensor& LayerScale::forward(Context& ctx, const Tensor& src) {
  require(!src.dims().empty() && src.dims().back() == dim,
          "LayerScale: input " + to_string(src.dims()) + " does not end in " + std::to_string(dim));
  Plan& p = plans_.get(src.dims(), [&] {
    auto plan = std::make_unique<Plan>();
    const int64_t M = src.numel() / dim;
    const dnnl::memory::desc rows_md = plain_desc({M, dim}), gamma_md = plain_desc({1, dim});
    plan->scale =
        dnnl::binary({{dnnl::algorithm::binary_mul, rows_md, gamma_md, rows_md}, ctx.eng});
    plan->product =
        dnnl::binary({{dnnl::algorithm::binary_mul, rows_md, rows_md, rows_md}, ctx.eng});
    plan->sum_rows = RowSum(ctx, M, dim);
    plan->dst_tensor = Tensor(ctx.eng, src.dims());
    plan->diff_src_tensor = gradient_buffer(ctx, grad_slot, src.dims());
    plan->products_tensor =
        gradient_buffer(ctx, grad_slot.empty() ? grad_slot : grad_slot + ".products", src.dims());
    plan->src = memory_over(ctx, rows_md);
    plan->gamma = memory_over(ctx, gamma_md, gamma->value.data());
    plan->dst = memory_over(ctx, rows_md, plan->dst_tensor.data());
    plan->diff_dst = memory_over(ctx, rows_md);
    plan->diff_src = memory_over(ctx, rows_md, plan->diff_src_tensor.data());
    plan->products = memory_over(ctx, rows_md, plan->products_tensor.data());
    plan->diff_gamma = memory_over(ctx, gamma_md, gamma->grad.data());
    return plan;
  });
  p.src.set_data_handle(src.data());
  p.scale.execute(ctx.strm,
                  {{DNNL_ARG_SRC_0, p.src}, {DNNL_ARG_SRC_1, p.gamma}, {DNNL_ARG_DST, p.dst}});
  return p.dst_tensor;
}

const Tensor& LayerScale::backward(Context& ctx, const Tensor& diff_dst) {
  Plan& p = plans_.current("LayerScale");
  check_same_dims(diff_dst.dims(), p.dst_tensor.dims(), "LayerScale", "diff_dst");
  p.diff_dst.set_data_handle(diff_dst.data());
  p.product.execute(
      ctx.strm,
      {{DNNL_ARG_SRC_0, p.diff_dst}, {DNNL_ARG_SRC_1, p.src}, {DNNL_ARG_DST, p.products}});
  p.sum_rows(ctx, p.products, p.diff_gamma);
  p.scale.execute(
      ctx.strm,
      {{DNNL_ARG_SRC_0, p.diff_dst}, {DNNL_ARG_SRC_1, p.gamma}, {DNNL_ARG_DST, p.diff_src}});
  return p.diff_src_tensor;
}

}  // namespace engine
