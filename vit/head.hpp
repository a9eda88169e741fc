// timm's forward_head: pool the final tokens ("token": the cls token's row; "avg": the mean of
// the patch rows), fc_norm (a LayerNorm after pooling, when the config puts the final norm
// there), dropout, and the classifier. [B, N, D] -> [B, K].
#pragma once

#include <optional>
#include "engine/binary.hpp"
#include "engine/layer_norm.hpp"
#include "engine/pooling.hpp"
#include "engine/reorder.hpp"

#include "vit/module.hpp"

namespace vit {

struct Head {
  Head(ParameterStore& store, const VitConfig& c);
  const Tensor& forward(Context& ctx, const Tensor& features);      // [B, N, D] -> logits [B, K]
  const Tensor& backward(Context& ctx, const Tensor& diff_logits);  // -> diff of features
  void train(bool on) { head_drop.training = on; }
  void init_weights(Context& ctx);

  bool avg;                       // pool by average, else take the cls token's row
  int64_t num_prefix, embed_dim;  // P, D
  std::optional<engine::LayerNorm> fc_norm;
  engine::Dropout head_drop;
  engine::Linear head;  // D -> K

  // The fused piece, from the residual stream x [B·N, D] after the last block: the model's
  // final `norm` (when it has one; LayerNorm is per row, so for "token" only the pooled rows
  // are normalized), pooling, fc_norm and the classifier, into logits f32 [B, K].
  struct Fused : FusedStep {
    dnnl::reorder take;           // the cls rows, or the patch rows made dense
    dnnl::memory rows_src, rows;  // its source (a view of x or of normed) and dest
    std::optional<engine::LayerNorm::Fused> norm_all, norm_pooled;  // before / after pooling
    dnnl::memory x, normed;              // f32 [B·N, D]: the stream, its norm ("avg" only)
    dnnl::pooling_forward pool;          // "avg": [B, L, D] -> [B, D]
    dnnl::memory pool_src, pool_dst;     // rows and pooled, as the pooling's NHWC images
    dnnl::memory pooled, pooled_normed;  // f32 [B, D]
    engine::Linear::Fused classifier;
    dnnl::memory logits;  // f32 [B, K]
    void run(dnnl::stream& s) override;
  };
  std::unique_ptr<Fused> fused(FusedBuild& f, const dnnl::memory& x, int64_t tokens,
                               const engine::LayerNorm* norm) const;

 private:
  struct Buffers {
    Tensor pooled, diff_features;  // [B, D]; [B, N, D] with only the pooled rows written
    Tensor patch_rows;             // "avg": [B, 1, L, D], the patch rows made dense
  };
  engine::Reorder copy_;
  engine::GlobalAvgPool2d pool_{engine::Layout::nhwc};
  engine::PlanCache<Buffers> buffers_;
};

}  // namespace vit
