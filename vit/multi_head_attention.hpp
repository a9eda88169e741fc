// timm's Attention: multi-head self-attention with a fused qkv projection, softmax(q·kᵀ/√d)·v
// per head, heads merged and projected; with qk_norm, q and k each pass a LayerNorm over the
// head dimension first. Registered as "attention", the default. The lab's variants of exact
// attention are its pieces: the scores (attn_score: additive, vit/additive_scores.hpp), the
// normalisation (attn_norm, vit/attention_norm.hpp), the score bias that carries a window's
// mask (attn_window), Linformer's projection of the keys and values along the sequence
// (attn_lowrank), and Performer's random-feature attention instead of all of these
// (attn_features, vit/performer.hpp). A window is a mask on the scores, or blocks of queries
// against their halo of keys (vit/halo_attention.hpp) where that costs less.
#pragma once

#include <optional>

#include "engine/batched_matmul.hpp"

#include "engine/binary.hpp"
#include "engine/layer_norm.hpp"
#include "engine/reorder.hpp"
#include "engine/softmax.hpp"
#include "vit/additive_scores.hpp"
#include "vit/attention.hpp"
#include "vit/attention_norm.hpp"
#include "vit/halo_attention.hpp"
#include "vit/performer.hpp"

namespace vit {

class MultiHeadAttention : public Attention {
 public:
  MultiHeadAttention(ParameterStore& store, const std::string& prefix, const VitConfig& c);
  static std::unique_ptr<Attention> create(ParameterStore& store, const std::string& prefix,
                                           const VitConfig& c) {
    return std::make_unique<MultiHeadAttention>(store, prefix, c);
  }
  static AttentionTraits traits();

  const Tensor& forward(Context& ctx, const Tensor& x) override;
  const Tensor& backward(Context& ctx, const Tensor& diff_dst) override;
  void train(bool on) override {
    attn_drop.training = proj_drop.training = on;
    if (halo) halo->train(on);
  }
  void begin_step(int64_t step) override;
  void set_precision(engine::Precision p) override;
  void init_weights(Context& ctx) override;
  void share_gradients(const std::string& slot) override;
  std::unique_ptr<FusedStep> fused(FusedBuild& f, const FusedTokens& t) const override;
  // Exact attention's normalised scores; the halo blocks' spread back over all N keys (zero
  // outside the window). Linformer's keys are projections, and Performer never forms the
  // matrix: both refuse.
  const Tensor& probabilities(Context& ctx) override;

  VitConfig config;  // its settings: the lab's variants among them
  int64_t num_heads, head_dim;
  std::string grad_slot;                            // non-empty: see share_gradients
  engine::Linear qkv;                               // [B, N, 3·D], laid out [B, N, 3, H, d]
  std::optional<engine::LayerNorm> q_norm, k_norm;  // over d, on [B, N, H, d] copies
  engine::BatchedMatmul scores_mm;                  // q·kᵀ · score_scale  [B, H, N, N]
  std::optional<AdditiveScores> additive;           // attn_score additive: instead of q·kᵀ
  // attn_lowrank K (Linformer, Wang et al. 2020): k and v projected along the sequence, E·k and
  // F·v with E, F [K, N] shared by the heads: bias-free Linears from N to K applied to each
  // channel's sequence (attn.lowrank_k.weight is E, attn.lowrank_v.weight is F).
  std::optional<engine::Linear> lowrank_k, lowrank_v;
  int64_t keys;                         // Nk: N, or K
  std::optional<FavorAttention> favor;  // attn_features M: Performer, instead of scores·values
  // attn_window R where its blocks cost less than masking N × N (attn_window_impl): instead of
  // the scores, bias, normalisation and probs·v below.
  std::optional<HaloAttention> halo;
  std::vector<float> bias;        // score_bias [N, N], or empty
  engine::BroadcastAdd add_bias;  // scores + bias, for every image and head
  AttentionNorm norm;             // softmax, relu or sigmoid
  engine::Dropout attn_drop;
  engine::BatchedMatmul context_mm;  // probs·v  [B, H, N, d]
  engine::Reorder merge;             // [B, H, N, d] -> [B, N, H·d]
  engine::Linear proj;
  engine::Dropout proj_drop;

  // The fused piece: q, k and v go to three dense slabs (one matmul each, from thirds of the
  // qkv weight, q's scaled by 1/√d), so attention reads the heads as views in the layouts of
  // oneDNN's brgemm kernel, a few images at a time (their scores stay in L2); proj adds its
  // output to the residual stream as a sum post-op.
  struct Fused : FusedStep {
    engine::Linear::Fused q, k, v, proj;
    dnnl::matmul scores_mm, context_mm;
    dnnl::softmax_v2_forward softmax;  // attn_norm softmax; else the norm is a scores post-op
    // attn_window: the mask [1, N·Nk] added to the scores seen as rows [G·H, N·Nk], then relu
    // or σ on them in place (converted to bf16 probabilities when the matmuls are bf16).
    dnnl::binary add_mask;
    dnnl::eltwise_forward norm_eltwise;
    dnnl::reorder to_probs;
    dnnl::memory mask, scores_rows;
    dnnl::memory normed, x;      // the tokens' rows: input, and the residual stream
    dnnl::memory qkv_parts[3];   // low [M, D] each: q, k, v
    dnnl::memory scores, probs;  // f32 / low [G, H, N, N]; the same memory in f32
    dnnl::memory context;        // low [M, D]: heads merged
    // qk_norm: q and k land in raw f32 [M, D], are normalized per head (q's 1/√d folded into
    // q_norm) into normed_f32 and, in bf16, converted into the slab.
    std::optional<engine::LayerNorm::Fused> q_norm, k_norm;
    dnnl::memory qk_dest[2];  // where q and k go: their slabs, or f32 [M, D] for additive
    std::optional<AdditiveScores::Fused> additive;
    // Linformer: k and v turned to [B, D, N] (one row per channel), projected to [B, D, K].
    dnnl::reorder to_channels;
    dnnl::memory k_tokens, v_tokens, k_channels, v_channels;  // [B, N, D]; [B, D, N] as such
    dnnl::memory k_rows, v_rows, k_projected, v_projected;    // [B·D, N], [B·D, K]
    std::optional<engine::Linear::Fused> project_k, project_v;
    std::optional<HaloAttention::Fused> halo;
    // Performer: q, k, v in f32 [M, D] each, its output [B, H, N, d] merged into context.
    std::optional<FavorAttention::Fused> favor;
    dnnl::reorder favor_merge;
    dnnl::memory favor_out, context_as_heads;
    dnnl::memory raw, normed_f32[2];
    dnnl::memory raw_rows, normed_rows[2];  // the same as [M·H, d]: a row per token and head
    dnnl::reorder to_low[2];
    // Per group of G images, views of the slabs: [G, H, N, d], [G, H, d, N], [G, H, N, d], and
    // the context's heads in place.
    std::vector<dnnl::memory> q_heads, k_t, v_heads, context_heads;
    // FusedTokens::probs_tap: each group's probabilities copied (as f32) to its place there.
    dnnl::reorder tap;
    std::vector<dnnl::memory> tap_groups;
    void run(dnnl::stream& s) override;
  };

 private:
  engine::View head(const Tensor& qkv_out, int which) const;
  void score_backward(Context& ctx, const Tensor& diff_scores, const View& diff_q,
                      const View& diff_k);
  // Exact attention (and Linformer's): scores, bias, normalisation, dropout, probs·v.
  const Tensor& mix(Context& ctx, const View& q, const View& k, const View& v, int64_t B,
                    int64_t N);  // 0 q, 1 k, 2 v: [B, H, N, d]
  // A dense [B, N, H, d] buffer seen as heads [B, H, N, d].
  engine::View tokens_heads(float* data, int64_t B, int64_t N) const;
  struct Buffers {
    Tensor merged, diff_heads, diff_probs, diff_qkv;
    Tensor channels[2], diff_projected[2];  // Linformer: k, v as [B, D, N]; grads of E·k, F·v
    Tensor qk_raw[2], diff_qk_normed[2];    // qk_norm: q and k as [B, N, H, d], and their gradients
  };
  Tensor bias_table_;              // bias as [1, N, Nk], made on the first forward
  const Tensor* probs_ = nullptr;  // the last forward's, before dropout (exact attention)
  engine::Reorder copy_qk_, to_channels_;
  engine::PlanCache<Buffers> buffers_;
};

}  // namespace vit
