// timm's PatchEmbed, or a convolutional stem in its place (VitConfig::stem_channels).
//
// PatchEmbed: the input is the image already cut into patches by datasets/ ([B, L, C·P·P], each
// patch flattened in (channel, row, column) order), so the embedding is a matmul with timm's
// [D, C, P, P] convolution weight: the same function as its stride-P convolution.
//
// The stem (timm's ConvStem in HybridEmbed, proj=False): the input is the whole image
// [B, C, H, W]; each stage is conv 3×3 (no bias) + BatchNorm + ReLU on channels-last tensors,
// and the last, 1×1, convolution is a matmul over the channels of the final [B, h·w, C] map.
#pragma once

#include <memory>
#include <vector>

#include "engine/batch_norm.hpp"
#include "engine/conv2d.hpp"
#include "engine/reorder.hpp"
#include "vit/module.hpp"

namespace vit {

// One stage of the stem: patch_embed.backbone.{i}.conv and .bn, the ReLU fused into the norm.
struct StemStage {
  StemStage(ParameterStore& store, const std::string& name, int64_t in, int64_t out,
            int64_t stride);
  engine::Conv2d conv;
  engine::BatchNorm2d bn;
};

// patches [B, L, C·P·P] (or images [B, C, H, W] with a stem) -> [B, L, D].
struct PatchEmbed {
  PatchEmbed(ParameterStore& store, const VitConfig& c);
  const Tensor& forward(Context& ctx, const Tensor& input);
  void backward(Context& ctx, const Tensor& diff_dst);
  void train(bool on);                                                // the stem's batch statistics
  void set_precision(engine::Precision p) { proj.set_precision(p); }  // the stem's convs: f32
  void init_weights(Context& ctx);  // torch's conv default, BatchNorm 1 and 0 (timm's)

  const VitConfig config;
  std::vector<std::unique_ptr<StemStage>> backbone;  // empty: timm's PatchEmbed
  // patch_embed.proj, weight [D, C, P, P], no bias with pre_norm; with a stem its last conv
  // patch_embed.backbone.{n}.conv, weight [D, C_n, 1, 1] with bias.
  engine::Linear proj;

  // The fused piece: the f32 input, its handle set before each run, to f32 [B·L, D]. The stem
  // runs in f32, each stage one convolution whose weights and bias have the evaluation-mode
  // BatchNorm folded in, the ReLU a post-op.
  struct Fused : FusedStep {
    dnnl::memory input;      // f32, the caller's: patches [B·L, C·P·P] or images [B, C, H, W]
    dnnl::memory input_low;  // the matmul's input: a bf16 copy of the patches, or the stem's map
    dnnl::reorder to_low;    // bf16 patches only
    dnnl::reorder to_nhwc;   // a stem on more than one channel
    dnnl::memory input_nhwc;
    struct Stage {
      dnnl::convolution_forward conv;
      dnnl::memory weight, bias, dst;
    };
    std::vector<Stage> stages;
    engine::Linear::Fused proj;
    dnnl::memory out;
    void run(dnnl::stream& s) override;
  };
  std::unique_ptr<Fused> fused(FusedBuild& f, const dnnl::memory& out) const;

 private:
  engine::ToNhwc to_nhwc_;  // the stem's input
};

}  // namespace vit
