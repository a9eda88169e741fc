#include "vit/attention_norm.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace vit {

float score_scale(const VitConfig& c) {
  const double scale = c.attn_score == "dot" ? 1.0 / std::sqrt(double(c.head_dim())) : 1.0;
  return float(c.attn_norm == "relu" ? scale / double(c.keys_per_query()) : scale);
}

float score_shift(const VitConfig& c) {
  return c.attn_norm == "sigmoid" ? -float(std::log(double(c.keys_per_query()))) : 0.0f;
}

std::vector<float> score_bias(const VitConfig& c) {
  if (c.attn_norm != "sigmoid" && c.attn_window == 0) return {};
  const float allowed = score_shift(c);
  // Linformer's keys are projections, not positions: the bias spans its K keys.
  const int64_t Nq = c.num_tokens(), Nk = c.attn_lowrank > 0 ? c.attn_lowrank : Nq;
  std::vector<float> bias(static_cast<size_t>(Nq * Nk), allowed);
  if (c.attn_window == 0) return bias;
  const int64_t P = c.num_prefix_tokens(), G = c.grid(), R = c.attn_window;
  for (int64_t i = P; i < Nq; ++i) {  // prefix queries attend to everything
    const int64_t r = (i - P) / G, col = (i - P) % G;
    for (int64_t j = P; j < Nk; ++j) {
      const int64_t r2 = (j - P) / G, c2 = (j - P) % G;
      if (std::max(std::abs(r - r2), std::abs(col - c2)) > R) bias[size_t(i * Nk + j)] = kMasked;
    }
  }
  return bias;
}

AttentionNorm::AttentionNorm(const std::string& kind) : kind(kind) {}

const Tensor& AttentionNorm::forward(Context& ctx, const Tensor& scores) {
  if (kind == "relu") return relu.forward(ctx, scores);
  if (kind == "sigmoid") return sigmoid.forward(ctx, scores);
  return softmax.forward(ctx, scores);
}

const Tensor& AttentionNorm::backward(Context& ctx, const Tensor& diff_probs) {
  if (kind == "relu") return relu.backward(ctx, diff_probs);
  if (kind == "sigmoid") return sigmoid.backward(ctx, diff_probs);
  return softmax.backward(ctx, diff_probs);
}

void AttentionNorm::share_gradients(const std::string& slot) {
  softmax.grad_slot = relu.grad_slot = sigmoid.grad_slot = slot;
}

void AttentionNorm::append_post_ops(dnnl::post_ops& ops, float shift) const {
  if (kind == "relu") ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  if (kind == "sigmoid") {
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_linear, 1.0f, shift);
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_logistic, 0.0f, 0.0f);
  }
}

dnnl::eltwise_forward AttentionNorm::eltwise(const dnnl::engine& eng,
                                             const dnnl::memory::desc& md) const {
  if (kind == "softmax") return {};
  const dnnl::algorithm alg =
      kind == "relu" ? dnnl::algorithm::eltwise_relu : dnnl::algorithm::eltwise_logistic;
  return dnnl::eltwise_forward({{dnnl::prop_kind::forward_inference, alg, md, 0.0f, 0.0f}, eng});
}

}  // namespace vit
