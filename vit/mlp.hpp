// timm's Mlp: fc1, the activation (GELU; act_layer), dropout, fc2, dropout. [B, N, D] -> [B, N, D]
// through F hidden features.
#pragma once

#include "engine/binary.hpp"
#include "engine/eltwise.hpp"
#include "vit/attention.hpp"

namespace vit {

struct Mlp {
  Mlp(ParameterStore& store, const std::string& prefix, const VitConfig& c);
  const Tensor& forward(Context& ctx, const Tensor& x);
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);
  void train(bool on) { drop1.training = drop2.training = on; }
  void set_precision(engine::Precision p);
  void init_weights(Context& ctx);
  void share_gradients(const std::string& slot);

  engine::Linear fc1;  // D -> F
  dnnl::algorithm act_algorithm;
  float act_alpha;
  engine::Eltwise act;
  engine::Dropout drop1;
  engine::Linear fc2;  // F -> D
  engine::Dropout drop2;

  // The fused piece: x += fc2(act(fc1(normed))), the activation a post-op of fc1, the residual add
  // a sum post-op of fc2 (about 10 % faster fc2 than a binary add from a second buffer).
  struct Fused : FusedStep {
    engine::Linear::Fused fc1, fc2;
    dnnl::memory normed, hidden, x;  // low [M, D], low [M, F], f32 [M, D]
    void run(dnnl::stream& s) override {
      fc1.run(s, normed, hidden);
      fc2.run(s, hidden, x);
    }
  };
  std::unique_ptr<FusedStep> fused(FusedBuild& f, const FusedTokens& t) const;
};

}  // namespace vit
