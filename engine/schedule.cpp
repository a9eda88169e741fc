#include "engine/schedule.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace engine {

float WarmupCosineSchedule::at(int64_t step) const {
  if (step < warmup_steps)
    return warmup_lr +
           (base_lr - warmup_lr) * static_cast<float>(step) / static_cast<float>(warmup_steps);
  const int64_t span = std::max<int64_t>(total_steps - warmup_steps, 1);
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(span));
  return static_cast<float>(min_lr + 0.5 * (base_lr - min_lr) *
                                         (1.0 + std::cos(std::numbers::pi * progress)));
}

}  // namespace engine
