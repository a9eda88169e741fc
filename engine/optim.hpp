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

// Global L2 norm of all trainable gradients (torch.nn.utils.clip_grad_norm_): when it exceeds
// max_norm, every gradient is scaled by max_norm / (norm + 1e-6). Returns the norm before
// clipping; max_norm <= 0 only measures.
float clip_grad_norm(ParameterStore& store, float max_norm);

}  // namespace engine
