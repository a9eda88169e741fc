// The seam for attention variants. A Block holds an Attention: the token mixer
// x [B, N, D] -> [B, N, D], its training forward and backward and its fused-inference piece side
// by side. A variant is one file deriving from Attention plus one registration line (the table
// in attention.cpp, or register_attention() from anywhere before a model is built, as a test
// does); VitConfig::attn_layer names it, so the variant trains, runs in the fused path and is
// written to and read from model files by that name.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "vit/module.hpp"

namespace vit {

// What an attention's fused piece reads and writes: rows of B images of N tokens each.
struct FusedTokens {
  int64_t images, tokens;  // B, N
  dnnl::memory normed;     // [B·N, D] the block's LayerNorm output, in the matmul operand type
  dnnl::memory x;          // f32 [B·N, D] the residual stream, to which the piece adds its output
  // The block's LayerScale γ [D] (or nullptr): the piece adds γ · attention(normed), folded into
  // its output projection.
  const engine::Parameter* out_scale = nullptr;
  // Where to copy the attention probabilities, f32 [B, H, N, N], or empty: not asked for (and
  // then nothing is copied, nor built).
  dnnl::memory probs_tap;
};

class Attention {
 public:
  virtual ~Attention() = default;
  virtual const Tensor& forward(Context& ctx, const Tensor& x) = 0;  // [B, N, D] -> [B, N, D]
  virtual const Tensor& backward(Context& ctx, const Tensor& diff_dst) = 0;  // -> diff of x
  virtual void train(bool on) = 0;                                           // dropout
  // Before training step `step` (0-based, the same after a resume); Performer redraws here.
  virtual void begin_step(int64_t step) { (void)step; }
  virtual void set_precision(engine::Precision p) = 0;
  virtual void init_weights(Context& ctx) = 0;  // timm's init
  // Takes every gradient buffer of its backward from Context::shared_buffer under `slot`:
  // the blocks' backward passes never overlap, so they can share them.
  virtual void share_gradients(const std::string& slot) = 0;
  // The attention probabilities of the last forward, [B, H, N, N] (each query's weights over
  // the tokens), for explaining a prediction (attention maps, rollout). A variant that has no
  // such matrix throws engine::Error saying so, in one line.
  virtual const Tensor& probabilities(Context& ctx);
  // Evaluation mode, fused: x += attention(normed), for the batch size of `f`.
  virtual std::unique_ptr<FusedStep> fused(FusedBuild& f, const FusedTokens& t) const = 0;
};

// Builds a variant whose parameters are named under `prefix` (e.g. "blocks.3.attn").
using AttentionFactory = std::function<std::unique_ptr<Attention>(
    ParameterStore& store, const std::string& prefix, const VitConfig& config)>;

// What a variant tells the config besides how to build it, either of which may be empty:
// `check` throws engine::Error naming a setting it cannot take (one line, the flag named);
// `flops` counts one block's token mixer per image, multiply-adds ×2, projections included
// (empty: the dense attention's count).
struct AttentionTraits {
  std::function<void(const VitConfig&)> check;
  std::function<double(const VitConfig&)> flops;
};

// Adds a variant under `name`; false, and nothing changed, when the name is taken.
bool register_attention(const std::string& name, AttentionFactory factory,
                        AttentionTraits traits = {});
bool attention_registered(const std::string& name);
void check_attention(const VitConfig& config);    // the named variant's check, if any
double attention_flops(const VitConfig& config);  // per image, one block
std::string attention_names();                    // "attention, ..." for error messages
// The variant config.attn_layer names; throws engine::Error listing the known ones.
std::unique_ptr<Attention> make_attention(ParameterStore& store, const std::string& prefix,
                                          const VitConfig& config);

}  // namespace vit
