#include "engine/layer_norm.hpp"

#include "engine/init.hpp"

namespace engine {

using dnnl::memory;
using dnnl::normalization_flags;

LayerNorm::LayerNorm(ParameterStore& store, const std::string& name, int64_t d, float epsilon)
    : dim(d), eps(epsilon) {
  require(d > 0, "LayerNorm '" + name + "': dim must be positive");
  weight = &store.add(name + ".weight", {d}, /*decay=*/false);
  bias = &store.add(name + ".bias", {d}, /*decay=*/false);
}

void LayerNorm::reset_parameters() {
  fill(weight->value, 1.0f);
  fill(bias->value, 0.0f);
}

std::unique_ptr<LayerNorm::Plan> LayerNorm::build(Context& ctx, const Dims& src_dims) {
  const int64_t M = product(src_dims) / dim;
  auto p = std::make_unique<Plan>();
  p->dst_tensor = Tensor(ctx.eng, src_dims);
  p->diff_src_tensor = gradient_buffer(ctx, grad_slot, src_dims);
  const memory::desc data_md = plain_desc({M, dim});
  const auto flags = normalization_flags::use_scale | normalization_flags::use_shift;

  dnnl::layer_normalization_forward::primitive_desc fwd_pd(
      {dnnl::prop_kind::forward_training, data_md, eps, flags}, ctx.eng);
  dnnl::layer_normalization_backward::primitive_desc bwd_pd(
      {dnnl::prop_kind::backward, data_md, data_md, eps, flags}, ctx.eng, fwd_pd);
  p->fwd = dnnl::layer_normalization_forward(fwd_pd);
  p->bwd = dnnl::layer_normalization_backward(bwd_pd);

  p->src = memory_over(ctx, data_md);
  p->dst = memory_over(ctx, data_md, p->dst_tensor.data());
  p->mean = owned_memory(ctx, fwd_pd.mean_desc());
  p->variance = owned_memory(ctx, fwd_pd.variance_desc());
  p->workspace = owned_memory(ctx, fwd_pd.workspace_desc());
  const memory::desc param_md = plain_desc({dim});
  p->scale = memory_over(ctx, param_md, weight->value.data());
  p->shift = memory_over(ctx, param_md, bias->value.data());
  p->diff_scale = memory_over(ctx, param_md, weight->grad.data());
  p->diff_shift = memory_over(ctx, param_md, bias->grad.data());
  p->diff_dst = memory_over(ctx, data_md);
  p->diff_src = memory_over(ctx, data_md, p->diff_src_tensor.data());
  return p;
}

const Tensor& LayerNorm::forward(Context& ctx, const Tensor& src) {
  require(src.dim(-1) == dim, "LayerNorm: input has shape " + to_string(src.dims()) +
                                  ", expected last axis " + std::to_string(dim));
  Plan& p = plans_.get(src.dims(), [&] { return build(ctx, src.dims()); });
  p.src.set_data_handle(src.data());
  p.fwd.execute(ctx.strm, {{DNNL_ARG_SRC, p.src},
                           {DNNL_ARG_DST, p.dst},
                           {DNNL_ARG_MEAN, p.mean},
                           {DNNL_ARG_VARIANCE, p.variance},
                           {DNNL_ARG_SCALE, p.scale},
                           {DNNL_ARG_SHIFT, p.shift},
                           {DNNL_ARG_WORKSPACE, p.workspace}});
  return p.dst_tensor;
}

const Tensor& LayerNorm::backward(Context& ctx, const Tensor& diff_dst) {
  Plan& p = plans_.current("LayerNorm");
  check_same_dims(diff_dst.dims(), p.dst_tensor.dims(), "LayerNorm", "diff_dst");
  p.diff_dst.set_data_handle(diff_dst.data());
  p.bwd.execute(ctx.strm, {{DNNL_ARG_SRC, p.src},
                           {DNNL_ARG_MEAN, p.mean},
                           {DNNL_ARG_VARIANCE, p.variance},
                           {DNNL_ARG_DIFF_DST, p.diff_dst},
                           {DNNL_ARG_SCALE, p.scale},
                           {DNNL_ARG_SHIFT, p.shift},
                           {DNNL_ARG_WORKSPACE, p.workspace},
                           {DNNL_ARG_DIFF_SRC, p.diff_src},
                           {DNNL_ARG_DIFF_SCALE, p.diff_scale},
                           {DNNL_ARG_DIFF_SHIFT, p.diff_shift}});
  return p.diff_src_tensor;
}

LayerNorm::Fused LayerNorm::fused(FusedBuild& f, int64_t rows, float scale) const {
  const memory::desc data_md = plain_desc({rows, dim});
  Fused out;
  out.prim = dnnl::layer_normalization_forward(
      {{dnnl::prop_kind::forward_inference, data_md, eps,
        normalization_flags::use_scale | normalization_flags::use_shift},
       f.ctx.eng});
  auto vector = [&](const Parameter& p) {
    const memory v = f.packed.vector(f.ctx, p, 0, dim, scale);
    return memory(plain_desc({dim}), f.ctx.eng, v.get_data_handle());
  };
  out.scale = vector(*weight);
  out.shift = vector(*bias);
  return out;
}

void LayerNorm::Fused::run(dnnl::stream& s, const memory& src, const memory& dst) const {
  prim.execute(
      s,
      {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCALE, scale}, {DNNL_ARG_SHIFT, shift}});
}

}  // namespace engine
