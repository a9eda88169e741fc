#include "vit/vision_transformer.hpp"

#include <cmath>

#include "engine/init.hpp"

namespace vit {

using engine::View;

PatchEmbed::PatchEmbed(ParameterStore& store, const VitConfig& c)
    : proj(store, "patch_embed.proj", c.patch_dim(), c.embed_dim, true,
           {c.embed_dim, c.in_chans, c.patch_size, c.patch_size}) {
  proj.input_gradient = false;  // the patches are data
}

PosEmbed::PosEmbed(ParameterStore& store, const VitConfig& c)
    : num_patches(c.num_patches()), embed_dim(c.embed_dim) {
  cls_token = &store.add("cls_token", {1, 1, c.embed_dim}, /*decay=*/false);
  pos_embed = &store.add("pos_embed", {1, c.num_tokens(), c.embed_dim}, /*decay=*/false);
}

const Tensor& PosEmbed::forward(Context& ctx, const Tensor& patch_tokens) {
  const int64_t B = patch_tokens.dim(0), L = num_patches, D = embed_dim, N = L + 1;
  engine::check_same_dims(patch_tokens.dims(), {B, L, D}, "PosEmbed", "input");
  Buffers& buf = buffers_.get(patch_tokens.dims(), [&] {
    auto b = std::make_unique<Buffers>();
    b->tokens = Tensor(ctx.eng, {B, N, D});  // row 0 stays zero: only rows 1.. are written
    b->diff_patch_tokens = Tensor(ctx.eng, {B, L, D});
    return b;
  });
  if (table_.empty()) table_ = Tensor(ctx.eng, {1, N, D});
  copy_(ctx, pos_embed->value.as_view(), table_.as_view());
  const Tensor cls = cls_token->value.reshaped({1, D});
  const Tensor row0 = Tensor::view(ctx.eng, table_.data(), {1, D});
  add_cls_(ctx, row0, cls, row0);
  copy_(ctx, patch_tokens.as_view(), View{buf.tokens.data() + D, {B, L, D}, {N * D, D, 1}});
  return add_pos_.forward(ctx, buf.tokens, table_);
}

const Tensor& PosEmbed::backward(Context& ctx, const Tensor& diff_dst) {
  Buffers& buf = buffers_.current("PosEmbed");
  const int64_t B = diff_dst.dim(0), L = num_patches, D = embed_dim, N = L + 1;
  add_pos_.backward(ctx, diff_dst, pos_embed->grad);
  // cls_token enters only through row 0 of the table, so its gradient is that row's.
  copy_(ctx, View{pos_embed->grad.data(), {1, D}, {D, 1}},
        View{cls_token->grad.data(), {1, D}, {D, 1}});
  copy_(ctx, View{diff_dst.data() + D, {B, L, D}, {N * D, D, 1}}, buf.diff_patch_tokens.as_view());
  return buf.diff_patch_tokens;
}

Attention::Attention(ParameterStore& store, const std::string& name, const VitConfig& c)
    : num_heads(c.num_heads),
      head_dim(c.head_dim()),
      qkv(store, name + ".qkv", c.embed_dim, 3 * c.embed_dim, c.qkv_bias),
      scores_mm(1.0f / std::sqrt(static_cast<float>(c.head_dim()))),
      attn_drop(static_cast<float>(c.attn_drop_rate)),
      proj(store, name + ".proj", c.embed_dim, c.embed_dim),
      proj_drop(static_cast<float>(c.drop_rate)) {}

void Attention::share_gradients(const std::string& slot) {
  grad_slot = slot;
  qkv.grad_slot = slot + ".qkv.diff_src";
  softmax.grad_slot = slot + ".softmax";
  attn_drop.grad_slot = slot + ".attn_drop";
  proj.grad_slot = slot + ".proj.diff_src";
  proj_drop.grad_slot = slot + ".proj_drop";
}

View Attention::head(const Tensor& qkv_out, int which) const {
  const int64_t B = qkv_out.dim(0), N = qkv_out.dim(1), D = num_heads * head_dim;
  return View{
      qkv_out.data() + which * D, {B, num_heads, N, head_dim}, {N * 3 * D, head_dim, 3 * D, 1}};
}

const Tensor& Attention::forward(Context& ctx, const Tensor& x) {
  const int64_t B = x.dim(0), N = x.dim(1), H = num_heads, d = head_dim, D = H * d;
  Buffers& buf = buffers_.get(x.dims(), [&] {
    auto b = std::make_unique<Buffers>();
    b->merged = Tensor(ctx.eng, {B, N, D});
    const std::string& s = grad_slot;
    b->diff_heads = engine::gradient_buffer(ctx, s.empty() ? s : s + ".heads", {B, H, N, d});
    b->diff_probs = engine::gradient_buffer(ctx, s.empty() ? s : s + ".probs", {B, H, N, N});
    b->diff_qkv = engine::gradient_buffer(ctx, s.empty() ? s : s + ".qkv", {B, N, 3 * D});
    return b;
  });
  const Tensor& qkv_out = qkv.forward(ctx, x);
  const Tensor& scores = scores_mm.forward(ctx, head(qkv_out, 0), head(qkv_out, 1).transposed());
  const Tensor& probs = attn_drop.forward(ctx, softmax.forward(ctx, scores));
  const Tensor& heads = context_mm.forward(ctx, probs.as_view(), head(qkv_out, 2));
  merge(ctx, heads.as_view(), View{buf.merged.data(), {B, H, N, d}, {N * D, d, D, 1}});
  return proj_drop.forward(ctx, proj.forward(ctx, buf.merged));
}

const Tensor& Attention::backward(Context& ctx, const Tensor& diff_dst) {
  Buffers& buf = buffers_.current("Attention");
  const int64_t B = diff_dst.dim(0), N = diff_dst.dim(1), H = num_heads, d = head_dim, D = H * d;
  const Tensor& diff_merged = proj.backward(ctx, proj_drop.backward(ctx, diff_dst));
  merge(ctx, View{diff_merged.data(), {B, H, N, d}, {N * D, d, D, 1}}, buf.diff_heads.as_view());
  context_mm.backward(ctx, buf.diff_heads, buf.diff_probs.as_view(), head(buf.diff_qkv, 2));
  const Tensor& diff_scores = softmax.backward(ctx, attn_drop.backward(ctx, buf.diff_probs));
  scores_mm.backward(ctx, diff_scores, head(buf.diff_qkv, 0), head(buf.diff_qkv, 1).transposed());
  return qkv.backward(ctx, buf.diff_qkv);
}

Mlp::Mlp(ParameterStore& store, const std::string& name, const VitConfig& c)
    : fc1(store, name + ".fc1", c.embed_dim, c.mlp_hidden()),
      drop1(static_cast<float>(c.drop_rate)),
      fc2(store, name + ".fc2", c.mlp_hidden(), c.embed_dim),
      drop2(static_cast<float>(c.drop_rate)) {}

const Tensor& Mlp::forward(Context& ctx, const Tensor& x) {
  const Tensor& h = drop1.forward(ctx, act.forward(ctx, fc1.forward(ctx, x)));
  return drop2.forward(ctx, fc2.forward(ctx, h));
}

const Tensor& Mlp::backward(Context& ctx, const Tensor& diff_dst) {
  const Tensor& dh = fc2.backward(ctx, drop2.backward(ctx, diff_dst));
  return fc1.backward(ctx, act.backward(ctx, drop1.backward(ctx, dh)));
}

Block::Block(ParameterStore& store, const std::string& name, const VitConfig& c, float drop_path)
    : norm1(store, name + ".norm1", c.embed_dim),
      attn(store, name + ".attn", c),
      drop_path1(drop_path),
      norm2(store, name + ".norm2", c.embed_dim),
      mlp(store, name + ".mlp", c),
      drop_path2(drop_path) {
  // Every block's gradient buffers are the same memory: block i's backward is over before
  // block i-1's begins, and only its result (grad_sum1's output) crosses over, read by the
  // block below before that block's grad_sum1 overwrites it. ViT-Ti trains in a sixth of the
  // gradient memory at depth 12.
  norm1.grad_slot = "block.norm1";
  attn.share_gradients("block.attn");
  drop_path1.grad_slot = "block.drop_path1";
  norm2.grad_slot = "block.norm2";
  mlp.fc1.grad_slot = "block.mlp.fc1";
  mlp.act.grad_slot = "block.mlp.act";
  mlp.drop1.grad_slot = "block.mlp.drop1";
  mlp.fc2.grad_slot = "block.mlp.fc2";
  mlp.drop2.grad_slot = "block.mlp.drop2";
  drop_path2.grad_slot = "block.drop_path2";
  grad_sum1.grad_slot = "block.grad_sum1";
  grad_sum2.grad_slot = "block.grad_sum2";
}

void Block::train(bool on) {
  attn.train(on);
  mlp.train(on);
  drop_path1.training = drop_path2.training = on;
}

const Tensor& Block::forward(Context& ctx, const Tensor& x) {
  const Tensor& x1 =
      residual1.forward(ctx, x, drop_path1.forward(ctx, attn.forward(ctx, norm1.forward(ctx, x))));
  return residual2.forward(ctx, x1,
                           drop_path2.forward(ctx, mlp.forward(ctx, norm2.forward(ctx, x1))));
}

const Tensor& Block::backward(Context& ctx, const Tensor& diff_dst) {
  const Tensor& d_branch2 = norm2.backward(
      ctx, mlp.backward(ctx, drop_path2.backward(ctx, residual2.backward(diff_dst))));
  const Tensor& d_x1 = grad_sum2.forward(ctx, diff_dst, d_branch2);
  const Tensor& d_branch1 =
      norm1.backward(ctx, attn.backward(ctx, drop_path1.backward(ctx, residual1.backward(d_x1))));
  return grad_sum1.forward(ctx, d_x1, d_branch1);
}

static std::vector<std::unique_ptr<Block>> make_blocks(ParameterStore& store, const VitConfig& c) {
  std::vector<std::unique_ptr<Block>> blocks;
  for (int64_t i = 0; i < c.depth; ++i) {
    // Stochastic depth rises linearly from 0 to drop_path_rate over the blocks (timm's dpr).
    const double rate = c.depth > 1 ? c.drop_path_rate * double(i) / double(c.depth - 1) : 0.0;
    blocks.push_back(
        std::make_unique<Block>(store, "blocks." + std::to_string(i), c, static_cast<float>(rate)));
  }
  return blocks;
}

// Members are built in timm's state-dict order, so the store lists parameters in that order.
VisionTransformer::VisionTransformer(ParameterStore& store, const VitConfig& c)
    : config((c.validate(), c)),
      pos_(store, c),
      patch_embed_(store, c),
      pos_drop_(static_cast<float>(c.drop_rate)),
      blocks_(make_blocks(store, c)),
      norm_(store, "norm", c.embed_dim),
      head_drop_(static_cast<float>(c.drop_rate)),
      head_(store, "head", c.embed_dim, c.num_classes) {}

void VisionTransformer::train(bool on) {
  pos_drop_.training = head_drop_.training = on;
  for (auto& b : blocks_) b->train(on);
}

void VisionTransformer::set_precision(engine::Precision p) {
  patch_embed_.proj.set_precision(p);
  for (auto& b : blocks_) {
    b->attn.qkv.set_precision(p);
    b->attn.proj.set_precision(p);
    b->mlp.fc1.set_precision(p);
    b->mlp.fc2.set_precision(p);
  }
}

void VisionTransformer::init_weights(Context& ctx) {
  auto linear = [&](engine::Linear& l) {
    engine::trunc_normal(ctx, l.weight->value, 0.0f, 0.02f);
    if (l.bias) engine::fill(l.bias->value, 0.0f);
  };
  engine::trunc_normal(ctx, pos_.pos_embed->value, 0.0f, 0.02f);
  engine::normal(ctx, pos_.cls_token->value, 0.0f, 1e-6f);
  patch_embed_.proj.reset_parameters(ctx);
  for (auto& b : blocks_) {
    b->norm1.reset_parameters();
    b->norm2.reset_parameters();
    linear(b->attn.qkv);
    linear(b->attn.proj);
    linear(b->mlp.fc1);
    linear(b->mlp.fc2);
  }
  norm_.reset_parameters();
  linear(head_);
}

const Tensor& VisionTransformer::forward(Context& ctx, const Tensor& patches) {
  engine::check_same_dims(patches.dims(),
                          {patches.dim(0), config.num_patches(), config.patch_dim()},
                          "VisionTransformer", "patches");
  const int64_t B = patches.dim(0), N = config.num_tokens(), D = config.embed_dim;
  Buffers& buf = buffers_.get(patches.dims(), [&] {
    auto b = std::make_unique<Buffers>();
    b->cls = Tensor(ctx.eng, {B, D});
    b->diff_features = Tensor(ctx.eng, {B, N, D});  // rows 1.. stay zero
    return b;
  });
  const Tensor* x = &pos_drop_.forward(ctx, pos_.forward(ctx, patch_embed_.forward(ctx, patches)));
  for (auto& block : blocks_) x = &block->forward(ctx, *x);
  const Tensor& features = norm_.forward(ctx, *x);
  copy_(ctx, View{features.data(), {B, D}, {N * D, 1}}, buf.cls.as_view());  // timm's x[:, 0]
  return head_.forward(ctx, head_drop_.forward(ctx, buf.cls));
}

void VisionTransformer::backward(Context& ctx, const Tensor& diff_logits) {
  Buffers& buf = buffers_.current("VisionTransformer");
  const int64_t B = diff_logits.dim(0), N = config.num_tokens(), D = config.embed_dim;
  const Tensor& d_cls = head_drop_.backward(ctx, head_.backward(ctx, diff_logits));
  copy_(ctx, d_cls.as_view(), View{buf.diff_features.data(), {B, D}, {N * D, 1}});
  const Tensor* d = &norm_.backward(ctx, buf.diff_features);
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) d = &(*it)->backward(ctx, *d);
  patch_embed_.backward(ctx, pos_.backward(ctx, pos_drop_.backward(ctx, *d)));
}

}  // namespace vit
