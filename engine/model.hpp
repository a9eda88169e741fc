// What training and evaluation need of a network, whatever its architecture: forward to
// logits, backward from their gradient, a mode switch, and its parameters.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "engine/context.hpp"
#include "engine/parameter_store.hpp"
#include "engine/tensor.hpp"

namespace engine {

class Model {
 public:
  virtual ~Model() = default;
  virtual const Tensor& forward(Context& ctx, const Tensor& input) = 0;  // -> logits [B, K]
  virtual void backward(Context& ctx, const Tensor& diff_logits) = 0;
  virtual void train(bool on) = 0;  // dropout, drop path, batch statistics
  virtual void init_weights(Context& ctx) = 0;

  virtual std::string arch() const = 0;        // the registry's key, e.g. "vit"
  virtual nlohmann::json config() const = 0;   // enough to build the same model again
  virtual double flops_per_image() const = 0;  // forward, 2 × multiply-adds
  virtual int64_t num_classes() const = 0;

  ParameterStore store;
};

}  // namespace engine
