// One flat buffer each for parameter values, gradients and Adam's two moments (llm.c's
// layout): a named parameter is a view into them, zeroing gradients is one fill and an
// optimizer step is one loop. Layers register their parameters when constructed; allocate()
// then places them all, so it runs once, after the model is built and before its first use.
#pragma once

#include <deque>
#include <string>

#include "engine/tensor.hpp"

namespace engine {

struct Parameter {
  std::string name;  // timm's state-dict key, e.g. "blocks.0.attn.qkv.weight"
  Dims dims;
  bool decay = true;      // AdamW applies weight decay (timm: not biases, norms, pos_embed, ...)
  bool trainable = true;  // false: a buffer such as BatchNorm's running mean, or frozen
  float lr_scale = 1.0f;  // the optimizers' step is lr · lr_scale (layer-wise lr decay)
  int64_t offset = 0;     // into the flat buffers, in floats, 64-byte aligned
  Tensor value, grad;     // views, valid after ParameterStore::allocate() (grad: for training)
};

class ParameterStore {
 public:
  Parameter& add(std::string name, Dims dims, bool decay = true);
  // Saved with the model, never optimized and never decayed.
  Parameter& add_buffer(std::string name, Dims dims);
  // The values and, unless `inference_only`, the gradients and optimizer moments (three more
  // copies: a loaded ViT-B/16 would hold 1.3 GB instead of 330 MB for classification).
  void allocate(const dnnl::engine& eng, bool inference_only = false);
  bool allocated() const { return !values_.empty(); }
  // The gradients and moments of a store allocated for inference only; a no-op otherwise. Must
  // come before the layers' first forward: their plans bind the gradient buffers.
  void allocate_training(const dnnl::engine& eng);
  bool trainable_allocated() const { return !grads_.empty(); }

  Parameter& operator[](const std::string& name);
  const Parameter* find(const std::string& name) const;
  std::deque<Parameter>& parameters() { return params_; }
  const std::deque<Parameter>& parameters() const { return params_; }

  int64_t size() const { return size_; }  // floats per flat buffer, alignment padding included
  int64_t num_trainable() const;          // elements of trainable parameters, no padding
  float* values() const { return values_.data(); }
  float* grads() const { return grads_.data(); }
  float* adam_m() const { return adam_m_.data(); }
  float* adam_v() const { return adam_v_.data(); }
  void zero_grad() const { grads_.zero(); }

  // Bumped by whoever writes parameter values (optimizer step, loading, initialisation), so
  // a consumer holding a converted copy of the weights (vit::VitInference's packed matmul
  // weights) knows when to refresh it.
  uint64_t version() const { return version_; }
  void mark_changed() { ++version_; }

 private:
  Parameter& insert(std::string name, Dims dims, bool decay, bool trainable);
  std::deque<Parameter> params_;  // a deque: references stay valid as parameters are added
  int64_t size_ = 0;
  uint64_t version_ = 0;
  Tensor values_, grads_, adam_m_, adam_v_;
};

}  // namespace engine
