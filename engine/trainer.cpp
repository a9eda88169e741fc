#include "engine/trainer.hpp"

#include <algorithm>
#include <cmath>

#include "engine/error.hpp"

namespace engine {

void Optimizer::update(ParameterStore& store, float lr) {
  if (name == "sgd") {
    sgd.update(store, lr);
    ++adamw.step;
  } else {
    adamw.update(store, lr);
  }
}

Metrics::Metrics(int64_t k) : num_classes(k), confusion(static_cast<size_t>(k * k), 0) {}

void Metrics::add(const Tensor& logits, const std::vector<int>& labels, float mean_loss) {
  const int64_t B = logits.dim(0), K = logits.dim(1);
  require(K == num_classes, "Metrics: logits have " + std::to_string(K) + " classes, expected " +
                                std::to_string(num_classes));
  for (int64_t b = 0; b < B; ++b) {
    const float* row = logits.data() + b * K;
    const float target = row[labels[b]];
    int64_t higher = 0, pred = 0;
    for (int64_t k = 0; k < K; ++k) {
      higher += row[k] > target;
      if (row[k] > row[pred]) pred = k;
    }
    top1 += higher == 0 && pred == labels[b];
    top5 += higher < 5;
    ++confusion[static_cast<size_t>(labels[b] * K + pred)];
  }
  count += B;
  loss_sum += double(mean_loss) * double(B);
}

std::vector<double> Metrics::per_class_accuracy() const {
  std::vector<double> acc(static_cast<size_t>(num_classes), 0.0);
  for (int64_t c = 0; c < num_classes; ++c) {
    int64_t total = 0;
    for (int64_t p = 0; p < num_classes; ++p)
      total += confusion[static_cast<size_t>(c * num_classes + p)];
    acc[c] =
        total ? double(confusion[static_cast<size_t>(c * num_classes + c)]) / double(total) : 0.0;
  }
  return acc;
}

float train_step(Context& ctx, Model& model, SoftmaxCrossEntropy& loss_fn, Optimizer& optimizer,
                 const Tensor& input, const std::vector<int>& labels, const Tensor* targets,
                 float lr, Metrics* metrics) {
  model.begin_step(optimizer.steps());
  const Tensor& logits = model.forward(ctx, input);
  const float loss =
      targets ? loss_fn.forward(ctx, logits, *targets) : loss_fn.forward(ctx, logits, labels);
  if (!std::isfinite(loss))
    throw Error("step " + std::to_string(optimizer.steps() + 1) + ": the loss is " +
                (std::isnan(loss) ? "NaN" : "infinite") + " (learning rate too high?)");
  if (metrics) metrics->add(logits, labels, loss);
  model.backward(ctx, loss_fn.backward(ctx));
  ctx.wait();
  const float norm = clip_grad_norm(model.store, optimizer.clip_grad);
  if (!std::isfinite(norm))
    throw Error("step " + std::to_string(optimizer.steps() + 1) + ": the gradients are not finite");
  optimizer.update(model.store, lr);
  return loss;
}

}  // namespace engine
