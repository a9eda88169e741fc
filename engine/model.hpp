// What training and evaluation need of a network, whatever its architecture: forward to
// logits, backward from their gradient, a mode switch, and its parameters.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "engine/context.hpp"
#include "engine/error.hpp"
#include "engine/parameter_store.hpp"
#include "engine/precision.hpp"
#include "engine/tensor.hpp"

namespace engine {

class Model {
 public:
  virtual ~Model() = default;
  virtual const Tensor& forward(Context& ctx, const Tensor& input) = 0;  // -> logits [B, K]
  virtual void backward(Context& ctx, const Tensor& diff_logits) = 0;
  virtual void train(bool on) = 0;  // dropout, drop path, batch statistics
  virtual void init_weights(Context& ctx) = 0;
  // The matmul precision of training and inference; f32 unless an architecture has a bf16
  // path (bf16 operands, f32 results, weights and optimizer state).
  virtual void set_precision(Precision p) {
    require(p == Precision::f32,
            "model '" + arch() + "' has no " + precision_name(p) + " path; use f32");
  }

  virtual std::string arch() const = 0;        // the registry's key, e.g. "vit"
  virtual nlohmann::json config() const = 0;   // enough to build the same model again
  virtual double flops_per_image() const = 0;  // forward, 2 × multiply-adds
  virtual int64_t num_classes() const = 0;

  ParameterStore store;
};

}  // namespace engine
