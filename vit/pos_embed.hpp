// timm's _pos_embed, the token embedding: the prefix tokens (cls_token, DeiT's dist_token,
// then reg_tokens registers) before the patch tokens, and the learned pos_embed added, over all N
// rows or, with no_embed_class, over the patch rows only. [B, L, D] -> [B, N, D]. With
// VitConfig::pos_embed "sincos" the table is MAE's fixed one (a buffer), with "none" absent.
#pragma once

#include <vector>

#include "engine/binary.hpp"
#include "engine/reorder.hpp"
#include "vit/module.hpp"

namespace vit {

struct PosEmbed {
  PosEmbed(ParameterStore& store, const VitConfig& c);
  const Tensor& forward(Context& ctx, const Tensor& patch_tokens);
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);  // -> diff of patch_tokens
  // timm's init: pos_embed trunc_normal(0.02), cls_token and reg_token normal(1e-6),
  // dist_token trunc_normal(0.02).
  void init_weights(Context& ctx);

  int64_t num_patches, num_prefix, embed_dim;  // L, P, D
  bool embed_prefix;                           // pos_embed has rows for the prefix tokens too
  engine::Parameter* cls_token;                // [1, 1, D], or nullptr
  engine::Parameter* dist_token;               // [1, 1, D], or nullptr
  engine::Parameter* reg_token;                // [1, R, D], or nullptr
  engine::Parameter* pos_embed;  // [1, N, D], or [1, L, D] with no_embed_class; or nullptr

  // The fused piece: pos_embed added to the patch tokens in place and the result placed in
  // the residual stream's patch rows; the prefix rows copied from a table of the prefix
  // tokens plus their positions, refilled when the weights change.
  struct Fused : FusedStep {
    dnnl::binary add_pos;
    dnnl::memory patch_tokens, pos_rows;  // f32 [B, L, D], [1, L, D]
    dnnl::reorder place;
    dnnl::memory x_patch_rows;  // f32 [B, L, D] view of x's rows P.. of each image
    dnnl::memory prefix;        // f32 [P, D]
    float* x = nullptr;         // f32 [B, N, D]
    int64_t images = 0, tokens = 0, prefix_rows = 0, dim = 0;
    void run(dnnl::stream& s) override;
  };
  std::unique_ptr<FusedStep> fused(FusedBuild& f, const dnnl::memory& patch_tokens,
                                   const dnnl::memory& x) const;

 private:
  // [P, D]: row j of the prefix tokens, plus pos_embed's row j when it covers them.
  void fill_prefix(float* table) const;
  struct Buffers {
    Tensor tokens, diff_patch_tokens;  // [B, N, D] with the prefix rows zero, [B, L, D]
  };
  VitConfig sincos_config_;    // the grid of a sincos table
  Tensor table_, diff_table_;  // [1, N, D]: what is added to every image, and its gradient
  engine::Binary add_{dnnl::algorithm::binary_add};
  engine::Reorder copy_;
  engine::BroadcastAdd add_table_;
  engine::PlanCache<Buffers> buffers_;
};

// MAE's 2-D sine-cosine positional table for c's grid, [pos_embed_len, D] row-major: the prefix
// rows zero, then one row per patch in row-major grid order.
void sincos_pos_embed(const VitConfig& c, float* table);

// The weights of torch's bicubic F.interpolate along one axis (align_corners=False), as a
// dense [out, in] matrix: with antialias (timm's resample_abs_pos_embed default) the PIL-style
// filter, Keys' a = -0.5 with its support widened by in/out when shrinking and each row
// normalised, taps outside the input left out; without (MAE's and DeiT's
// interpolate_pos_embed) a = -0.75 over four taps, indices clamped at the borders.
std::vector<double> bicubic_weights(int64_t in, int64_t out, bool antialias);

// timm's resample_abs_pos_embed on a grid of positions: src [old_h · old_w, D] (row-major
// over the grid) -> dst [new_h · new_w, D], each of the D channels interpolated as an image.
void resample_grid(const float* src, int64_t old_h, int64_t old_w, float* dst, int64_t new_h,
                   int64_t new_w, int64_t D, bool antialias);

}  // namespace vit
