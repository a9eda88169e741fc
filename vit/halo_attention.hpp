// attn_window R as blocked local attention (the "halo" of HaloNet, Vaswani et al. 2021): the
// S × S patch grid is cut into blocks of b × b queries, b ≥ 2R, and each block attends to the
// (b + 2R)² keys around it (its halo, from a zero-padded grid) and to the P prefix tokens, so a
// patch query scores P + (b + 2R)² keys instead of all N. A mask on those keys makes it
// the same function as the masked N × N scores (score_bias): keys outside the query's Chebyshev
// window or off the grid get kMasked. The prefix queries attend to every token, as there.
//
// With b ≥ 2R each side of the halo is two parts, b and 2R wide, so the halo is four quadrants of
// the padded grid, each a strided view that does not overlap itself: a gather is four reorders
// (oneDNN refuses self-overlapping strides) and its gradient the same four with a sum post-op. Used
// instead of the mask when it costs less (MultiHeadAttention picks: VitConfig::attn_window_impl).
#pragma once

#include <unordered_map>
#include <vector>

#include "engine/batched_matmul.hpp"
#include "engine/binary.hpp"
#include "engine/reorder.hpp"
#include "vit/attention_norm.hpp"
#include "vit/module.hpp"

namespace vit {

struct HaloAttention {
  explicit HaloAttention(const VitConfig& c);
  // Whether the blocks cost less than the masked N × N scores for this config (dot scores).
  static bool cheaper(const VitConfig& c);
  static int64_t block_side(const VitConfig& c);  // b
  // The (query, key) pairs scored per image and head: the padded grid's queries against their
  // P + (b + 2R)² keys, the prefix queries against all N.
  static double scored_pairs(const VitConfig& c);
  // Whether a window runs as blocks: attn_window_impl "blocks", or "auto" and cheaper().
  static bool used(const VitConfig& c);

  // q, k, v [B, H, N, d] views (last axis contiguous, q unscaled), alive until backward -> the
  // heads' output [B, H, N, d], dense.
  const Tensor& forward(Context& ctx, const View& q, const View& k, const View& v);
  // Writes diff_q, diff_k and diff_v, laid out as q, k and v were.
  void backward(Context& ctx, const Tensor& diff_out, const View& diff_q, const View& diff_k,
                const View& diff_v);
  void train(bool on) { drop.training = drop_prefix.training = on; }
  // The last forward's probabilities spread over all N keys, [B, H, N, N]: zero outside each
  // query's window (what the masked formulation's probabilities are).
  const Tensor& probabilities(Context& ctx);
  void share_gradients(const std::string& slot);

  int64_t heads, head_dim;  // H, d
  int64_t prefix, side;     // P, S: the prefix tokens and the grid's side
  int64_t radius, block;    // R, b ≥ 2R (block_side)
  int64_t blocks, padded;   // nb = ⌈S/b⌉ a side, the padded grid's side nb·b + 2R
  int64_t keys;             // Kb = P + (b + 2R)²: each block's keys
  std::vector<float> mask;  // [nb², b², Kb]: 0 (or σ's −log n) where allowed, else kMasked
  float shift;              // σ's −log n on every allowed score (score_shift), else 0

  engine::BatchedMatmul scores_mm, context_mm;  // per block: [b², d]·[d, Kb], [b², Kb]·[Kb, d]
  engine::BroadcastAdd add_mask;
  AttentionNorm norm;
  engine::Dropout drop;
  // The prefix queries, over all N keys.
  engine::BatchedMatmul prefix_scores_mm, prefix_context_mm;
  engine::BroadcastAdd add_prefix_bias;
  AttentionNorm prefix_norm;
  engine::Dropout drop_prefix;

  // The fused form: from the q (scaled by the score scale), k and v slabs [B, N, H, d] to the
  // heads' output written into `context` [B, N, H, d], in the slabs' type; scores in f32.
  struct Fused {
    std::vector<std::pair<dnnl::primitive, std::unordered_map<int, dnnl::memory>>> steps;
    void run(dnnl::stream& s) const;
  };
  Fused fused(FusedBuild& f, const dnnl::memory& q, const dnnl::memory& k, const dnnl::memory& v,
              const dnnl::memory& context) const;

 private:
  // The zero-padded grid [B, H, Sp, Sp, d]; its views are in halo_attention.cpp (Shape).
  Dims grid_dims(int64_t B) const { return {B, heads, padded, padded, head_dim}; }

  struct Buffers {
    Tensor grid[3];  // q, k, v on the padded grid; the padding stays zero
    Tensor q_blk, k_blk, v_blk, out_grid, out;
    Tensor mask_table, prefix_bias_table, ones;  // ones [B·H, 1, nb²]: Σ over blocks
    Tensor diff_out_grid, diff_out_blk, diff_probs, diff_qkv_blk[3], diff_grid[3];
    Tensor diff_out_prefix, diff_probs_prefix;
    int64_t images = 0;                    // the forward's B
    const Tensor* probs = nullptr;         // [B·H·nb², b², Kb], before dropout
    const Tensor* prefix_probs = nullptr;  // [B, H, P, N]
    Tensor dense;                          // probabilities(): [B, H, N, N]
  };
  engine::PlanCache<Buffers> buffers_;
  engine::Reorder copy_, add_{true};
  engine::BatchedMatmul sum_blocks_;  // ones·diff of the prefix keys: their gradient
};

}  // namespace vit
