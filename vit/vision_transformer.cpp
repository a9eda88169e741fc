#include "vit/vision_transformer.hpp"

namespace vit {

using dnnl::memory;
using engine::fused_desc;

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

static std::optional<engine::LayerNorm> make_norm(ParameterStore& store, const char* name,
                                                  bool wanted, const VitConfig& c) {
  if (!wanted) return std::nullopt;
  return std::optional<engine::LayerNorm>(std::in_place, store, name, c.embed_dim,
                                          static_cast<float>(c.norm_eps));
}

// Members are built in timm's state-dict order, so the store lists parameters in that order.
VisionTransformer::VisionTransformer(ParameterStore& store, const VitConfig& c)
    : config((c.validate(), c)),
      pos_(store, c),
      patch_embed_(store, c),
      pos_drop_(static_cast<float>(c.drop_rate)),
      norm_pre_(make_norm(store, "norm_pre", c.pre_norm, c)),
      blocks_(make_blocks(store, c)),
      norm_(make_norm(store, "norm", !c.fc_norm, c)),
      head_(store, c) {}

void VisionTransformer::begin_step(int64_t step) {
  for (auto& b : blocks_) b->begin_step(step);
}

void VisionTransformer::train(bool on) {
  const bool backbone = on && !frozen_backbone_;  // frozen features are computed as in eval
  pos_drop_.training = backbone;
  patch_embed_.train(backbone);
  for (auto& b : blocks_) b->train(backbone);
  head_.train(on);
}

int64_t VisionTransformer::layer_id(const std::string& name) const {
  if (name.starts_with("blocks.")) {
    const size_t dot = name.find('.', 7);
    return std::stoll(name.substr(7, dot - 7)) + 1;
  }
  for (const char* stem :
       {"cls_token", "reg_token", "dist_token", "pos_embed", "patch_embed.", "norm_pre."})
    if (name.starts_with(stem)) return 0;
  return config.depth + 1;  // norm, fc_norm, attention_pool, head, head_dist
}

void VisionTransformer::freeze_backbone(ParameterStore& store) {
  for (engine::Parameter& p : store.parameters()) {
    const bool head = p.name.starts_with("head.") || p.name.starts_with("head_dist.") ||
                      p.name.starts_with("norm.") || p.name.starts_with("fc_norm.") ||
                      p.name.starts_with("attention_pool.");
    if (!head) p.trainable = false;
  }
  frozen_backbone_ = true;
}

void VisionTransformer::set_precision(engine::Precision p) {
  patch_embed_.set_precision(p);
  for (auto& b : blocks_) b->set_precision(p);
}

void VisionTransformer::init_weights(Context& ctx) {
  pos_.init_weights(ctx);
  patch_embed_.init_weights(ctx);
  if (norm_pre_) norm_pre_->reset_parameters();
  for (auto& b : blocks_) b->init_weights(ctx);
  if (norm_) norm_->reset_parameters();
  head_.init_weights(ctx);
}

const Tensor& VisionTransformer::forward_features(Context& ctx, const Tensor& patches) {
  const Tensor* x = &pos_drop_.forward(ctx, pos_.forward(ctx, patch_embed_.forward(ctx, patches)));
  if (norm_pre_) x = &norm_pre_->forward(ctx, *x);
  for (auto& block : blocks_) x = &block->forward(ctx, *x);
  return norm_ ? norm_->forward(ctx, *x) : *x;
}

const Tensor& VisionTransformer::forward_head(Context& ctx, const Tensor& features) {
  return head_.forward(ctx, features);
}

const Tensor& VisionTransformer::forward(Context& ctx, const Tensor& patches) {
  return forward_head(ctx, forward_features(ctx, patches));
}

void VisionTransformer::backward(Context& ctx, const Tensor& diff_logits) {
  const Tensor* d = &head_.backward(ctx, diff_logits);
  if (norm_) d = &norm_->backward(ctx, *d);
  if (frozen_backbone_) return;  // nothing below trains
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) d = &(*it)->backward(ctx, *d);
  if (norm_pre_) d = &norm_pre_->backward(ctx, *d);
  patch_embed_.backward(ctx, pos_.backward(ctx, pos_drop_.backward(ctx, *d)));
}

std::unique_ptr<VisionTransformer::Fused> VisionTransformer::fused(
    FusedBuild& f, const std::vector<int64_t>& taps) const {
  const int64_t B = f.images, L = config.num_patches(), N = config.num_tokens(),
                D = config.embed_dim;
  auto p = std::make_unique<Fused>();
  const memory x = f.buffer("tokens.x", fused_desc({B * N, D}, memory::data_type::f32));
  // The patch embedding lands in the LayerNorm output's buffer, free until the first block.
  const memory normed = f.buffer("tokens.normed", fused_desc({B * N, D}, memory::data_type::f32));
  const memory patch_out =
      memory(fused_desc({B * L, D}, memory::data_type::f32), f.ctx.eng, normed.get_data_handle());
  p->patch_embed = patch_embed_.fused(f, patch_out);
  p->pos_embed = pos_.fused(f, patch_out, x);
  if (norm_pre_) p->norm_pre = norm_pre_->fused(f, B * N), p->x = x;
  for (int64_t i : taps) {
    engine::require(i >= 0 && i < depth(), "attention probabilities of block " + std::to_string(i) +
                                               " of a ViT with " + std::to_string(depth()) +
                                               " blocks");
    p->probs_taps[i] = f.buffer("attn.probs_tap." + std::to_string(i),
                                fused_desc({B, config.num_heads, N, N}, memory::data_type::f32));
  }
  for (int64_t i = 0; i < depth(); ++i) {
    const auto tap = p->probs_taps.find(i);
    p->blocks.push_back(
        blocks_[size_t(i)]->fused(f, N, tap == p->probs_taps.end() ? memory() : tap->second));
  }
  p->head = head_.fused(f, x, N, norm_ ? &*norm_ : nullptr);
  return p;
}

void VisionTransformer::Fused::run(dnnl::stream& s) {
  patch_embed->run(s);
  pos_embed->run(s);
  if (norm_pre) norm_pre->run(s, x, x);  // in place
  for (auto& block : blocks) block->run(s);
  head->run(s);
}

const Tensor& VisionTransformer::attention_probabilities(Context& ctx, int64_t block) const {
  engine::require(
      block >= 0 && block < depth(),
      "block " + std::to_string(block) + " of a ViT with " + std::to_string(depth()) + " blocks");
  return blocks_[size_t(block)]->attn->probabilities(ctx);
}

}  // namespace vit
