// What turns attention scores into the weights of the values (VitConfig::attn_norm), over the
// last axis: "softmax"; "relu", relu(s)/n (Wortsman et al. 2023); "sigmoid", σ(s − log n)
// (Ramapuram et al. 2024); n the keys a query attends to (VitConfig::keys_per_query). Two parts
// of it live with the scores: relu's 1/n is in the scores' scale (relu(s)/n = relu(s/n)), and
// sigmoid's −log n in the score bias, the table added to every image's and head's scores that
// also carries a window's mask.
#pragma once

#include <vector>

#include "engine/binary.hpp"
#include "engine/eltwise.hpp"
#include "engine/softmax.hpp"
#include "vit/module.hpp"

namespace vit {

// The factor on q·kᵀ (dot scores) or on wᵀ tanh(·) (additive): 1/√d for dot, and 1/n for relu.
float score_scale(const VitConfig& c);

// What is added to every score a query may use: σ's −log n, else 0.
float score_shift(const VitConfig& c);

// What is added to the scores [Nq, Nk] of every image and head, or empty when nothing is:
// 0 or −log n where a query may attend to a key, kMasked where it may not (attn_window).
std::vector<float> score_bias(const VitConfig& c);
constexpr float kMasked = -1e30f;  // exp, relu and σ of it are 0, and no sum overflows

class AttentionNorm {
 public:
  explicit AttentionNorm(const std::string& kind);
  const Tensor& forward(Context& ctx, const Tensor& scores);  // [..., Nk], any leading axes
  const Tensor& backward(Context& ctx, const Tensor& diff_probs);
  void share_gradients(const std::string& slot);

  std::string kind;
  engine::Softmax softmax;
  engine::Relu relu;
  engine::Eltwise sigmoid{dnnl::algorithm::eltwise_logistic};

  // Fused: relu and σ become post-ops of the scores matmul (σ's shift, score_shift, as a
  // linear post-op before it); softmax stays a primitive of its own, run by the caller
  // (needs_softmax()).
  void append_post_ops(dnnl::post_ops& ops, float shift) const;
  // Or, after a mask was added to f32 scores `md`, relu or σ in place (the mask carries σ's
  // −log n); an empty primitive for softmax.
  dnnl::eltwise_forward eltwise(const dnnl::engine& eng, const dnnl::memory::desc& md) const;
  bool needs_softmax() const { return kind == "softmax"; }
};

}  // namespace vit
