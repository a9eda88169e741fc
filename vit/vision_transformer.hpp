// The Vision Transformer (Dosovitskiy et al., 2020) with timm's structure and state-dict names:
// forward_features (patch embedding, token embedding, blocks, final norm) then forward_head
// (pooling, fc_norm, classifier). Its variants are VitConfig fields: prefix tokens (registers,
// DeiT's dist token), pooling, fc_norm, LayerScale, qk_norm, pre_norm, the norms' eps, the MLP's
// activation, no head, and the attention (vit/attention.hpp). Every module holds its training
// forward and backward and its fused-inference piece side by side; VitInference drives the pieces.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "vit/block.hpp"
#include "vit/head.hpp"
#include "vit/patch_embed.hpp"
#include "vit/pos_embed.hpp"

namespace vit {

class VisionTransformer {
 public:
  VisionTransformer(ParameterStore& store, const VitConfig& config);

  // patches [B, L, C·P·P] (with a conv stem, images [B, C, H, W]) -> logits [B, K].
  const Tensor& forward(Context& ctx, const Tensor& patches);
  const Tensor& forward_features(Context& ctx, const Tensor& patches);  // -> [B, N, D]
  const Tensor& forward_head(Context& ctx, const Tensor& features);     // -> [B, K]
  // From diff_logits [B, K] writes the gradient of every parameter.
  void backward(Context& ctx, const Tensor& diff_logits);
  void train(bool on);
  void begin_step(int64_t step);  // each block's attention: see Attention::begin_step
  // bf16: the matmuls of the patch embedding and of every block take bf16 operands
  // (engine::Linear); the head and everything else stay f32.
  void set_precision(engine::Precision p);
  // timm's init: trunc_normal(0.02) on Linear weights and pos_embed, zero biases, cls and
  // register tokens normal(1e-6), LayerNorm 1 and 0, patch_embed torch's default.
  void init_weights(Context& ctx);
  // timm's group_matcher, for layer-wise lr decay: 0 for the embeddings (cls, dist and
  // register tokens, pos_embed, patch_embed, norm_pre), i + 1 for blocks.i, depth + 1 for the
  // final norm and the head.
  int64_t layer_id(const std::string& name) const;
  // A linear probe: every parameter but the head's and the final norm's (norm or fc_norm) is
  // marked not trainable in `store`, the frozen part runs in evaluation mode, and backward stops
  // after the final norm.
  void freeze_backbone(ParameterStore& store);
  // Block `block`'s attention probabilities [B, H, N, N] of the last forward (see
  // Attention::probabilities), for attention maps and rollout.
  const Tensor& attention_probabilities(Context& ctx, int64_t block) const;
  int64_t depth() const { return int64_t(blocks_.size()); }

  // The evaluation-mode forward of one batch size, fused (see VitInference).
  struct Fused : FusedStep {
    std::unique_ptr<PatchEmbed::Fused> patch_embed;
    std::unique_ptr<FusedStep> pos_embed;
    std::optional<engine::LayerNorm::Fused> norm_pre;
    dnnl::memory x;  // f32 [B·N, D] the residual stream
    std::vector<std::unique_ptr<FusedStep>> blocks;
    std::map<int64_t, dnnl::memory> probs_taps;  // by block: f32 [B, H, N, N]
    std::unique_ptr<Head::Fused> head;
    void set_input(float* patches) { patch_embed->input.set_data_handle(patches); }
    const float* logits() const {
      return static_cast<const float*>(head->logits.get_data_handle());
    }
    void run(dnnl::stream& s) override;
  };
  // taps: the blocks whose attention probabilities the plan copies out (Fused::probs_taps).
  std::unique_ptr<Fused> fused(FusedBuild& f, const std::vector<int64_t>& taps = {}) const;

  const VitConfig config;

 private:
  PosEmbed pos_;  // cls_token, reg_token and pos_embed first, as in timm's state dict
  PatchEmbed patch_embed_;
  engine::Dropout pos_drop_;
  std::optional<engine::LayerNorm> norm_pre_;  // pre_norm (CLIP)
  std::vector<std::unique_ptr<Block>> blocks_;
  std::optional<engine::LayerNorm> norm_;  // the final norm, unless fc_norm replaces it
  Head head_;
  bool frozen_backbone_ = false;
};

}  // namespace vit
