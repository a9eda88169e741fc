#include "vit/block.hpp"

namespace vit {

using dnnl::memory;
using engine::fused_desc;

Block::Block(ParameterStore& store, const std::string& prefix, const VitConfig& c, float drop_path)
    : norm1(store, prefix + ".norm1", c.embed_dim),
      attn(make_attention(store, prefix + ".attn", c)),
      drop_path1(drop_path),
      norm2(store, prefix + ".norm2", c.embed_dim),
      mlp(store, prefix + ".mlp", c),
      drop_path2(drop_path) {
  // Every block's gradient buffers are the same memory: block i's backward is over before
  // block i-1's begins, and only its result (grad_sum1's output) crosses over, read by the
  // block below before that block's grad_sum1 overwrites it. ViT-Ti trains in a sixth of the
  // gradient memory at depth 12.
  norm1.grad_slot = "block.norm1";
  attn->share_gradients("block.attn");
  drop_path1.grad_slot = "block.drop_path1";
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
}

const Tensor& Block::forward(Context& ctx, const Tensor& x) {
  const Tensor& x1 =
      residual1.forward(ctx, x, drop_path1.forward(ctx, attn->forward(ctx, norm1.forward(ctx, x))));
  return residual2.forward(ctx, x1,
                           drop_path2.forward(ctx, mlp.forward(ctx, norm2.forward(ctx, x1))));
}

const Tensor& Block::backward(Context& ctx, const Tensor& diff_dst) {
  const Tensor& d_branch2 = norm2.backward(
      ctx, mlp.backward(ctx, drop_path2.backward(ctx, residual2.backward(diff_dst))));
  const Tensor& d_x1 = grad_sum2.forward(ctx, diff_dst, d_branch2);
  const Tensor& d_branch1 =
      norm1.backward(ctx, attn->backward(ctx, drop_path1.backward(ctx, residual1.backward(d_x1))));
  return grad_sum1.forward(ctx, d_x1, d_branch1);
}

std::unique_ptr<FusedStep> Block::fused(FusedBuild& f, int64_t tokens) const {
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
  const FusedTokens t{f.images, tokens, p->normed_low, p->x};
  p->attn = attn->fused(f, t);
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
