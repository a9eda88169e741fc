#include "vit/block.hpp"

namespace vit {

using dnnl::memory;
using engine::fused_desc;

static std::optional<engine::LayerScale> layer_scale(ParameterStore& store, const std::string& name,
                                                     const VitConfig& c) {
  if (c.init_values == 0.0) return std::nullopt;
  return std::optional<engine::LayerScale>(std::in_place, store, name, c.embed_dim,
                                           static_cast<float>(c.init_values));
}

// Members are built in timm's state-dict order: norm1, attn, ls1, norm2, mlp, ls2.
Block::Block(ParameterStore& store, const std::string& prefix, const VitConfig& c, float drop_path)
    : norm1(store, prefix + ".norm1", c.embed_dim, static_cast<float>(c.norm_eps)),
      attn(make_attention(store, prefix + ".attn", c)),
      ls1(layer_scale(store, prefix + ".ls1", c)),
      drop_path1(drop_path),
      norm2(store, prefix + ".norm2", c.embed_dim, static_cast<float>(c.norm_eps)),
      mlp(store, prefix + ".mlp", c),
      ls2(layer_scale(store, prefix + ".ls2", c)),
      drop_path2(drop_path) {
  // Every block's gradient buffers are the same memory: block i's backward is over before
  // block i-1's begins, and only its result (grad_sum1's output) crosses over, read by the
  // block below before that block's grad_sum1 overwrites it. ViT-Ti trains in a sixth of the
  // gradient memory at depth 12.
  norm1.grad_slot = "block.norm1";
  attn->share_gradients("block.attn");
  drop_path1.grad_slot = "block.drop_path1";
  if (ls1) ls1->grad_slot = "block.ls1";
  if (ls2) ls2->grad_slot = "block.ls2";
  norm2.grad_slot = "block.norm2";
  mlp.share_gradients("block.mlp");
  drop_path2.grad_slot = "block.drop_path2";
  grad_sum1.grad_slot = "block.grad_sum1";
  grad_sum2.grad_slot = "block.grad_sum2";
}

void Block::train(bool on) {
  attn->train(on);
  mlp.train(on);
  drop_path1.training = drop_path2.training = on;
}

void Block::set_precision(engine::Precision p) {
  attn->set_precision(p);
  mlp.set_precision(p);
}

void Block::init_weights(Context& ctx) {
  norm1.reset_parameters();
  norm2.reset_parameters();
  attn->init_weights(ctx);
  mlp.init_weights(ctx);
  if (ls1) ls1->reset_parameters();
  if (ls2) ls2->reset_parameters();
}

const Tensor& Block::forward(Context& ctx, const Tensor& x) {
  const Tensor* a = &attn->forward(ctx, norm1.forward(ctx, x));
  if (ls1) a = &ls1->forward(ctx, *a);
  const Tensor& x1 = residual1.forward(ctx, x, drop_path1.forward(ctx, *a));
  const Tensor* m = &mlp.forward(ctx, norm2.forward(ctx, x1));
  if (ls2) m = &ls2->forward(ctx, *m);
  return residual2.forward(ctx, x1, drop_path2.forward(ctx, *m));
}

const Tensor& Block::backward(Context& ctx, const Tensor& diff_dst) {
  const Tensor* d = &drop_path2.backward(ctx, residual2.backward(diff_dst));
  if (ls2) d = &ls2->backward(ctx, *d);
  const Tensor& d_branch2 = norm2.backward(ctx, mlp.backward(ctx, *d));
  const Tensor& d_x1 = grad_sum2.forward(ctx, diff_dst, d_branch2);
  d = &drop_path1.backward(ctx, residual1.backward(d_x1));
  if (ls1) d = &ls1->backward(ctx, *d);
  const Tensor& d_branch1 = norm1.backward(ctx, attn->backward(ctx, *d));
  return grad_sum1.forward(ctx, d_x1, d_branch1);
}

std::unique_ptr<FusedStep> Block::fused(FusedBuild& f, int64_t tokens,
                                        const dnnl::memory& probs_tap) const {
  const int64_t M = f.images * tokens, D = norm1.dim;
  auto p = std::make_unique<Fused>();
  p->x = f.buffer("tokens.x", fused_desc({M, D}, memory::data_type::f32));
  p->normed = f.buffer("tokens.normed", fused_desc({M, D}, memory::data_type::f32));
  p->normed_low = p->normed;
  if (f.bf16()) {
    p->normed_low = f.buffer("tokens.normed_low", fused_desc({M, D}, f.low()));
    p->to_low = dnnl::reorder(p->normed, p->normed_low);
  }
  p->norm1 = norm1.fused(f, M);
  p->norm2 = norm2.fused(f, M);
  FusedTokens t{f.images, tokens, p->normed_low, p->x, ls1 ? ls1->gamma : nullptr, probs_tap};
  p->attn = attn->fused(f, t);
  t.out_scale = ls2 ? ls2->gamma : nullptr;
  t.probs_tap = {};
  p->mlp = mlp.fused(f, t);
  return p;
}

void Block::Fused::run(dnnl::stream& s) {
  norm1.run(s, x, normed);
  if (to_low) to_low.execute(s, normed, normed_low);
  attn->run(s);
  norm2.run(s, x, normed);
  if (to_low) to_low.execute(s, normed, normed_low);
  mlp->run(s);
}

}  // namespace vit
