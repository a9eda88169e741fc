// Parameter initialisation from the context's seeded generator.
#pragma once

#include "engine/context.hpp"
#include "engine/tensor.hpp"

namespace engine {

void fill(const Tensor& t, float value);
void uniform(Context& ctx, const Tensor& t, float low, float high);
void normal(Context& ctx, const Tensor& t, float mean, float std);
// Normal(mean, std) redrawn until inside [low, high] (timm's trunc_normal_, whose bounds are
// absolute values: trunc_normal(std=0.02) keeps the default bounds -2 and 2).
void trunc_normal(Context& ctx, const Tensor& t, float mean, float std, float low = -2.0f,
                  float high = 2.0f);

}  // namespace engine
