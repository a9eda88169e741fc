#include "engine/batch_norm.hpp"

#include "engine/init.hpp"

namespace engine {

using dnnl::memory;
using dnnl::normalization_flags;

BatchNorm2d::BatchNorm2d(ParameterStore& store, const std::string& name, int64_t c, float e,
                         float m, Layout layout_)
    : num_features(c), eps(e), momentum(m), layout(layout_) {
  require(c > 0, "BatchNorm2d '" + name + "': num_features must be positive");
  weight = &store.add(name + ".weight", {c}, /*decay=*/false);
  bias = &store.add(name + ".bias", {c}, /*decay=*/false);
  running_mean = &store.add_buffer(name + ".running_mean", {c});
  running_var = &store.add_buffer(name + ".running_var", {c});
}

void BatchNorm2d::reset_parameters() {
  fill(weight->value, 1.0f);
  fill(bias->value, 0.0f);
  fill(running_mean->value, 0.0f);
  fill(running_var->value, 1.0f);
  num_batches_tracked = 0;
}

std::unique_ptr<BatchNorm2d::Plan> BatchNorm2d::build(Context& ctx, const Dims& s, bool train) {
  auto p = std::make_unique<Plan>();
  p->dst_tensor = Tensor(ctx.eng, s);
  p->diff_src_tensor = Tensor(ctx.eng, s);
  const memory::desc data_md = image_desc(image_shape(s, layout), layout),
                     param_md = plain_desc({num_features});
  auto flags = normalization_flags::use_scale | normalization_flags::use_shift;
  if (!train) flags |= normalization_flags::use_global_stats;
  if (fuse_relu) flags |= normalization_flags::fuse_norm_relu;

  dnnl::batch_normalization_forward::primitive_desc fwd_pd(
      {dnnl::prop_kind::forward_training, data_md, eps, flags}, ctx.eng);
  p->fwd = dnnl::batch_normalization_forward(fwd_pd);
  p->bwd = dnnl::batch_normalization_backward(
      {{dnnl::prop_kind::backward, data_md, data_md, eps, flags}, ctx.eng, fwd_pd});

  p->src = memory_over(ctx, data_md);
  p->dst = memory_over(ctx, data_md, p->dst_tensor.data());
  if (train) {
    p->batch_mean = Tensor(ctx.eng, {num_features});
    p->batch_variance = Tensor(ctx.eng, {num_features});
    p->mean = memory_over(ctx, param_md, p->batch_mean.data());
    p->variance = memory_over(ctx, param_md, p->batch_variance.data());
  } else {
    p->mean = memory_over(ctx, param_md, running_mean->value.data());
    p->variance = memory_over(ctx, param_md, running_var->value.data());
  }
  p->workspace = owned_memory(ctx, fwd_pd.workspace_desc());
  p->scale = memory_over(ctx, param_md, weight->value.data());
  p->shift = memory_over(ctx, param_md, bias->value.data());
  p->diff_scale = memory_over(ctx, param_md, weight->grad.data());
  p->diff_shift = memory_over(ctx, param_md, bias->grad.data());
  p->diff_dst = memory_over(ctx, data_md);
  p->diff_src = memory_over(ctx, data_md, p->diff_src_tensor.data());
  return p;
}

const Tensor& BatchNorm2d::forward(Context& ctx, const Tensor& src) {
  const int64_t channels = src.dims().size() == 4 ? image_shape(src.dims(), layout).c : -1;
  require(channels == num_features, "BatchNorm2d: input has shape " + to_string(src.dims()) +
                                        ", expected " + layout_name(layout) +
                                        " with C = " + std::to_string(num_features));
  Dims key = src.dims();
  key.push_back(training);
  Plan& p = plans_.get(key, [&] { return build(ctx, src.dims(), training); });
  p.src.set_data_handle(src.data());
  p.fwd.execute(ctx.strm, {{DNNL_ARG_SRC, p.src},
                           {DNNL_ARG_DST, p.dst},
                           {DNNL_ARG_MEAN, p.mean},
                           {DNNL_ARG_VARIANCE, p.variance},
                           {DNNL_ARG_SCALE, p.scale},
                           {DNNL_ARG_SHIFT, p.shift},
                           {DNNL_ARG_WORKSPACE, p.workspace}});
  if (training) {
    ctx.wait();
    // torch keeps the unbiased variance in running_var but normalizes with the biased one.
    const int64_t n = src.numel() / num_features;
    const float unbias = n > 1 ? static_cast<float>(n) / static_cast<float>(n - 1) : 1.0f;
    for (int64_t c = 0; c < num_features; ++c) {
      running_mean->value[c] = (1 - momentum) * running_mean->value[c] + momentum * p.batch_mean[c];
      running_var->value[c] =
          (1 - momentum) * running_var->value[c] + momentum * unbias * p.batch_variance[c];
    }
    ++num_batches_tracked;
  }
  return p.dst_tensor;
}

const Tensor& BatchNorm2d::backward(Context& ctx, const Tensor& diff_dst) {
  Plan& p = plans_.current("BatchNorm2d");
  check_same_dims(diff_dst.dims(), p.dst_tensor.dims(), "BatchNorm2d", "diff_dst");
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

}  // namespace engine
