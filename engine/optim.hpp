// Optimizers over the ParameterStore's flat buffers: one loop per parameter range, buffers
// (running statistics) and frozen parameters skipped, each parameter at lr · its lr_scale (as
// torch.optim with one parameter group per scale). Both match torch.optim on the same
// hyper-parameters.
#pragma once

#include <cstdint>

#include "engine/parameter_store.hpp"

namespace engine {

// torch.optim.AdamW: decoupled weight decay p ← p·(1 - lr·wd) on parameters whose `decay`
// flag is set, then the bias-corrected Adam step. Moments live in the store (adam_m, adam_v).
struct AdamW {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.05f;
  int64_t step = 0;  // steps taken; the next update uses step + 1 for bias correction

  void update(ParameterStore& store, float lr);
};

// torch.optim.SGD with momentum: g ← g + wd·p (coupled L2, on `decay` parameters),
// buf ← momentum·buf + g, p ← p - lr·buf (nesterov: p ← p - lr·(g + momentum·buf)).
// The momentum buffer is the store's adam_m.
struct Sgd {
  float momentum = 0.9f, weight_decay = 0.0f;
  bool nesterov = false;

  void update(ParameterStore& store, float lr);
};

// timm's ModelEmaV2: a shadow copy of every value in the store (weights and buffers such as
// BatchNorm's running statistics), after each optimizer step moved toward the weights,
// shadow ← d·shadow + (1 − d)·value, with d = min(decay, (1 + t) / (10 + t)) at step t (the
// warmup of TensorFlow's ExponentialMovingAverage, so that a short run's average does not sit
// near the random initialisation). The shadow starts as a copy of the values.
struct ModelEma {
  float decay = 0.0f;
  Tensor shadow;  // [store.size()], the flat layout of the store's values

  ModelEma(const dnnl::engine& eng, const ParameterStore& store, float decay);
  float decay_at(int64_t step) const;
  // After the optimizer's step number `step` (1-based).
  void update(const ParameterStore& store, int64_t step);
  // Exchanges the store's values with the shadow: evaluate or save the average, then swap back.
  void swap(ParameterStore& store);
};

// Global L2 norm of all trainable gradients (torch.nn.utils.clip_grad_norm_): when it exceeds
// max_norm, every gradient is scaled by max_norm / (norm + 1e-6). Returns the norm before
// clipping; max_norm <= 0 only measures.
float clip_grad_norm(ParameterStore& store, float max_norm);

}  // namespace engine
