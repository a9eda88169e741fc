// Additive (Bahdanau) attention scores, VitConfig::attn_score "additive": per head h,
// s_ij = alpha · w_hᵀ tanh(W_q,h q_i + W_k,h k_j), with W_q,h and W_k,h [d_a, d] and w_h [d_a]
// (attn.additive_q, attn.additive_k [H, d_a, d], attn.additive_w [H, d_a]). It replaces q·kᵀ/√d
// in MultiHeadAttention; the normalisation after it is the same.
//
// The sum inside tanh is materialised, [B, H, Nq, Nk, d_a]: that is what additive attention
// costs (d_a times the memory of dot-product scores), and why dot products replaced it.
#pragma once

#include "engine/parameter_store.hpp"
#include "engine/plan.hpp"
#include "vit/module.hpp"

namespace vit {

struct AdditiveScores {
  AdditiveScores(ParameterStore& store, const std::string& prefix, const VitConfig& c, float alpha);
  // q [B, H, Nq, d], k [B, H, Nk, d], any strides with a contiguous last axis, alive until
  // backward -> scores [B, H, Nq, Nk].
  const Tensor& forward(Context& ctx, const View& q, const View& k);
  // Writes diff_q and diff_k (laid out as q and k were) and the three weights' gradients.
  void backward(Context& ctx, const Tensor& diff_scores, const View& diff_q, const View& diff_k);
  void init_weights(Context& ctx);  // trunc_normal(0.02), as timm's Linear weights

  int64_t heads, head_dim, dim;  // H, d, d_a
  float alpha;                   // the scores' scale: 1, or relu's 1/n
  engine::Parameter *w_q, *w_k, *w;

  // The fused form, for G images at a time: f32 throughout (q and k arrive in f32), the
  // normalisation's eltwise post-ops on the last matmul, which writes `scores`.
  struct Fused {
    dnnl::matmul a_mm, b_mm, s_mm;
    dnnl::binary sum_tanh;
    dnnl::reorder spread_a, spread_b;
    dnnl::memory w_q_t, w_k_t, w_col, a, a_wide, b, b_wide, b_dense, t, t_rows, scores_col;
    std::vector<dnnl::memory> q, k;                 // per group of images: [G, H, N, d] views
    void run(dnnl::stream& s, size_t group) const;  // the scores of group `group`
  };
  // q_heads and k_heads: [G, H, N, d] f32 views per group; `scores` [G, H, N, N] the
  // destination; `ops` its post-ops (eltwise only).
  Fused fused(FusedBuild& f, const std::vector<dnnl::memory>& q_heads,
              const std::vector<dnnl::memory>& k_heads, const dnnl::memory& scores,
              const dnnl::post_ops& ops) const;

 private:
  struct Plan {
    dnnl::matmul a_mm, b_mm, s_mm;     // q·W_qᵀ, k·W_kᵀ, T·w
    dnnl::reorder spread_a, spread_b;  // a over the keys into T, b over the queries
    dnnl::binary sum_tanh;             // T = tanh(T + b spread), in place
    dnnl::matmul d_t_mm, d_w_mm, d_q_mm, d_k_mm, d_wq_mm, d_wk_mm;
    dnnl::eltwise_backward tanh_bwd;
    dnnl::matmul sum_keys, sum_queries;  // dT summed over keys (-> da), over queries (-> db)
    engine::RowSum sum_images_w, sum_images_wq;  // Σ over the batch of the weights' gradients
    dnnl::memory q, k, w_q_t, w_k_t, w_col, w_row, a, a_wide, b, b_wide, b_dense, t, t_rows,
        scores_col;
    dnnl::memory diff_scores_col, diff_scores_row, d_t, d_t_rows, d_a, d_b, d_a_t, d_b_t;
    dnnl::memory diff_q, diff_k, w_q_mem, w_k_mem, d_w_heads, d_w_images, d_wq_images, d_wk_images;
    dnnl::memory d_w_sum, d_wq_sum, d_wk_sum;
    Tensor b_dense_buf;  // b spread over the queries, scratch
    Tensor ones;         // max(Nq, Nk) ones: the sums over keys and queries as matmuls
    dnnl::memory ones_k, ones_q, d_t_wide, d_b_wide;
    Tensor scores, t_buf, d_t_buf, d_a_buf, d_b_buf, d_w_buf, d_wq_buf, d_wk_buf;
  };
  std::unique_ptr<Plan> build(Context& ctx, const View& q, const View& k);
  engine::PlanCache<Plan> plans_;
};

}  // namespace vit
