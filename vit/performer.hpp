// Performer's FAVOR+ (Choromanski et al. 2021), VitConfig::attn_features M > 0: softmax
// attention approximated with positive random features, in time linear in N. Per head, with
// q' = q/d^¼ and k' = k/d^¼ (so q'·k' = q·k/√d) and the rows ω_m of W [M, d]:
//   φ(x) = (exp(ω·x − ‖x‖²/2 − c) + ε)/√M,   out_i = φ(q_i)·(Σ_j φ(k_j) v_jᵀ) / φ(q_i)·Σ_j φ(k_j)
// where c is a stabiliser that cancels between numerator and denominator (the largest exponent
// of a query's row; of all keys of an image and head), ε = 1e-4 keeps the denominator from
// vanishing, and the ‖q‖²/2 of a query, constant over its row, cancels too and is left out. W
// (attn.performer_w, a buffer shared by the heads) is orthogonal random features: blocks of d
// orthonormal Gaussian directions, each row scaled to the norm of a Gaussian vector; redrawn
// every VitConfig::attn_redraw training steps, saved with the model, fixed in inference.
#pragma once

#include <random>

#include "engine/plan.hpp"
#include "vit/module.hpp"

namespace vit {

struct FavorAttention {
  FavorAttention(ParameterStore& store, const std::string& prefix, const VitConfig& c);
  ~FavorAttention();  // where Plan is complete
  // q, k, v [B, H, N, d] views (last axis contiguous), alive until backward -> the heads'
  // output [B, H, N, d], dense.
  const Tensor& forward(Context& ctx, const View& q, const View& k, const View& v);
  // Writes diff_q, diff_k and diff_v (laid out as q, k and v were); W has no gradient.
  void backward(Context& ctx, const Tensor& diff_out, const View& diff_q, const View& diff_k,
                const View& diff_v);
  // Fills W with new orthogonal random features drawn from `rng`.
  void redraw(std::mt19937_64& rng);

  int64_t heads, head_dim, features;  // H, d, M
  engine::Parameter* w;               // [M, d], a buffer

  // The fused form: the same forward on f32 views of q, k and v for a whole batch, its output
  // in `out` [B, H, N, d] (dense f32).
  struct Fused {
    std::shared_ptr<void> plan;  // the forward's primitives and buffers
    void run(dnnl::stream& s) const;
    const Tensor* out = nullptr;
  };
  Fused fused(FusedBuild& f, const dnnl::memory& q, const dnnl::memory& k,
              const dnnl::memory& v) const;

  struct Plan;

 private:
  std::unique_ptr<Plan> build(Context& ctx, const View& q, const View& k, const View& v,
                              bool training) const;
  static void run_forward(dnnl::stream& s, Plan& p);
  std::unique_ptr<Plan> plan_;
  Dims plan_key_;
};

}  // namespace vit
