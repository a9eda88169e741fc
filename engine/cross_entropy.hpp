// Softmax cross-entropy averaged over the batch (torch.nn.CrossEntropyLoss), with label
// smoothing and soft targets (mixup, cutmix): the smoothed target is
// t' = (1 - ε)·t + ε/K, and loss = -mean_b Σ_k t'_bk · log_softmax(z_b)_k.
#pragma once

#include <vector>

#include "engine/plan.hpp"

namespace engine {

class SoftmaxCrossEntropy {
 public:
  explicit SoftmaxCrossEntropy(float label_smoothing = 0.0f);

  // logits [B, K], labels B class indices in [0, K). Returns the mean loss.
  float forward(Context& ctx, const Tensor& logits, const std::vector<int>& labels);
  // logits [B, K], targets [B, K] rows of probabilities (each summing to 1).
  float forward(Context& ctx, const Tensor& logits, const Tensor& targets);
  // diff_logits [B, K] = (softmax(z) - t') / B.
  const Tensor& backward(Context& ctx);

  const Tensor& log_probs() const { return plans_.current("SoftmaxCrossEntropy").log_probs; }

  float label_smoothing;

 private:
  struct Plan {
    dnnl::logsoftmax_forward fwd;
    dnnl::logsoftmax_backward bwd;
    dnnl::memory logits, log_probs_mem, diff_log_probs_mem, diff_logits_mem;
    Tensor log_probs, targets, diff_log_probs, diff_logits;
  };
  Plan& prepare(Context& ctx, const Tensor& logits);
  float finish(Context& ctx, Plan& p);
  PlanCache<Plan> plans_;
};

}  // namespace engine
