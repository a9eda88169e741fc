// The architecture-free part of training and evaluation: one optimizer step on a batch, the
// optimizer choice, and classification metrics (loss, top-1, top-5, confusion matrix).
#pragma once

#include <string>
#include <vector>

#include "engine/cross_entropy.hpp"
#include "engine/model.hpp"
#include "engine/optim.hpp"

namespace engine {

struct Optimizer {
  std::string name = "adamw";  // or "sgd"
  AdamW adamw;
  Sgd sgd;
  float clip_grad = 0.0f;  // global gradient-norm limit; 0: no clipping

  void update(ParameterStore& store, float lr);  // gradients already clipped by train_step
  int64_t steps() const { return adamw.step; }   // SGD counts its steps here too
};

// Classification metrics accumulated over batches.
struct Metrics {
  explicit Metrics(int64_t num_classes = 0);
  void add(const Tensor& logits, const std::vector<int>& labels, float mean_loss);

  int64_t num_classes, count = 0, top1 = 0, top5 = 0;
  double loss_sum = 0.0;
  std::vector<int64_t> confusion;  // [true class][predicted class], row-major K×K

  double loss() const { return count ? loss_sum / double(count) : 0.0; }
  double accuracy() const { return count ? double(top1) / double(count) : 0.0; }
  double top5_accuracy() const { return count ? double(top5) / double(count) : 0.0; }
  std::vector<double> per_class_accuracy() const;
};

// forward, loss (soft `targets` when given, else `labels`), backward, clip, update.
// Throws Error naming the step when the loss or the gradient norm is not finite, before the
// parameters are touched. Returns the batch's mean loss.
float train_step(Context& ctx, Model& model, SoftmaxCrossEntropy& loss, Optimizer& optimizer,
                 const Tensor& input, const std::vector<int>& labels, const Tensor* targets,
                 float lr, Metrics* metrics);

}  // namespace engine
