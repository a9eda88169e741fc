// The Vision Transformer behind the engine::Model interface.
#pragma once

#include "engine/model.hpp"
#include "vit/vision_transformer.hpp"

namespace models {

using engine::Context;
using engine::Tensor;

class VitModel : public engine::Model {
 public:
  explicit VitModel(const vit::VitConfig& config) : net(store, config) {}

  const Tensor& forward(Context& ctx, const Tensor& input) override {
    return net.forward(ctx, input);
  }
  void backward(Context& ctx, const Tensor& diff_logits) override {
    net.backward(ctx, diff_logits);
  }
  void train(bool on) override { net.train(on); }
  void init_weights(Context& ctx) override { net.init_weights(ctx); }
  std::string arch() const override { return "vit"; }
  nlohmann::json config() const override { return net.config; }
  double flops_per_image() const override { return net.config.flops_per_image(); }
  int64_t num_classes() const override { return net.config.num_classes; }

  vit::VisionTransformer net;
};

}  // namespace models
