// The CNN baseline: torchvision's ResNet names and shapes, BasicBlock and whole-model gradients
// by finite differences, FLOP counting, the config's JSON form, and overfitting a fixed batch.
#include <doctest/doctest.h>

#include <cmath>

#include "check.hpp"
#include "engine/cross_entropy.hpp"
#include "engine/error.hpp"
#include "engine/optim.hpp"
#include "models/registry.hpp"
#include "models/resnet.hpp"

using engine::Context;
using engine::Dims;
using engine::ParameterStore;
using engine::Tensor;
using models::BasicBlock;
using models::ResNet;
using models::ResNetConfig;

namespace {

std::vector<check::GradTarget> trainable_targets(ParameterStore& store, int64_t limit = 1 << 30) {
  std::vector<check::GradTarget> targets;
  for (engine::Parameter& p : store.parameters())
    if (p.trainable)
      targets.push_back({p.name, p.value.data(), std::min(limit, p.value.numel()), p.grad.data()});
  return targets;
}

// Convolution weights at random, BatchNorm scales near 1 (as trained ones are).
void randomize(ParameterStore& store, std::mt19937_64& rng) {
  for (engine::Parameter& p : store.parameters()) {
    if (!p.trainable) continue;
    const bool bn_weight = p.dims.size() == 1 && p.name.ends_with(".weight");
    if (bn_weight)
      check::randomize(p.value, rng, 0.5f, 1.5f);
    else
      check::randomize(p.value, rng, -0.5f, 0.5f);
  }
}

ResNetConfig tiny_config() {
  ResNetConfig c;
  c.img_size = 6, c.in_chans = 2, c.num_classes = 3, c.widths = {4, 6}, c.depths = {1, 2};
  return c;
}

}  // namespace

TEST_CASE("BasicBlock: identity and downsampling shortcuts by FD") {
  for (const int64_t stride : {1, 2}) {
    CAPTURE(stride);
    Context ctx(20 + uint64_t(stride));
    std::mt19937_64 rng(200 + uint64_t(stride));
    ParameterStore store;
    const int64_t in = stride == 1 ? 4 : 3;
    BasicBlock block(store, "layer1.0", in, 4, stride);
    store.allocate(ctx.eng);
    block.reset_parameters(ctx);
    randomize(store, rng);
    CHECK((block.downsample_conv != nullptr) == (stride == 2));
    Tensor x = check::random_tensor(ctx, {3, 6, 6, in}, rng);  // NHWC
    auto forward = [&]() -> const Tensor& { return block.forward(ctx, x); };
    Tensor r = check::random_tensor(ctx, forward().dims(), rng);
    CHECK(forward().dims() == Dims{3, 6 / stride, 6 / stride, 4});
    const Tensor& dx = block.backward(ctx, r);
    ctx.wait();
    auto targets = trainable_targets(store);
    targets.push_back({"x", x.data(), x.numel(), dx.data()});
    check::check_gradients(ctx, forward, r, targets);
    check::check_backward_overwrites(
        ctx, forward, [&]() -> const Tensor& { return block.backward(ctx, r); }, store);
  }
}

TEST_CASE("ResNet: torchvision's names and shapes; every parameter gets a gradient") {
  Context ctx(22);
  std::mt19937_64 rng(222);
  ResNet model(tiny_config());
  model.store.allocate(ctx.eng);
  model.init_weights(ctx);
  const std::vector<std::pair<std::string, Dims>> expected = {
      {"conv1.weight", {4, 2, 3, 3}},
      {"bn1.weight", {4}},
      {"bn1.bias", {4}},
      {"bn1.running_mean", {4}},
      {"bn1.running_var", {4}},
      {"layer1.0.conv1.weight", {4, 4, 3, 3}},
      {"layer1.0.bn1.weight", {4}},
      {"layer1.0.bn1.bias", {4}},
      {"layer1.0.bn1.running_mean", {4}},
      {"layer1.0.bn1.running_var", {4}},
      {"layer1.0.conv2.weight", {4, 4, 3, 3}},
      {"layer1.0.bn2.weight", {4}},
      {"layer1.0.bn2.bias", {4}},
      {"layer1.0.bn2.running_mean", {4}},
      {"layer1.0.bn2.running_var", {4}},
      {"layer2.0.conv1.weight", {6, 4, 3, 3}},
  };
  const auto& params = model.store.parameters();
  for (size_t i = 0; i < expected.size(); ++i) {
    CHECK(params[i].name == expected[i].first);
    CHECK(params[i].dims == expected[i].second);
  }
  CHECK(model.store["layer2.0.downsample.0.weight"].dims == Dims{6, 4, 1, 1});
  CHECK(model.store["layer2.0.downsample.1.running_var"].dims == Dims{6});
  CHECK(model.store.find("layer2.1.downsample.0.weight") == nullptr);
  CHECK(model.store["layer2.1.conv2.weight"].dims == Dims{6, 6, 3, 3});
  CHECK(params[params.size() - 2].name == "fc.weight");
  CHECK(params.back().name == "fc.bias");
  CHECK(model.store["fc.weight"].dims == Dims{3, 6});
  CHECK(model.store["conv1.weight"].decay);
  CHECK_FALSE(model.store["layer1.0.bn2.weight"].decay);
  CHECK_FALSE(model.store["fc.bias"].decay);
  CHECK_FALSE(model.store["bn1.running_mean"].trainable);

  Tensor x = check::random_tensor(ctx, {4, 2, 6, 6}, rng);
  const Tensor& logits = model.forward(ctx, x);
  ctx.wait();
  REQUIRE(logits.dims() == Dims{4, 3});
  for (int64_t i = 0; i < logits.numel(); ++i) CHECK(std::isfinite(logits[i]));
  Tensor r = check::random_tensor(ctx, logits.dims(), rng);
  model.store.zero_grad();
  model.backward(ctx, r);
  ctx.wait();
  for (const engine::Parameter& p : params) {
    if (!p.trainable) continue;
    double norm = 0;
    for (int64_t i = 0; i < p.grad.numel(); ++i) norm += double(p.grad[i]) * p.grad[i];
    INFO(p.name);
    CHECK(norm > 0.0);
  }
  // Running statistics moved in training mode, and evaluation uses them.
  CHECK(model.store["bn1.running_var"].value[0] != 1.0f);
  model.train(false);
  const std::vector<float> eval_logits = check::copy_of(model.forward(ctx, x));
  ctx.wait();
  model.train(true);
  const std::vector<float> train_logits = check::copy_of(model.forward(ctx, x));
  ctx.wait();
  CHECK(eval_logits != train_logits);
}

TEST_CASE("ResNet: whole-model gradients by FD") {
  // Small enough that few ReLU inputs sit within a step of their kink, where a finite
  // difference means nothing (the blocks themselves are checked at full size above).
  Context ctx(23);
  std::mt19937_64 rng(223);
  ResNetConfig c;
  c.img_size = 4, c.in_chans = 1, c.num_classes = 3, c.widths = {3, 4}, c.depths = {1, 1};
  ResNet model(c);
  model.store.allocate(ctx.eng);
  model.init_weights(ctx);
  randomize(model.store, rng);
  Tensor x = check::random_tensor(ctx, {3, 1, 4, 4}, rng);
  auto forward = [&]() -> const Tensor& { return model.forward(ctx, x); };
  Tensor r = check::random_tensor(ctx, forward().dims(), rng);
  model.backward(ctx, r);
  ctx.wait();
  check::check_gradients(ctx, forward, r, trainable_targets(model.store, 8));
}

TEST_CASE("ResNetConfig: FLOPs by hand, JSON round trip, bad configs named") {
  ResNetConfig c = tiny_config();
  // stem 36·(2·4·9); layer1.0 36·(4·4·9)·2; layer2.0 9·(4·6·9 + 6·6·9 + 4·6); layer2.1
  // 9·(6·6·9)·2; fc 6·3.
  const double macs = 36.0 * 72 + 36.0 * 288 + 9.0 * (216 + 324 + 24) + 9.0 * 648 + 18;
  CHECK(c.flops_per_image() == doctest::Approx(2 * macs));
  nlohmann::json j = c;
  CHECK(j.get<ResNetConfig>() == c);

  j["patch_size"] = 4;
  CHECK_THROWS_WITH_AS(j.get<ResNetConfig>(), "'patch_size' is not a setting of a ResNet",
                       engine::Error);
  c.depths = {1};
  CHECK_THROWS_WITH_AS(c.validate(),
                       doctest::Contains("as many stage widths as stage depths, got 2 and 1"),
                       engine::Error);
  c = tiny_config();
  c.widths[1] = 0;
  CHECK_THROWS_WITH_AS(c.validate(), "stage 2 width must be positive, got 0", engine::Error);

  // The presets are registered and their sizes are what their names say.
  const models::Preset& p = models::preset("cnn_resnet8_fmnist");
  CHECK(p.arch == "resnet");
  const auto net = models::build_model(p.arch, p.config);
  CHECK(net->num_classes() == 10);
  CHECK(net->store.num_trainable() > 300000);
  CHECK(net->store.num_trainable() < 400000);
}

TEST_CASE("ResNet overfits a fixed batch with SGD") {
  Context ctx(24);
  std::mt19937_64 rng(224);
  ResNet model(tiny_config());
  model.store.allocate(ctx.eng);
  model.init_weights(ctx);
  engine::SoftmaxCrossEntropy ce;
  engine::Sgd sgd;
  Tensor x = check::random_tensor(ctx, {12, 2, 6, 6}, rng);
  std::vector<int> labels(12);
  for (int i = 0; i < 12; ++i) labels[i] = i % 3;
  float first = 0, last = 0;
  for (int step = 0; step < 200; ++step) {
    const float loss = ce.forward(ctx, model.forward(ctx, x), labels);
    if (step == 0) first = loss;
    last = loss;
    model.store.zero_grad();
    model.backward(ctx, ce.backward(ctx));
    sgd.update(model.store, 0.05f);
  }
  INFO("loss " << first << " -> " << last);
  CHECK(last < 0.05f * first);
}
