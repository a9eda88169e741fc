// VitInference: the evaluation-mode forward of a VisionTransformer, fused for speed. It computes
// what VisionTransformer::forward computes after train(false), up to rounding, from the same
// parameters (tests/test_reference.cpp checks both against torchvision), through the modules'
// own fused pieces (VisionTransformer::fused and the pieces of its modules), which
//  - run bias, GELU and each residual add as post-ops of their matmul, so no extra pass over
//    the activations;
//  - read matmul weights packed into the layout the kernel asks for (format_tag::any), one copy
//    for every batch size and chunk, repacked only when the store's version changes;
//  - share one set of activation buffers across the blocks.
// This driver only chunks the batch, so that one chunk's activations stay in the cache from
// block to block (8 images for ViT-Ti/16 in bf16: about 8 MB; the layer path keeps every
// block's activations for the whole batch), and owns the packed weights and the plans.
// With Precision::bf16 the matmul operands are bf16 (AVX512_BF16) while the residual stream,
// LayerNorm, the softmax input and the head stay f32, as under torch.autocast.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/fused.hpp"
#include "engine/plan.hpp"
#include "vit/vision_transformer.hpp"

namespace vit {

class VitInference {
 public:
  // `model` and its `store` must outlive this object; their weights are read on every call.
  VitInference(const VisionTransformer& model, const engine::ParameterStore& store,
               engine::Precision precision = engine::Precision::f32);

  // patches [B, L, C·P·P] (f32) -> logits [B, K], valid until the next call.
  const Tensor& forward(Context& ctx, const Tensor& patches);

  // Images per pass through the network: a batch runs in chunks of this many (and a smaller
  // last one), so that one chunk's activations stay in the cache from block to block.
  int64_t chunk_images() const;

  // The images a plan holds for a pass of n: n up to 8, then n rounded up to a quarter of its
  // octave (10, 12, 14, 16, 20, 24, ..., 56, 64, 80, ...). A server's batches come in every
  // size; a plan per size kept its primitives' JIT code and scratchpads for each (measured:
  // RSS 67 -> 139 MB over the sizes 1..64 of the bundled ViT), so a pass is padded to the
  // next of these with zero images instead, at most 25 % more rows, 20 plans up to 64.
  static int64_t plan_images(int64_t n);
  // Plans built so far, one per plan_images() size seen.
  size_t plans() const { return plans_.size(); }

  // From the next forward on, also copy out the attention probabilities of these blocks
  // (exact attention only; empty: none, and the plans are as if never asked).
  void tap_attention(std::vector<int64_t> blocks);
  // Block `block`'s probabilities [B, H, N, N] from the last forward; it must be tapped.
  const Tensor& attention_probabilities(int64_t block) const;

  // Bytes of packed weights held, for every batch size seen so far.
  int64_t packed_bytes() const { return packed_.weight_bytes(); }

  const engine::Precision precision;

 private:
  struct Plan {
    std::map<std::string, dnnl::memory> buffers;  // the activations, shared by the modules
    std::vector<std::pair<std::string, dnnl::matmul>> matmuls;  // shared by the blocks
    std::unique_ptr<VisionTransformer::Fused> net;
  };

  const VisionTransformer& model_;
  engine::PackedWeights packed_;
  // The activations' storage, by slot, for `chunk_images()` images: every plan's buffers are
  // views over it. Declared before the plans, which point into it.
  std::map<std::string, dnnl::memory> activations_;
  engine::PlanCache<Plan> plans_;  // by images per pass
  Tensor staged_;                  // a chunk padded to its plan's size; zero past its images
  Tensor logits_;                  // [B, K] gathered from the chunks
  std::vector<int64_t> taps_;
  std::map<int64_t, Tensor> probs_;  // by tapped block, [B, H, N, N] gathered from the chunks
};

}  // namespace vit
