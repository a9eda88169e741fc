// timm's PatchEmbed. Input is the image already cut into patches by datasets/ ([B, L, C·P·P],
// each patch flattened in (channel, row, column) order), so the embedding is a matmul with
// timm's [D, C, P, P] convolution weight: the same function as its stride-P convolution.
#pragma once

#include "vit/module.hpp"

namespace vit {

// patches [B, L, C·P·P] -> [B, L, D].
struct PatchEmbed {
  PatchEmbed(ParameterStore& store, const VitConfig& c);
  const Tensor& forward(Context& ctx, const Tensor& patches) { return proj.forward(ctx, patches); }
  void backward(Context& ctx, const Tensor& diff_dst) { proj.backward(ctx, diff_dst); }
  void set_precision(engine::Precision p) { proj.set_precision(p); }
  void init_weights(Context& ctx) { proj.reset_parameters(ctx); }  // torch's conv default

  engine::Linear proj;  // patch_embed.proj, weight [D, C, P, P]; no bias with pre_norm

  // The fused piece: f32 patches, their handle set before each run, to f32 [B·L, D].
  struct Fused : FusedStep {
    dnnl::memory input;      // f32 [B·L, C·P·P], the caller's
    dnnl::memory input_low;  // its bf16 copy (= input in f32)
    dnnl::reorder to_low;    // bf16 only
    engine::Linear::Fused proj;
    dnnl::memory out;
    void run(dnnl::stream& s) override {
      if (to_low) to_low.execute(s, input, input_low);
      proj.run(s, input_low, out);
    }
  };
  std::unique_ptr<Fused> fused(FusedBuild& f, const dnnl::memory& out) const;
};

}  // namespace vit
