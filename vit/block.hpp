// timm's pre-norm Block: x = x + drop_path(ls1(attn(norm1(x)))); x = x + drop_path(ls2(mlp(
// norm2(x)))), ls1 and ls2 LayerScales when init_values is set. The attention is whichever
// variant the config names (vit/attention.hpp).
#pragma once

#include <optional>

#include "engine/layer_norm.hpp"
#include "engine/layer_scale.hpp"
#include "vit/attention.hpp"
#include "vit/mlp.hpp"

namespace vit {

struct Block {
  Block(ParameterStore& store, const std::string& prefix, const VitConfig& c, float drop_path);
  const Tensor& forward(Context& ctx, const Tensor& x);  // [B, N, D] -> [B, N, D]
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);
  void train(bool on);
  void begin_step(int64_t step) { attn->begin_step(step); }
  void set_precision(engine::Precision p);
  void init_weights(Context& ctx);

  engine::LayerNorm norm1;
  std::unique_ptr<Attention> attn;
  std::optional<engine::LayerScale> ls1;
  engine::DropPath drop_path1;
  engine::Add residual1;
  engine::LayerNorm norm2;
  Mlp mlp;
  std::optional<engine::LayerScale> ls2;
  engine::DropPath drop_path2;
  engine::Add residual2;
  engine::Add grad_sum1, grad_sum2;  // where x and x1 fan out, their gradients add

  // The fused piece, on the residual stream x [B·N, D] in place; the LayerScales are folded
  // into the branches' output projections. With bf16 the LayerNorm
  // output is converted for the matmuls (oneDNN 2.6 has no LayerNorm writing bf16 from f32);
  // the stream, the norms and the softmax input stay f32, as under torch.autocast.
  struct Fused : FusedStep {
    engine::LayerNorm::Fused norm1, norm2;
    dnnl::reorder to_low;                // bf16 only
    dnnl::memory x, normed, normed_low;  // f32, f32, low (= normed in f32) [B·N, D]
    std::unique_ptr<FusedStep> attn, mlp;
    void run(dnnl::stream& s) override;
  };
  // probs_tap: see FusedTokens.
  std::unique_ptr<FusedStep> fused(FusedBuild& f, int64_t tokens,
                                   const dnnl::memory& probs_tap = {}) const;
};

}  // namespace vit
