#include "engine/optim.hpp"

#include <algorithm>
#include <cmath>

#include "engine/error.hpp"

namespace engine {

void AdamW::update(ParameterStore& store, float lr) {
  ++step;
  const float bc1 = 1.0f - std::pow(beta1, static_cast<float>(step));
  const float bc2 = 1.0f - std::pow(beta2, static_cast<float>(step));
  const float inv_sqrt_bc2 = 1.0f / std::sqrt(bc2);
  store.mark_changed();
  float* __restrict w = store.values();
  const float* __restrict g = store.grads();
  float* __restrict m = store.adam_m();
  float* __restrict v = store.adam_v();
  for (const Parameter& p : store.parameters()) {
    if (!p.trainable) continue;
    const int64_t begin = p.offset, end = p.offset + p.value.numel();
    const float plr = lr * p.lr_scale, step_size = plr / bc1;  // torch: the group's lr
    const float decay = p.decay ? 1.0f - plr * weight_decay : 1.0f;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = begin; i < end; ++i) {
      m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
      v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
      w[i] = w[i] * decay - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
    }
  }
}

void Sgd::update(ParameterStore& store, float lr) {
  store.mark_changed();
  float* __restrict w = store.values();
  const float* __restrict g = store.grads();
  float* __restrict buf = store.adam_m();
  for (const Parameter& p : store.parameters()) {
    if (!p.trainable) continue;
    const int64_t begin = p.offset, end = p.offset + p.value.numel();
    const float wd = p.decay ? weight_decay : 0.0f, plr = lr * p.lr_scale;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = begin; i < end; ++i) {
      const float grad = g[i] + wd * w[i];
      buf[i] = momentum * buf[i] + grad;
      w[i] -= plr * (nesterov ? grad + momentum * buf[i] : buf[i]);
    }
  }
}

ModelEma::ModelEma(const dnnl::engine& eng, const ParameterStore& store, float d)
    : decay(d), shadow(eng, {store.size()}) {
  require(d >= 0.0f && d < 1.0f, "--model-ema-decay must be in [0, 1), got " + std::to_string(d));
  std::copy_n(store.values(), store.size(), shadow.data());
}

float ModelEma::decay_at(int64_t step) const {
  return std::min(decay, float(1 + step) / float(10 + step));
}

void ModelEma::update(const ParameterStore& store, int64_t step) {
  const float d = decay_at(step);
  const float* __restrict w = store.values();
  float* __restrict e = shadow.data();
  const int64_t n = store.size();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) e[i] = d * e[i] + (1.0f - d) * w[i];
}

void ModelEma::swap(ParameterStore& store) {
  std::swap_ranges(shadow.data(), shadow.data() + store.size(), store.values());
  store.mark_changed();
}

float clip_grad_norm(ParameterStore& store, float max_norm) {
  float* g = store.grads();
  double sum = 0.0;
  for (const Parameter& p : store.parameters()) {
    if (!p.trainable) continue;
    const int64_t begin = p.offset, end = p.offset + p.value.numel();
#pragma omp parallel for simd reduction(+ : sum) schedule(static)
    for (int64_t i = begin; i < end; ++i) sum += static_cast<double>(g[i]) * g[i];
  }
  const float norm = static_cast<float>(std::sqrt(sum));
  if (max_norm > 0.0f && norm > max_norm) {
    const float scale = max_norm / (norm + 1e-6f);
    for (const Parameter& p : store.parameters()) {
      if (!p.trainable) continue;
      const int64_t begin = p.offset, end = p.offset + p.value.numel();
#pragma omp parallel for simd schedule(static)
      for (int64_t i = begin; i < end; ++i) g[i] *= scale;
    }
  }
  return norm;
}

}  // namespace engine
