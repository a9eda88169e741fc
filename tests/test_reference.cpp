// The whole ViT forward against torchvision's own VisionTransformer: fixtures exported by
// tests/fixtures/export_torchvision_vit.py (weights renamed to timm's keys, inputs, logits).
// The CNN baseline against a PyTorch ResNet built from torchvision's BasicBlock
// (tests/fixtures/export_torch_resnet.py), in evaluation and in training mode.
#include <cmath>

#include <doctest/doctest.h>
#include <opencv2/core.hpp>

#include "check.hpp"
#include "datasets/preprocess.hpp"
#include "engine/state_dict.hpp"
#include "models/resnet.hpp"
#include "vit/inference.hpp"
#include "vit/vision_transformer.hpp"

using namespace vit;

namespace {

// Evaluation mode: the layers, the fused path (f32, and bf16 where the CPU has it) against the
// fixture's logits. The model's input is the patches cut with OpenCV, or with a conv stem
// (torchvision's conv_stem_configs) the images themselves; a stem's fixture also checks training
// mode: batch statistics, every parameter's gradient of sum(logits · cotangent), and the
// running statistics after that pass.
void check_fixture(const std::string& file_name) {
  CAPTURE(file_name);
  const engine::SafetensorsFile file(std::string(VIT_FIXTURES) + "/" + file_name);
  const VitConfig config = nlohmann::json::parse(file.metadata().at("config")).get<VitConfig>();
  Context ctx(0);
  ParameterStore store;
  VisionTransformer model(store, config);
  store.allocate(ctx.eng);
  engine::load_state_dict(store, file, /*strict=*/true,
                          {"input", "logits", "logits_train", "cotangent", "grad.", "after."});
  model.train(false);

  const int64_t n = file.entries().at("input").shape[0], C = config.in_chans, S = config.img_size,
                K = config.num_classes;
  Tensor images(ctx.eng, {n, C, S, S});
  file.read_f32("input", images.dims(), images.data());
  std::vector<float> want(n * K);
  file.read_f32("logits", {n, K}, want.data());

  Tensor patches;
  if (!config.conv_stem())
    patches = check::patches_from_nchw(ctx, images.data(), n, C, S, config.patch_size);
  const Tensor& input = config.conv_stem() ? images : patches;
  const Tensor& layers = model.forward(ctx, input);
  ctx.wait();
  check::check_close_to_largest(layers, want, "layers");
  // The fused inference path, on the same weights.
  VitInference fused(model, store, engine::Precision::f32);
  const Tensor& fused_logits = fused.forward(ctx, input);
  ctx.wait();
  check::check_close_to_largest(fused_logits, want, "fused f32");
  if (engine::precision_supported(engine::Precision::bf16)) {
    VitInference fused_bf16(model, store, engine::Precision::bf16);
    const Tensor& bf16_logits = fused_bf16.forward(ctx, input);
    ctx.wait();
    check::check_close_to_largest(bf16_logits, want, "fused bf16", 2e-2);
  } else {
    MESSAGE("bf16 skipped: this CPU has no AVX-512");
  }
  if (!file.entries().count("logits_train")) return;

  store.allocate_training(ctx.eng);
  model.train(true);
  file.read_f32("logits_train", {n, K}, want.data());
  const Tensor& train_logits = model.forward(ctx, input);
  ctx.wait();
  check::check_close_to_largest(train_logits, want, "training mode");
  Tensor cotangent(ctx.eng, {n, K});
  file.read_f32("cotangent", {n, K}, cotangent.data());
  store.zero_grad();
  model.backward(ctx, cotangent);
  ctx.wait();
  for (const engine::Parameter& p : store.parameters()) {
    std::vector<float> expected(p.value.numel());
    if (p.trainable) {
      file.read_f32("grad." + p.name, p.dims, expected.data());
      check::check_close_to_largest(p.grad, expected, ("grad " + p.name).c_str());
    } else {
      file.read_f32("after." + p.name, p.dims, expected.data());
      check::check_close_to_largest(p.value, expected, p.name.c_str());
    }
  }
}

void check_resnet_fixture(const std::string& file_name) {
  CAPTURE(file_name);
  const engine::SafetensorsFile file(std::string(VIT_FIXTURES) + "/" + file_name);
  const auto config =
      nlohmann::json::parse(file.metadata().at("config")).get<models::ResNetConfig>();
  Context ctx(0);
  models::ResNet model(config);
  model.store.allocate(ctx.eng);
  engine::load_state_dict(model.store, file, /*strict=*/true,
                          {"input", "logits_eval", "logits_train", "after."});
  const int64_t n = file.entries().at("input").shape[0], K = config.num_classes;
  Tensor input(ctx.eng, {n, config.in_chans, config.img_size, config.img_size});
  file.read_f32("input", input.dims(), input.data());
  std::vector<float> want(n * K);

  model.train(false);  // running statistics
  file.read_f32("logits_eval", {n, K}, want.data());
  const Tensor& eval_logits = model.forward(ctx, input);
  ctx.wait();
  check::check_close_to_largest(eval_logits, want, "evaluation mode");

  model.train(true);  // batch statistics, and the running ones updated as torch does
  file.read_f32("logits_train", {n, K}, want.data());
  const Tensor& train_logits = model.forward(ctx, input);
  ctx.wait();
  check::check_close_to_largest(train_logits, want, "training mode");
  for (const engine::Parameter& p : model.store.parameters()) {
    if (p.trainable) continue;
    std::vector<float> after(p.value.numel());
    file.read_f32("after." + p.name, p.dims, after.data());
    check::check_close_to_largest(p.value, after, p.name.c_str());
  }
}

}  // namespace

TEST_CASE("ResNet forward equals PyTorch with torchvision's BasicBlock (RGB 12x12, 3 stages)") {
  check_resnet_fixture("torch_resnet_rgb.safetensors");
}

TEST_CASE(
    "ResNet forward equals PyTorch with torchvision's BasicBlock (grayscale 9x9, odd sides)") {
  check_resnet_fixture("torch_resnet_gray.safetensors");
}

TEST_CASE("ViT forward equals torchvision's VisionTransformer (RGB, 32x32, patch 8)") {
  check_fixture("torchvision_vit_rgb.safetensors");
}

TEST_CASE("ViT forward equals torchvision's VisionTransformer (grayscale, 28x28, patch 7)") {
  check_fixture("torchvision_vit_gray.safetensors");
}

TEST_CASE("ViT with CCT's sequence pooling equals torch ops on torchvision's encoder") {
  check_fixture("torchvision_vit_seqpool_gray.safetensors");
}

TEST_CASE("ViT with a conv stem equals torchvision's conv_stem_configs (RGB, 3 stages)") {
  check_fixture("torchvision_vit_convstem_rgb.safetensors");
}

TEST_CASE("ViT with a conv stem equals torchvision's conv_stem_configs (grayscale, 28x28)") {
  check_fixture("torchvision_vit_convstem_gray.safetensors");
}
