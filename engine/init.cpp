#include "engine/init.hpp"

#include <algorithm>
#include <random>

#include "engine/error.hpp"

namespace engine {

void fill(const Tensor& t, float value) {
  std::fill_n(t.data(), t.numel(), value);
}

void uniform(Context& ctx, const Tensor& t, float low, float high) {
  std::uniform_real_distribution<float> dist(low, high);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = dist(ctx.rng);
}

void normal(Context& ctx, const Tensor& t, float mean, float std) {
  std::normal_distribution<float> dist(mean, std);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = dist(ctx.rng);
}

void trunc_normal(Context& ctx, const Tensor& t, float mean, float std, float low, float high) {
  require(low < high && std > 0.0f && low < mean + 3 * std && high > mean - 3 * std,
          "trunc_normal: the interval must hold a useful part of the distribution");
  std::normal_distribution<float> dist(mean, std);
  for (int64_t i = 0; i < t.numel(); ++i) {
    float x;
    do x = dist(ctx.rng);
    while (x < low || x > high);
    t[i] = x;
  }
}

}  // namespace engine
