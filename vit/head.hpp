// timm's forward_head: pool the final tokens ("token": the cls token's row; "avg": the mean of
// the patch rows; "seq": CCT's sequence pooling, Hassani et al. 2021, the patch rows weighted
// by a softmax over them of a learned score, attention_pool: Linear(D, 1)), fc_norm (a LayerNorm
// after pooling, when the config puts the final norm there), dropout, and the classifier. [B, N, D]
// -> [B, K]. DeiT's distilled model adds head_dist on the dist token's row and averages the two
// heads (timm's evaluation, and its training unless distilled_training); without a head
// (num_classes 0) the output is the pooled features [B, D].
#pragma once

#include <optional>

#include "engine/batched_matmul.hpp"
#include "engine/binary.hpp"
#include "engine/eltwise.hpp"
#include "engine/layer_norm.hpp"
#include "engine/pooling.hpp"
#include "engine/reorder.hpp"
#include "engine/softmax.hpp"
#include "vit/module.hpp"

namespace vit {

struct Head {
  Head(ParameterStore& store, const VitConfig& c);
  const Tensor& forward(Context& ctx, const Tensor& features);      // [B, N, D] -> logits [B, K]
  const Tensor& backward(Context& ctx, const Tensor& diff_logits);  // -> diff of features
  void train(bool on) { head_drop.training = on; }
  void init_weights(Context& ctx);

  bool avg, seq;                  // pool by average or by CCT's SeqPool, else the cls token's row
  int64_t num_prefix, embed_dim;  // P, D
  std::optional<engine::Linear> attention_pool;  // seq: each patch row's score, D -> 1
  std::optional<engine::LayerNorm> fc_norm;
  engine::Dropout head_drop;
  std::optional<engine::Linear> head;       // D -> K; none for num_classes 0
  std::optional<engine::Linear> head_dist;  // distilled: D -> K on the dist token

  // The fused piece, from the residual stream x [B·N, D] after the last block: the model's
  // final `norm` (when it has one; LayerNorm is per row, so for "token" only the pooled rows
  // are normalized), pooling, fc_norm and the classifier, into logits f32 [B, K] (or the
  // features [B, D] without a head). Distilled: the cls and dist rows are taken together and
  // both heads write half their output, the second as a sum post-op.
  struct Fused : FusedStep {
    dnnl::reorder take;           // the cls rows (and dist rows), or the patch rows made dense
    dnnl::memory rows_src, rows;  // its source (a view of x or of normed) and dest
    std::optional<engine::LayerNorm::Fused> norm_all, norm_pooled;  // before / after pooling
    dnnl::memory x, normed;           // f32 [B·N, D]: the stream, its norm ("avg" only)
    dnnl::pooling_forward pool;       // "avg": [B, L, D] -> [B, D]
    dnnl::memory pool_src, pool_dst;  // rows and pooled, as the pooling's NHWC images
    // "seq": the scores [B·L, 1] of the rows, their softmax over each image's L rows, and the
    // weighted sum [B, 1, L]·[B, L, D] into pooled.
    std::optional<engine::Linear::Fused> score;
    dnnl::softmax_v2_forward softmax;
    dnnl::matmul weighted_sum;
    dnnl::memory scores, weights;                                    // f32 [B, L] each
    dnnl::memory rows_flat, scores_flat, weights_rows, pooled_rows;  // views: [B·L, D], [B·L, 1],
                                                                     // [B, 1, L], [B, 1, D]
    dnnl::memory pooled, pooled_normed;  // f32 [B, D] ([B, 2, D] distilled)
    std::optional<engine::Linear::Fused> classifier, classifier_dist;
    dnnl::memory head_src, dist_src;  // the rows each head reads
    dnnl::memory logits;              // f32 [B, K]; pooled_normed without a head
    void run(dnnl::stream& s) override;
  };
  std::unique_ptr<Fused> fused(FusedBuild& f, const dnnl::memory& x, int64_t tokens,
                               const engine::LayerNorm* norm) const;

 private:
  struct Buffers {
    Tensor pooled, diff_features;  // [B, D]; [B, N, D] with only the pooled rows written
    Tensor patch_rows;             // "avg", "seq": [B, 1, L, D], the patch rows made dense
    Tensor diff_weights;           // "seq": [B, L], of the softmax's output
    Tensor diff_rows;              // "seq": [B, L, D], through the weighted sum
    Tensor flat;                   // the pooled rows [B, D] (a view)
    Tensor pooled_dist;            // distilled: [B, D] the dist rows
  };
  engine::Reorder copy_;
  engine::GlobalAvgPool2d pool_{engine::Layout::nhwc};
  engine::Softmax seq_softmax_;
  engine::BatchedMatmul seq_sum_;
  engine::Add seq_diff_sum_;
  engine::Add sum_heads_;
  engine::Eltwise halve_{dnnl::algorithm::eltwise_linear, 0.5f};
  engine::PlanCache<Buffers> buffers_;
};

}  // namespace vit
