// VitInference: the evaluation-mode forward of a VisionTransformer, fused for speed. It computes
// what VisionTransformer::forward computes after train(false), up to rounding, from the weights
// in the same ParameterStore (tests/test_reference.cpp checks both against torchvision), but:
//  - bias, GELU and each residual add run as post-ops of their matmul, so no extra pass over
//    the activations;
//  - matmul weights are packed into the layout the kernel asks for (format_tag::any) and
//    repacked only when the store's version changes, one copy for every batch size and chunk;
//    the training path must read them through a transposed view, which costs the kernel a
//    copy on every call (2× at batch 1);
//  - q, k and v go to three dense slabs, so attention reads the heads as views in the layouts
//    of oneDNN's brgemm kernel, a few images at a time (their scores stay in L2);
//  - all blocks share one set of primitives and one set of activation buffers, and a batch runs
//    in chunks of a few images whose activations stay in the cache (8 for ViT-Ti/16 in bf16:
//    about 8 MB), where the layer path keeps every block's activations for the whole batch;
//  - with Precision::bf16 the matmul operands are bf16 (AVX512_BF16) while the residual
//    stream, LayerNorm, the softmax input and the head stay f32, as under torch.autocast.
#pragma once

#include <optional>
#include <vector>

#include "engine/parameter_store.hpp"
#include "engine/plan.hpp"
#include "engine/precision.hpp"
#include "vit/config.hpp"

namespace vit {

using engine::Context;
using engine::Tensor;

class VitInference {
 public:
  VitInference(const VitConfig& config, const engine::ParameterStore& store,
               engine::Precision precision = engine::Precision::f32);

  // patches [B, L, C·P·P] (f32) -> logits [B, K], valid until the next call.
  const Tensor& forward(Context& ctx, const Tensor& patches);

  // Images per pass through the network: a batch runs in chunks of this many (and a smaller
  // last one), so that one chunk's activations stay in the cache from block to block.
  int64_t chunk_images() const;

  // Bytes of packed weights held, for every batch size seen so far.
  int64_t packed_bytes() const;

  const engine::Precision precision;

 private:
  // The weights one block's matmuls read, packed for the primitives' layouts.
  struct BlockWeights {
    dnnl::memory qkv[3];  // q, k, v: the thirds of attn.qkv.weight, q's scaled by 1/√d
    dnnl::memory q_bias;  // f32 [1, D]: q's bias, scaled the same
    dnnl::memory proj, fc1, fc2;
  };
  // Every matmul weight packed once and shared by all the plans whose primitives ask for the
  // same layouts: oneDNN 2.6 picks one layout whatever the number of rows, so a batch that
  // runs as chunks and a smaller remainder holds one copy, not two (23 MB for ViT-Ti in f32).
  struct PackedWeights {
    std::vector<dnnl::memory::desc> layouts;  // patch, qkv, proj, fc1, fc2, head
    std::optional<uint64_t> version;          // the store's version they were packed from
    dnnl::memory patch_weight, head_weight;
    std::vector<BlockWeights> blocks;
  };
  // The store's f32 tensors a block reads as they are: biases and LayerNorm scale and shift.
  struct BlockParams {
    dnnl::memory norm1_weight, norm1_bias, qkv_bias[3], proj_bias;  // qkv_bias[0]: the packed q's
    dnnl::memory norm2_weight, norm2_bias, fc1_bias, fc2_bias;
  };
  struct Plan {
    int64_t batch = 0;
    std::optional<uint64_t> cls_table_version;  // the store's version cls_table was filled from

    // Activations, M = B·N token rows; "low" is the matmul operand type (f32 or bf16).
    dnnl::memory input;         // f32 [B·L, C·P·P], the caller's patches
    dnnl::memory input_low;     // low [B·L, C·P·P] (bf16 only)
    dnnl::memory x;             // f32 [M, D]: the residual stream, updated in place
    dnnl::memory normed;        // f32 [M, D]: LayerNorm output
    dnnl::memory normed_low;    // low [M, D] (bf16 only; = normed in f32)
    dnnl::memory patch_out;     // f32 [B·L, D] over normed: the patch embedding
    dnnl::memory patch_tokens;  // the same as [B, L, D], pos_embed added in place
    dnnl::memory x_patch_rows;  // f32 [B, L, D] view of x's rows 1..N-1 of each image
    dnnl::memory x_cls_rows;    // f32 [B, D] view of x's row 0 of each image
    dnnl::memory qkv;           // low [3, M, D]: q, k, v one after the other
    dnnl::memory qkv_parts[3];  // its three [M, D] slabs
    // Attention runs per group of G images; per group, views of qkv:
    std::vector<dnnl::memory> q, k_t, v;      // [G, H, N, d], [G, H, d, N], [G, H, N, d]
    std::vector<dnnl::memory> context_heads;  // [G, H, N, d] views of context: heads in place
    dnnl::memory scores;                      // f32 [G, H, N, N]
    dnnl::memory probs;            // low [G, H, N, N] (= scores in f32: softmax in place)
    dnnl::memory context;          // low [M, D]: heads merged
    dnnl::memory hidden;           // low [M, F]
    dnnl::memory cls, cls_normed;  // f32 [B, D]
    Tensor logits;                 // [B, K]

    // Parameters: the packed weights (owned by VitInference), and views of the store.
    PackedWeights* weights = nullptr;
    dnnl::memory patch_bias, pos_rows;  // pos_rows: pos_embed[1:] [1, L, D]
    dnnl::memory cls_table;             // f32 [B, D]: cls_token + pos_embed[0]
    dnnl::memory zero_qkv_bias;         // f32 [1, D], when qkv_bias is false
    std::vector<BlockParams> params;
    dnnl::memory norm_weight, norm_bias, head_bias;

    // Primitives, built once for this batch size.
    dnnl::reorder input_to_low, normed_to_low, place_patches, place_cls, take_cls;
    dnnl::binary add_pos;
    dnnl::matmul patch_embed, qkv_mm, scores_mm, context_mm, proj_mm, fc1_mm, fc2_mm, head_mm;
    dnnl::softmax_v2_forward softmax;
    dnnl::layer_normalization_forward norm_tokens, norm_cls;
  };

  std::unique_ptr<Plan> build(Context& ctx, int64_t batch);
  // The packed set for these layouts: an existing one, or a new one, not yet filled.
  PackedWeights& packed_weights(Context& ctx, const std::vector<dnnl::memory::desc>& layouts);
  void pack(Context& ctx, PackedWeights& w) const;
  void fill_cls_table(Plan& p) const;
  // One pass of p.batch images from `patches`; the logits land in p.logits.
  void run(Context& ctx, Plan& p, float* patches);

  const VitConfig config_;
  const engine::ParameterStore& store_;
  engine::PlanCache<Plan> plans_;
  std::vector<std::unique_ptr<PackedWeights>> packed_;
  Tensor logits_;  // [B, K] gathered from the chunks
};

}  // namespace vit
