#include "models/resnet.hpp"

#include <algorithm>
#include <cmath>

#include "engine/error.hpp"
#include "engine/init.hpp"
#include "engine/json_read.hpp"
#include "engine/plan.hpp"

namespace models {

using engine::Layout;
using engine::require;

void ResNetConfig::validate() const {
  auto positive = [](int64_t v, const std::string& what) {
    require(v > 0, what + " must be positive, got " + std::to_string(v));
  };
  positive(img_size, "--img-size");
  positive(in_chans, "--in-chans");
  positive(num_classes, "num_classes");
  require(!widths.empty() && widths.size() == depths.size(),
          "a ResNet needs as many stage widths as stage depths, got " +
              std::to_string(widths.size()) + " and " + std::to_string(depths.size()));
  // Bounds far above any real ResNet, so that a hostile model file cannot ask for a model that
  // exhausts memory or overflows the size arithmetic before its tensors are checked.
  auto at_most = [](int64_t v, int64_t limit, const std::string& what) {
    require(v <= limit,
            what + " " + std::to_string(v) + " exceeds the limit of " + std::to_string(limit));
  };
  at_most(img_size, 8192, "--img-size");
  at_most(in_chans, 64, "--in-chans");
  at_most(num_classes, 1'000'000, "num_classes");
  at_most(static_cast<int64_t>(widths.size()), 16, "the number of stages");
  for (size_t i = 0; i < widths.size(); ++i) {
    positive(widths[i], "stage " + std::to_string(i + 1) + " width");
    positive(depths[i], "stage " + std::to_string(i + 1) + " depth");
    at_most(widths[i], 16384, "stage " + std::to_string(i + 1) + " width");
    at_most(depths[i], 256, "stage " + std::to_string(i + 1) + " depth");
  }
  // Each stage after the first halves the side (3×3, stride 2, padding 1: ceil(side / 2)).
  const int64_t side = img_size >> (widths.size() - 1);
  require(side >= 1, "--img-size " + std::to_string(img_size) + " is too small for " +
                         std::to_string(widths.size()) + " stages");
}

double ResNetConfig::flops_per_image() const {
  double macs = 0;
  int64_t side = img_size;
  macs += double(side * side) * double(in_chans * widths[0] * 9);  // stem
  int64_t in = widths[0];
  for (size_t s = 0; s < widths.size(); ++s) {
    for (int64_t b = 0; b < depths[s]; ++b) {
      const bool down = s > 0 && b == 0;
      const int64_t out_side = down ? (side + 1) / 2 : side;
      const double pixels = double(out_side * out_side);
      macs += pixels * double(in * widths[s] * 9) + pixels * double(widths[s] * widths[s] * 9);
      if (down || in != widths[s]) macs += pixels * double(in * widths[s]);
      side = out_side;
      in = widths[s];
    }
  }
  macs += double(in * num_classes);
  return 2.0 * macs;
}

void to_json(nlohmann::json& j, const ResNetConfig& c) {
  j = {{"img_size", c.img_size}, {"in_chans", c.in_chans}, {"num_classes", c.num_classes},
       {"widths", c.widths},     {"depths", c.depths},     {"block", "basic"},
       {"stem", "conv3x3"}};
}

void from_json(const nlohmann::json& j, ResNetConfig& c) {
  using engine::field_int, engine::json_field, engine::json_ints;
  c.img_size = field_int(j, "img_size");
  c.in_chans = field_int(j, "in_chans");
  c.num_classes = field_int(j, "num_classes");
  c.widths = json_ints(json_field(j, "widths"), "widths");
  c.depths = json_ints(json_field(j, "depths"), "depths");
  require(j.value("block", std::string("basic")) == "basic", "only 'basic' ResNet blocks exist");
  require(j.value("stem", std::string("conv3x3")) == "conv3x3", "only the 'conv3x3' stem exists");
  for (const auto& [key, value] : j.items())
    require(key == "img_size" || key == "in_chans" || key == "num_classes" || key == "widths" ||
                key == "depths" || key == "block" || key == "stem",
            "'" + key + "' is not a setting of a ResNet");
}

static ResNetConfig make(int64_t img, int64_t chans, std::vector<int64_t> widths,
                         std::vector<int64_t> depths) {
  ResNetConfig c;
  c.img_size = img, c.in_chans = chans, c.widths = std::move(widths), c.depths = std::move(depths);
  return c;
}

const std::vector<ResNetPreset>& resnet_presets() {
  static const std::vector<ResNetPreset> presets = {
      {"cnn_resnet8_fmnist", "28x28 grayscale ResNet-8: stages 32-64-128, one block each",
       make(28, 1, {32, 64, 128}, {1, 1, 1})},
      {"cnn_resnet14_fmnist", "28x28 grayscale ResNet-14: stages 32-64-128, two blocks each",
       make(28, 1, {32, 64, 128}, {2, 2, 2})},
      {"cnn_resnet20_cifar", "32x32 colour ResNet-20 of He et al.: stages 16-32-64, three blocks",
       make(32, 3, {16, 32, 64}, {3, 3, 3})},
  };
  return presets;
}

// torchvision's ResNet init: kaiming_normal_(mode="fan_out", nonlinearity="relu").
static void he_normal_fan_out(Context& ctx, engine::Conv2d& conv) {
  const double fan_out = double(conv.out_channels * conv.kernel_size * conv.kernel_size);
  engine::normal(ctx, conv.weight->value, 0.0f, static_cast<float>(std::sqrt(2.0 / fan_out)));
}

BasicBlock::BasicBlock(ParameterStore& store, const std::string& name, int64_t in, int64_t out,
                       int64_t stride)
    : conv1(store, name + ".conv1", in, out, 3, stride, 1, /*bias=*/false, Layout::nhwc),
      bn1(store, name + ".bn1", out, 1e-5f, 0.1f, Layout::nhwc),
      conv2(store, name + ".conv2", out, out, 3, 1, 1, /*bias=*/false, Layout::nhwc),
      bn2(store, name + ".bn2", out, 1e-5f, 0.1f, Layout::nhwc) {
  bn1.fuse_relu = true;
  if (stride != 1 || in != out) {
    downsample_conv = std::make_unique<engine::Conv2d>(store, name + ".downsample.0", in, out, 1,
                                                       stride, 0, /*bias=*/false, Layout::nhwc);
    downsample_bn = std::make_unique<engine::BatchNorm2d>(store, name + ".downsample.1", out, 1e-5f,
                                                          0.1f, Layout::nhwc);
  }
}

void BasicBlock::train(bool on) {
  bn1.training = bn2.training = on;
  if (downsample_bn) downsample_bn->training = on;
}

void BasicBlock::reset_parameters(Context& ctx) {
  he_normal_fan_out(ctx, conv1);
  he_normal_fan_out(ctx, conv2);
  bn1.reset_parameters();
  bn2.reset_parameters();
  if (downsample_conv) {
    he_normal_fan_out(ctx, *downsample_conv);
    downsample_bn->reset_parameters();
  }
}

const Tensor& BasicBlock::forward(Context& ctx, const Tensor& x) {
  const Tensor& h = bn1.forward(ctx, conv1.forward(ctx, x));  // ReLU fused
  const Tensor& residual = bn2.forward(ctx, conv2.forward(ctx, h));
  const Tensor& shortcut =
      downsample_conv ? downsample_bn->forward(ctx, downsample_conv->forward(ctx, x)) : x;
  return relu2.forward(ctx, add.forward(ctx, residual, shortcut));
}

const Tensor& BasicBlock::backward(Context& ctx, const Tensor& diff_dst) {
  const Tensor& d_sum = add.backward(relu2.backward(ctx, diff_dst));
  const Tensor& d_x =
      conv1.backward(ctx, bn1.backward(ctx, conv2.backward(ctx, bn2.backward(ctx, d_sum))));
  // x fans out to the residual branch and the shortcut: their gradients add up. d_x is conv1's
  // own buffer, free to take the sum until conv1's next backward.
  if (downsample_conv)
    accumulate_(ctx, d_x, downsample_conv->backward(ctx, downsample_bn->backward(ctx, d_sum)));
  else
    accumulate_(ctx, d_x, d_sum);
  return d_x;
}

static std::vector<std::unique_ptr<BasicBlock>> make_blocks(ParameterStore& store,
                                                            const ResNetConfig& c) {
  std::vector<std::unique_ptr<BasicBlock>> blocks;
  int64_t in = c.widths[0];
  for (size_t s = 0; s < c.widths.size(); ++s)
    for (int64_t b = 0; b < c.depths[s]; ++b) {
      const int64_t stride = (s > 0 && b == 0) ? 2 : 1;
      const std::string name = "layer" + std::to_string(s + 1) + "." + std::to_string(b);
      blocks.push_back(std::make_unique<BasicBlock>(store, name, in, c.widths[s], stride));
      in = c.widths[s];
    }
  return blocks;
}

// Members are built in torchvision's state-dict order.
ResNet::ResNet(const ResNetConfig& c)
    : config_((c.validate(), c)),
      conv1_(store, "conv1", c.in_chans, c.widths[0], 3, 1, 1, /*bias=*/false, Layout::nhwc),
      bn1_(store, "bn1", c.widths[0], 1e-5f, 0.1f, Layout::nhwc),
      blocks_(make_blocks(store, c)),
      fc_(store, "fc", c.widths.back(), c.num_classes) {
  conv1_.input_gradient = false;  // nothing upstream of the image
  bn1_.fuse_relu = true;
}

void ResNet::train(bool on) {
  bn1_.training = on;
  for (auto& b : blocks_) b->train(on);
}

void ResNet::init_weights(Context& ctx) {
  he_normal_fan_out(ctx, conv1_);
  bn1_.reset_parameters();
  for (auto& b : blocks_) b->reset_parameters(ctx);
  fc_.reset_parameters(ctx);
}

const Tensor& ResNet::forward(Context& ctx, const Tensor& input) {
  const int64_t B = input.dims().empty() ? 0 : input.dim(0);
  const int64_t C = config_.in_chans, S = config_.img_size;
  engine::check_same_dims(input.dims(), {B, C, S, S}, "ResNet", "input");
  // The image comes as [B, C, H, W]; one channel is already NHWC, more are transposed once.
  const Tensor* x = &bn1_.forward(ctx, conv1_.forward(ctx, to_nhwc_(ctx, input)));  // ReLU fused
  for (auto& block : blocks_) x = &block->forward(ctx, *x);
  features_ = x;
  return forward_head(ctx, *x);
}

const Tensor& ResNet::forward_head(Context& ctx, const Tensor& features) {
  const Tensor& pooled = avgpool_.forward(ctx, features);  // [B, 1, 1, C]
  return fc_.forward(ctx, pooled.reshaped({features.dim(0), config_.widths.back()}));
}

const Tensor& ResNet::backward_head(Context& ctx, const Tensor& diff_logits) {
  const int64_t B = diff_logits.dim(0), C = config_.widths.back();
  return avgpool_.backward(ctx, fc_.backward(ctx, diff_logits).reshaped({B, 1, 1, C}));
}

void ResNet::backward(Context& ctx, const Tensor& diff_logits) {
  const Tensor* d = &backward_head(ctx, diff_logits);
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) d = &(*it)->backward(ctx, *d);
  conv1_.backward(ctx, bn1_.backward(ctx, *d));
}

const Tensor& ResNet::features() const {
  engine::require(features_ != nullptr, "ResNet: features() before a forward");
  return *features_;
}

const Tensor& ResNet::class_score_gradient(Context& ctx, const std::vector<int64_t>& classes) {
  const int64_t B = features().dim(0), K = config_.num_classes;
  engine::require(int64_t(classes.size()) == B, "Grad-CAM: " + std::to_string(classes.size()) +
                                                    " classes for " + std::to_string(B) +
                                                    " images");
  Tensor one_hot(ctx.eng, {B, K});
  for (int64_t b = 0; b < B; ++b) {
    engine::require(classes[b] >= 0 && classes[b] < K,
                    "Grad-CAM: class " + std::to_string(classes[b]) + " of " + std::to_string(K));
    one_hot[b * K + classes[b]] = 1.0f;
  }
  return backward_head(ctx, one_hot);  // [B, h, w, C], as the features
}

Tensor ResNet::grad_cam(Context& ctx, const std::vector<int64_t>& classes) {
  const Tensor& a = features();
  const int64_t B = a.dim(0), HW = a.dim(1) * a.dim(2), C = a.dim(3);
  const Tensor& d_a = class_score_gradient(ctx, classes);
  // α [B, 1, C] = (1/hw) · 1ᵀ·dA per image; map [B, hw, 1] = relu(A·αᵀ). αᵀ [B, C, 1] is the
  // same bytes as α.
  using dnnl::memory;
  const memory::desc ones_md = engine::plain_desc({1, 1, HW}),
                     act_md = engine::plain_desc({B, HW, C});
  const memory::desc alpha_md = engine::plain_desc({B, 1, C});
  Tensor ones(ctx.eng, {1, 1, HW}), alpha(ctx.eng, {B, 1, C}), map(ctx.eng, {B, HW});
  std::fill_n(ones.data(), HW, 1.0f);
  const dnnl::matmul mean =
      engine::make_matmul(ctx.eng, ones_md, act_md, alpha_md, 1.0f / float(HW));
  dnnl::post_ops relu;
  relu.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  const memory::desc alpha_t_md = engine::plain_desc({B, C, 1}),
                     map_md = engine::plain_desc({B, HW, 1});
  const dnnl::matmul weigh = engine::make_matmul(ctx.eng, act_md, alpha_t_md, map_md, 1.0f, relu);
  mean.execute(ctx.strm, {{DNNL_ARG_SRC, memory(ones_md, ctx.eng, ones.data())},
                          {DNNL_ARG_WEIGHTS, memory(act_md, ctx.eng, d_a.data())},
                          {DNNL_ARG_DST, memory(alpha_md, ctx.eng, alpha.data())}});
  weigh.execute(ctx.strm, {{DNNL_ARG_SRC, memory(act_md, ctx.eng, a.data())},
                           {DNNL_ARG_WEIGHTS, memory(alpha_t_md, ctx.eng, alpha.data())},
                           {DNNL_ARG_DST, memory(map_md, ctx.eng, map.data())}});
  ctx.wait();
  return map;
}

}  // namespace models
