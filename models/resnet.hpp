// The CNN baseline: a small residual network in the CIFAR style of He et al. (2016), "Deep
// Residual Learning" §4.2 (a 3×3 stem, stages of BasicBlocks, stride-2 downsampling between
// stages, global average pooling, a linear head), with torchvision's ResNet state-dict names
// (conv1, bn1, layer{i}.{j}.conv1, ..., layer{i}.{j}.downsample.{0,1}, fc). Activations are
// channels-last (NHWC) inside, where oneDNN has direct convolution kernels; weights keep
// torch's OIHW shapes.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/batch_norm.hpp"
#include "engine/binary.hpp"
#include "engine/conv2d.hpp"
#include "engine/eltwise.hpp"
#include "engine/linear.hpp"
#include "engine/model.hpp"
#include "engine/pooling.hpp"
#include "engine/reorder.hpp"

namespace models {

using engine::Context;
using engine::ParameterStore;
using engine::Tensor;

struct ResNetConfig {
  int64_t img_size = 28;
  int64_t in_chans = 1;
  int64_t num_classes = 10;
  std::vector<int64_t> widths{32, 64, 128};  // channels of each stage; the stem has widths[0]
  std::vector<int64_t> depths{1, 1, 1};      // BasicBlocks per stage

  // Throws engine::Error naming the field that is wrong.
  void validate() const;
  // 2 × multiply-adds of one forward pass: convolutions and the head (BatchNorm, ReLU, adds
  // and pooling are memory traffic, not counted, as for the ViT).
  double flops_per_image() const;

  bool operator==(const ResNetConfig&) const = default;
};

void to_json(nlohmann::json& j, const ResNetConfig& c);
void from_json(const nlohmann::json& j, ResNetConfig& c);

struct ResNetPreset {
  const char* name;
  const char* description;
  ResNetConfig config;
};
const std::vector<ResNetPreset>& resnet_presets();

// torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the shortcut
// a 1×1 convolution and BatchNorm when the block changes stride or width.
struct BasicBlock {
  BasicBlock(ParameterStore& store, const std::string& name, int64_t in_channels,
             int64_t out_channels, int64_t stride);
  const Tensor& forward(Context& ctx, const Tensor& x);  // NHWC [B, H, W, C] -> [B, H/s, W/s, O]
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);
  void train(bool on);
  void reset_parameters(Context& ctx);  // torchvision: He normal (fan_out), BN weight 1 bias 0

  engine::Conv2d conv1;
  engine::BatchNorm2d bn1;  // with the ReLU fused: relu(bn1(x))
  engine::Conv2d conv2;
  engine::BatchNorm2d bn2;
  std::unique_ptr<engine::Conv2d> downsample_conv;     // downsample.0
  std::unique_ptr<engine::BatchNorm2d> downsample_bn;  // downsample.1
  engine::Add add;
  engine::Relu relu2;

 private:
  engine::Accumulate accumulate_;
};

class ResNet : public engine::Model {
 public:
  explicit ResNet(const ResNetConfig& config);

  // input [B, C, H, W] (the image, not cut into patches) -> logits [B, K]
  const Tensor& forward(Context& ctx, const Tensor& input) override;
  void backward(Context& ctx, const Tensor& diff_logits) override;
  void train(bool on) override;
  void init_weights(Context& ctx) override;
  std::string arch() const override { return "resnet"; }
  nlohmann::json config() const override { return config_; }
  double flops_per_image() const override { return config_.flops_per_image(); }
  int64_t num_classes() const override { return config_.num_classes; }
  std::vector<std::string> head_prefixes() const override { return {"fc."}; }

  // Grad-CAM (Selvaraju et al. 2017) on the last stage, for `vit explain`: after a forward,
  // the gradient of each image's score of classes[b] (a one-hot backward through the head and
  // the pooling, as backward runs them) weighs the last stage's channels by its spatial mean,
  // and relu(Σ_c α_c · A_c) is the map. Returns [B, h·w], row-major over the last stage's
  // h × w grid; the store must be allocated for training (the head's backward writes its
  // gradients).
  Tensor grad_cam(Context& ctx, const std::vector<int64_t>& classes);
  // The last stage's output of the last forward, NHWC [B, h, w, C]: what the pooling reads.
  const Tensor& features() const;
  // The head on its own: the pooling and fc from last-stage activations [B, h, w, C] to the
  // logits, as forward ends; and the gradient of each image's score of classes[b] with
  // respect to them (the head's backward from a one-hot), as backward begins.
  const Tensor& forward_head(Context& ctx, const Tensor& features);
  const Tensor& class_score_gradient(Context& ctx, const std::vector<int64_t>& classes);

 private:
  // backward through the head and the pooling: the gradient of the last stage's output.
  const Tensor& backward_head(Context& ctx, const Tensor& diff_logits);

  ResNetConfig config_;
  engine::Conv2d conv1_;
  engine::BatchNorm2d bn1_;                          // with the ReLU fused
  std::vector<std::unique_ptr<BasicBlock>> blocks_;  // layer1.0, layer1.1, ..., in order
  engine::GlobalAvgPool2d avgpool_{engine::Layout::nhwc};
  engine::Linear fc_;
  engine::ToNhwc to_nhwc_;
  const Tensor* features_ = nullptr;
};

}  // namespace models
