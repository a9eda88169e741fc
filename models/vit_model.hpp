// The Vision Transformer behind the engine::Model interface.
#pragma once

#include <algorithm>
#include <memory>
#include <vector>

#include "engine/model.hpp"
#include "vit/inference.hpp"
#include "vit/vision_transformer.hpp"

namespace models {

using engine::Context;
using engine::Tensor;

class VitModel : public engine::Model {
 public:
  explicit VitModel(const vit::VitConfig& config)
      : net(store, config), inference(std::make_unique<vit::VitInference>(net, store)) {}

  // Training runs the layers (they keep what backward needs); evaluation the fused path.
  const Tensor& forward(Context& ctx, const Tensor& input) override {
    return training_ ? net.forward(ctx, input) : inference->forward(ctx, input);
  }
  void backward(Context& ctx, const Tensor& diff_logits) override {
    engine::require(training_, "VitModel: backward after an evaluation-mode forward");
    net.backward(ctx, diff_logits);
  }
  void begin_step(int64_t step) override { net.begin_step(step); }
  bool any_batch_size_is_cheap() const override { return true; }  // VitInference's storage
  std::vector<int64_t> plan_sizes(int64_t max_batch) const override {
    std::vector<int64_t> sizes;  // a larger batch runs in chunks, each padded to one of these
    for (int64_t n = 1; n <= std::min(max_batch, inference->chunk_images()); ++n)
      if (vit::VitInference::plan_images(n) == n) sizes.push_back(n);
    return sizes;
  }
  void train(bool on) override {
    training_ = on;
    net.train(on);
  }
  void init_weights(Context& ctx) override {
    net.init_weights(ctx);
    store.mark_changed();
  }
  void set_precision(engine::Precision p) override {
    engine::require_supported(p);
    net.set_precision(p);
    if (p != inference->precision) inference = std::make_unique<vit::VitInference>(net, store, p);
  }
  std::string arch() const override { return "vit"; }
  nlohmann::json config() const override { return net.config; }
  double flops_per_image() const override { return net.config.flops_per_image(); }
  int64_t input_patch_size() const override { return net.config.input_patch_size(); }
  int64_t num_classes() const override { return net.config.num_classes; }
  std::vector<std::string> head_prefixes() const override { return {"head.", "head_dist."}; }
  int64_t layer_id(const std::string& name) const override { return net.layer_id(name); }
  int64_t num_layers() const override { return net.config.depth + 2; }
  bool freeze_backbone() override {
    net.freeze_backbone(store);
    return true;
  }

  vit::VisionTransformer net;
  std::unique_ptr<vit::VitInference> inference;

 private:
  bool training_ = true;
};

}  // namespace models
