// Learning rate per optimizer step: linear warmup from warmup_lr to base_lr over
// warmup_steps, then a half cosine from base_lr down to min_lr at total_steps (timm's
// CosineLRScheduler with per-step updates, no restarts). Step 0 is the first update.
#pragma once

#include <cstdint>

namespace engine {

struct WarmupCosineSchedule {
  float base_lr = 1e-3f, min_lr = 1e-5f, warmup_lr = 1e-6f;
  int64_t warmup_steps = 0, total_steps = 1;

  float at(int64_t step) const;
};

}  // namespace engine
