#include "vit/mlp.hpp"

#include <utility>

#include "engine/error.hpp"

namespace vit {

// act_layer as a oneDNN eltwise algorithm and its parameter: QuickGELU x·σ(1.702x) is swish.
static std::pair<dnnl::algorithm, float> activation(const std::string& name) {
  if (name == "gelu") return {dnnl::algorithm::eltwise_gelu_erf, 0.0f};
  if (name == "gelu_tanh") return {dnnl::algorithm::eltwise_gelu_tanh, 0.0f};
  if (name == "quick_gelu") return {dnnl::algorithm::eltwise_swish, 1.702f};
  throw engine::Error("Mlp: unknown activation '" + name + "'");
}

Mlp::Mlp(ParameterStore& store, const std::string& prefix, const VitConfig& c)
    : fc1(store, prefix + ".fc1", c.embed_dim, c.mlp_hidden()),
      act_algorithm(activation(c.act_layer).first),
      act_alpha(activation(c.act_layer).second),
      act(act_algorithm, act_alpha),
      drop1(static_cast<float>(c.drop_rate)),
      fc2(store, prefix + ".fc2", c.mlp_hidden(), c.embed_dim),
      drop2(static_cast<float>(c.drop_rate)) {}

void Mlp::set_precision(engine::Precision p) {
  fc1.set_precision(p);
  fc2.set_precision(p);
}

void Mlp::init_weights(Context& ctx) {
  init_linear(ctx, fc1);
  init_linear(ctx, fc2);
}

void Mlp::share_gradients(const std::string& slot) {
  fc1.grad_slot = slot + ".fc1";
  act.grad_slot = slot + ".act";
  drop1.grad_slot = slot + ".drop1";
  fc2.grad_slot = slot + ".fc2";
  drop2.grad_slot = slot + ".drop2";
}

const Tensor& Mlp::forward(Context& ctx, const Tensor& x) {
  const Tensor& h = drop1.forward(ctx, act.forward(ctx, fc1.forward(ctx, x)));
  return drop2.forward(ctx, fc2.forward(ctx, h));
}

const Tensor& Mlp::backward(Context& ctx, const Tensor& diff_dst) {
  const Tensor& dh = fc2.backward(ctx, drop2.backward(ctx, diff_dst));
  return fc1.backward(ctx, act.backward(ctx, drop1.backward(ctx, dh)));
}

std::unique_ptr<FusedStep> Mlp::fused(FusedBuild& f, const FusedTokens& t) const {
  const int64_t M = t.images * t.tokens;
  auto p = std::make_unique<Fused>();
  p->normed = t.normed;
  p->x = t.x;
  p->hidden = f.buffer("mlp.hidden", engine::fused_desc({M, fc1.out_features}, f.low()));
  dnnl::post_ops activate, add_residual;
  activate.append_eltwise(1.0f, act_algorithm, act_alpha, 0.0f);
  add_residual.append_sum(1.0f);
  p->fc1 = fc1.fused(f, t.normed.get_desc(), p->hidden.get_desc(), activate);
  p->fc2 =
      fc2.fused(f, p->hidden.get_desc(), t.x.get_desc(), add_residual, 0, -1, 1.0f, t.out_scale);
  return p;
}

}  // namespace vit
