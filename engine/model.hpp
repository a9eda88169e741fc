// What training and evaluation need of a network, whatever its architecture: forward to
// logits, backward from their gradient, a mode switch, and its parameters.
#pragma once

#include <string>
#include <vector>

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
  // How datasets::Preprocess cuts its input: patches of this size, or 0 for whole images.
  virtual int64_t input_patch_size() const { return config().value("patch_size", int64_t{0}); }
  virtual int64_t num_classes() const = 0;

  // Fine-tuning. The name prefixes of the classifier's parameters, re-initialised when a
  // checkpoint meets a folder of other classes.
  virtual std::vector<std::string> head_prefixes() const = 0;
  // Layer-wise lr decay (BEiT): the layer of a parameter, 0 (the embeddings) .. num_layers() - 1
  // (the head); num_layers() 0 when the architecture defines none.
  virtual int64_t layer_id(const std::string& name) const {
    (void)name;
    return 0;
  }
  virtual int64_t num_layers() const { return 0; }
  // A linear probe: only the head (and the final norm) train; every other parameter is frozen
  // (not trainable), its layers run in evaluation mode and backward stops at them. False when
  // the architecture has no such mode.
  virtual bool freeze_backbone() { return false; }
  // Called by train_step before the forward of optimizer step `step` (0-based, restored on
  // resume): for state that changes on a schedule, as Performer's redrawn random features.
  virtual void begin_step(int64_t step) { (void)step; }
  // Evaluation at a batch size not seen before: true when every batch size's plan shares one
  // activation storage, so a new size costs only its primitives (the ViT's fused path); false
  // when each size gets buffers of its own (layers' plans), so that a server should keep to a
  // few sizes.
  virtual bool any_batch_size_is_cheap() const { return false; }
  // For a model whose any_batch_size_is_cheap(): the batch sizes whose evaluation forwards
  // build every plan that a forward of 1..max_batch images uses (VitModel: its padded plan
  // sizes), so that a server can build them all before its first request.
  virtual std::vector<int64_t> plan_sizes(int64_t max_batch) const {
    std::vector<int64_t> all;
    for (int64_t n = 1; n <= max_batch; ++n) all.push_back(n);
    return all;
  }

  ParameterStore store;
};

}  // namespace engine
