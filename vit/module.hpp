// What every ViT module file shares: the engine's names, and timm's initialisation of a Linear.
#pragma once

#include "engine/fused.hpp"
#include "engine/init.hpp"
#include "engine/linear.hpp"
#include "vit/config.hpp"

namespace vit {

using engine::Context;
using engine::Dims;
using engine::FusedBuild;
using engine::FusedStep;
using engine::ParameterStore;
using engine::Tensor;
using engine::View;

// timm's init of the ViT's Linear layers: weight trunc_normal(std 0.02), bias zero.
inline void init_linear(Context& ctx, engine::Linear& l) {
  engine::trunc_normal(ctx, l.weight->value, 0.0f, 0.02f);
  if (l.bias) engine::fill(l.bias->value, 0.0f);
}

}  // namespace vit
