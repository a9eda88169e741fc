// The Vision Transformer's pieces against finite differences, the whole model's gradients,
// and its configuration rules.
#include <set>

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "check.hpp"
#include "engine/error.hpp"
#include "engine/optim.hpp"
#include "vit/inference.hpp"
#include "vit/multi_head_attention.hpp"
#include "vit/vision_transformer.hpp"

using namespace vit;
using check::GradTarget, check::max_abs_diff, check::parameter_targets, check::randomize_for_fd,
    check::randomize_parameters;

namespace {

VitConfig tiny_config() {
  VitConfig c;
  c.img_size = 8, c.patch_size = 4, c.in_chans = 2, c.num_classes = 3;
  c.embed_dim = 8, c.depth = 2, c.num_heads = 2, c.mlp_ratio = 2.0;
  return c;
}

// Every element of every parameter's gradient is non-zero, but for the keys' bias: adding the
// same vector to every key adds q·b to all of a query's scores, which the softmax ignores, so its
// gradient is zero (up to rounding). With qk_norm the same holds for k_norm's bias instead.
void check_every_gradient(const ParameterStore& store, const VitConfig& c) {
  double overall = 0;  // the largest gradient element of the model
  for (const engine::Parameter& p : store.parameters())
    for (int64_t i = 0; i < p.grad.numel(); ++i)
      overall = std::max(overall, double(std::abs(p.grad[i])));
  for (const engine::Parameter& p : store.parameters()) {
    if (!p.trainable) continue;  // BatchNorm's running statistics
    INFO(p.name);
    // Softmax over keys ignores what adds the same to every score of a query: the key bias
    // (unless qk_norm normalizes k after it) and k_norm's bias.
    const bool qkv_bias = p.name.ends_with(".attn.qkv.bias") && !c.qk_norm;
    const bool k_norm_bias = p.name.ends_with(".attn.k_norm.bias");
    double largest = 0;
    for (int64_t i = 0; i < p.grad.numel(); ++i)
      largest = std::max(largest, double(std::abs(p.grad[i])));
    if (k_norm_bias) largest = overall;
    int64_t zero = 0, key_bias_off = 0;
    for (int64_t i = 0; i < p.grad.numel(); ++i) {
      const bool key_bias = (qkv_bias && i >= c.embed_dim && i < 2 * c.embed_dim) || k_norm_bias;
      if (key_bias)
        key_bias_off += std::abs(p.grad[i]) > 1e-5 * largest;
      else
        zero += p.grad[i] == 0.0f;
    }
    CHECK(zero == 0);
    CHECK(key_bias_off == 0);
  }
}

}  // namespace

TEST_CASE("PatchEmbed: timm's [D, C, P, P] weight applied to flattened patches") {
  Context ctx(1);
  std::mt19937_64 rng(151);
  const VitConfig c = tiny_config();
  ParameterStore store;
  PatchEmbed embed(store, c);
  store.allocate(ctx.eng);
  CHECK(embed.proj.weight->name == "patch_embed.proj.weight");
  CHECK(embed.proj.weight->dims == Dims{8, 2, 4, 4});
  randomize_parameters(store, rng);
  Tensor patches = check::random_tensor(ctx, {2, 4, 32}, rng);
  auto forward = [&]() -> const Tensor& { return embed.forward(ctx, patches); };
  Tensor r = check::random_tensor(ctx, forward().dims(), rng);
  embed.backward(ctx, r);
  ctx.wait();
  check::check_gradients(ctx, forward, r, parameter_targets(store));
}

TEST_CASE("PosEmbed: cls token prepended, learned positions added, gradients by FD") {
  Context ctx(2);
  std::mt19937_64 rng(152);
  const VitConfig c = tiny_config();  // L = 4, N = 5, D = 8
  ParameterStore store;
  PosEmbed pos(store, c);
  store.allocate(ctx.eng);
  randomize_parameters(store, rng);
  Tensor x = check::random_tensor(ctx, {3, 4, 8}, rng);
  const Tensor& y = pos.forward(ctx, x);
  ctx.wait();
  REQUIRE(y.dims() == Dims{3, 5, 8});
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t n = 0; n < 5; ++n)
      for (int64_t i = 0; i < 8; ++i) {
        const float token = n == 0 ? pos.cls_token->value[i] : x[(b * 4 + n - 1) * 8 + i];
        CHECK(y[(b * 5 + n) * 8 + i] == doctest::Approx(token + pos.pos_embed->value[n * 8 + i]));
      }
  auto forward = [&]() -> const Tensor& { return pos.forward(ctx, x); };
  Tensor r = check::random_tensor(ctx, y.dims(), rng);
  const Tensor& dx = pos.backward(ctx, r);
  ctx.wait();
  auto targets = parameter_targets(store);
  targets.push_back({"x", x.data(), x.numel(), dx.data()});
  check::check_gradients(ctx, forward, r, targets);
}

TEST_CASE("Attention: multi-head self-attention against a naive loop and by FD") {
  Context ctx(3);
  std::mt19937_64 rng(153);
  const VitConfig c = tiny_config();
  ParameterStore store;
  MultiHeadAttention attn(store, "attn", c);
  store.allocate(ctx.eng);
  randomize_parameters(store, rng);
  const int64_t B = 2, N = 5, D = 8, H = 2, d = 4;
  Tensor x = check::random_tensor(ctx, {B, N, D}, rng);
  const Tensor& y = attn.forward(ctx, x);
  ctx.wait();

  // Naive: qkv = x·Wᵀ + b; per head softmax(q·kᵀ/√d)·v; concat; proj.
  std::vector<double> qkv(B * N * 3 * D), merged(B * N * D), want(B * N * D);
  const float* W = attn.qkv.weight->value.data();
  for (int64_t t = 0; t < B * N; ++t)
    for (int64_t o = 0; o < 3 * D; ++o) {
      double s = attn.qkv.bias->value[o];
      for (int64_t i = 0; i < D; ++i) s += double(x[t * D + i]) * W[o * D + i];
      qkv[t * 3 * D + o] = s;
    }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t n = 0; n < N; ++n) {
        std::vector<double> p(N);
        double mx = -1e300, sum = 0;
        for (int64_t m = 0; m < N; ++m) {
          double s = 0;
          for (int64_t j = 0; j < d; ++j)
            s += qkv[(b * N + n) * 3 * D + h * d + j] * qkv[(b * N + m) * 3 * D + D + h * d + j];
          p[m] = s / std::sqrt(double(d));
          mx = std::max(mx, p[m]);
        }
        for (double& v : p) sum += (v = std::exp(v - mx));
        for (int64_t j = 0; j < d; ++j) {
          double s = 0;
          for (int64_t m = 0; m < N; ++m)
            s += p[m] / sum * qkv[(b * N + m) * 3 * D + 2 * D + h * d + j];
          merged[(b * N + n) * D + h * d + j] = s;
        }
      }
  const float* P = attn.proj.weight->value.data();
  for (int64_t t = 0; t < B * N; ++t)
    for (int64_t o = 0; o < D; ++o) {
      double s = attn.proj.bias->value[o];
      for (int64_t i = 0; i < D; ++i) s += merged[t * D + i] * P[o * D + i];
      want[t * D + o] = s;
    }
  check::check_close("Attention", y, want, 1e-4, 1e-5);

  auto forward = [&]() -> const Tensor& { return attn.forward(ctx, x); };
  Tensor r = check::random_tensor(ctx, y.dims(), rng);
  const Tensor& dx = attn.backward(ctx, r);
  ctx.wait();
  auto targets = parameter_targets(store);
  targets.push_back({"x", x.data(), x.numel(), dx.data()});
  check::check_gradients(ctx, forward, r, targets);
}

TEST_CASE("Block: pre-norm residual block by FD") {
  Context ctx(4);
  std::mt19937_64 rng(154);
  const VitConfig c = tiny_config();
  ParameterStore store;
  Block block(store, "blocks.0", c, 0.0f);
  store.allocate(ctx.eng);
  randomize_for_fd(store, rng, 0.5f);
  Tensor x = check::random_tensor(ctx, {2, 5, 8}, rng);
  auto forward = [&]() -> const Tensor& { return block.forward(ctx, x); };
  Tensor r = check::random_tensor(ctx, forward().dims(), rng);
  const Tensor& dx = block.backward(ctx, r);
  ctx.wait();
  auto targets = parameter_targets(store);
  targets.push_back({"x", x.data(), x.numel(), dx.data()});
  check::check_gradients(ctx, forward, r, targets);
}

TEST_CASE("VisionTransformer: timm's names and shapes, every parameter gets a gradient") {
  Context ctx(5);
  std::mt19937_64 rng(155);
  const VitConfig c = tiny_config();
  ParameterStore store;
  VisionTransformer model(store, c);
  store.allocate(ctx.eng);
  model.init_weights(ctx);
  const std::vector<std::pair<std::string, Dims>> expected = {
      {"cls_token", {1, 1, 8}},
      {"pos_embed", {1, 5, 8}},
      {"patch_embed.proj.weight", {8, 2, 4, 4}},
      {"patch_embed.proj.bias", {8}},
      {"blocks.0.norm1.weight", {8}},
      {"blocks.0.norm1.bias", {8}},
      {"blocks.0.attn.qkv.weight", {24, 8}},
      {"blocks.0.attn.qkv.bias", {24}},
      {"blocks.0.attn.proj.weight", {8, 8}},
      {"blocks.0.attn.proj.bias", {8}},
      {"blocks.0.norm2.weight", {8}},
      {"blocks.0.norm2.bias", {8}},
      {"blocks.0.mlp.fc1.weight", {16, 8}},
      {"blocks.0.mlp.fc1.bias", {16}},
      {"blocks.0.mlp.fc2.weight", {8, 16}},
      {"blocks.0.mlp.fc2.bias", {8}},
  };
  REQUIRE(store.parameters().size() == 4 + 12 * 2 + 4);
  for (size_t i = 0; i < expected.size(); ++i) {
    CHECK(store.parameters()[i].name == expected[i].first);
    CHECK(store.parameters()[i].dims == expected[i].second);
  }
  CHECK(store.parameters().back().name == "head.bias");
  CHECK_FALSE(store["pos_embed"].decay);
  CHECK_FALSE(store["cls_token"].decay);
  CHECK_FALSE(store["blocks.1.norm2.weight"].decay);
  CHECK(store["blocks.1.mlp.fc1.weight"].decay);

  Tensor patches = check::random_tensor(ctx, {3, 4, 32}, rng);
  const Tensor& logits = model.forward(ctx, patches);
  ctx.wait();
  REQUIRE(logits.dims() == Dims{3, 3});
  for (int64_t i = 0; i < logits.numel(); ++i) CHECK(std::isfinite(logits[i]));
  Tensor r = check::random_tensor(ctx, logits.dims(), rng);
  store.zero_grad();
  model.backward(ctx, r);
  ctx.wait();
  check_every_gradient(store, c);
}

TEST_CASE("VisionTransformer: whole-model gradients by FD") {
  Context ctx(6);
  std::mt19937_64 rng(156);
  const VitConfig c = tiny_config();
  ParameterStore store;
  VisionTransformer model(store, c);
  store.allocate(ctx.eng);
  randomize_for_fd(store, rng, 0.4f);
  Tensor patches = check::random_tensor(ctx, {2, 4, 32}, rng);
  auto forward = [&]() -> const Tensor& { return model.forward(ctx, patches); };
  Tensor r = check::random_tensor(ctx, forward().dims(), rng);
  model.backward(ctx, r);
  ctx.wait();
  // A deep float32 forward: a larger step keeps rounding noise below the tolerance.
  check::check_gradients(ctx, forward, r, parameter_targets(store, 6), 1e-2f);
}

TEST_CASE("VitInference: the fused path equals the layers in evaluation mode, weights followed") {
  Context ctx(7);
  std::mt19937_64 rng(157);
  for (bool qkv_bias : {true, false}) {
    CAPTURE(qkv_bias);
    VitConfig c = tiny_config();
    c.embed_dim = 12, c.num_heads = 3, c.mlp_ratio = 2.5, c.qkv_bias = qkv_bias;
    ParameterStore store;
    VisionTransformer model(store, c);
    store.allocate(ctx.eng);
    randomize_parameters(store, rng, 0.4f);
    model.train(false);
    VitInference fused(model, store, engine::Precision::f32);
    VitInference fused_bf16(model, store, engine::Precision::bf16);
    for (int64_t batch : {3, 1, 3}) {  // two plans, the first reused
      CAPTURE(batch);
      Tensor patches = check::random_tensor(ctx, {batch, 4, 32}, rng);
      Tensor want(ctx.eng, {batch, c.num_classes});
      want.copy_from(model.forward(ctx, patches));
      ctx.wait();
      CHECK(max_abs_diff(ctx, fused.forward(ctx, patches), want) < 1e-5);
      if (engine::precision_supported(engine::Precision::bf16))
        CHECK(max_abs_diff(ctx, fused_bf16.forward(ctx, patches), want) < 3e-2);
      // An optimizer step changes the weights: the packed copies must follow.
      for (engine::Parameter& p : store.parameters()) check::randomize(p.grad, rng, -1.0f, 1.0f);
      engine::Sgd{}.update(store, 0.05f);
      want.copy_from(model.forward(ctx, patches));
      CHECK(max_abs_diff(ctx, fused.forward(ctx, patches), want) < 1e-5);
    }
  }
}

TEST_CASE("VitInference: a batch larger than a chunk runs in chunks, same logits") {
  Context ctx(7);
  std::mt19937_64 rng(158);
  VitConfig c = tiny_config();
  c.img_size = 64, c.in_chans = 1, c.embed_dim = 64, c.num_heads = 4, c.depth = 1;
  ParameterStore store;
  VisionTransformer model(store, c);
  store.allocate(ctx.eng);
  randomize_parameters(store, rng, 0.2f);
  model.train(false);
  const int64_t batch = 19;  // chunks of 8 (f32) or 16 (bf16), and a last one of 3
  Tensor patches = check::random_tensor(ctx, {batch, c.num_patches(), c.patch_dim()}, rng);
  Tensor want(ctx.eng, {batch, c.num_classes});
  want.copy_from(model.forward(ctx, patches));
  ctx.wait();
  for (auto precision : {engine::Precision::f32, engine::Precision::bf16}) {
    if (!engine::precision_supported(precision)) continue;
    VitInference fused(model, store, precision);
    CAPTURE(fused.chunk_images());
    REQUIRE(fused.chunk_images() < batch);
    REQUIRE(batch % fused.chunk_images() != 0);
    CHECK(max_abs_diff(ctx, fused.forward(ctx, patches), want) <
          (precision == engine::Precision::f32 ? 1e-5 : 3e-2));
    // The chunks' plan and the remainder's share one packed copy of the weights.
    VitInference one_chunk(model, store, precision);
    Tensor first(ctx.eng, {fused.chunk_images(), c.num_patches(), c.patch_dim()});
    std::copy_n(patches.data(), first.numel(), first.data());
    one_chunk.forward(ctx, first);
    CHECK(one_chunk.packed_bytes() > 0);
    CHECK(fused.packed_bytes() == one_chunk.packed_bytes());
  }
}

TEST_CASE("VitInference: a pass is padded to a quarter-octave plan, same logits") {
  const std::vector<int64_t> sizes{1, 2, 8, 9, 10, 11, 16, 17, 20, 33, 40, 63, 64, 65, 100};
  const std::vector<int64_t> plans{1, 2, 8, 10, 10, 12, 16, 20, 20, 40, 40, 64, 64, 80, 112};
  for (size_t i = 0; i < sizes.size(); ++i) {
    CAPTURE(sizes[i]);
    CHECK(VitInference::plan_images(sizes[i]) == plans[i]);
  }
  Context ctx(7);
  std::mt19937_64 rng(159);
  VitConfig c = tiny_config();
  ParameterStore store;
  VisionTransformer model(store, c);
  store.allocate(ctx.eng);
  randomize_parameters(store, rng, 0.2f);
  model.train(false);
  VitInference fused(model, store, engine::Precision::f32);
  REQUIRE(fused.chunk_images() >= 32);
  // Every batch size up to 32 (largest last, so a padded plan follows smaller real ones), each
  // row as the layers compute it: the padding never reaches an image's logits.
  std::set<int64_t> expected;
  for (int64_t n = 1; n <= 32; ++n) {
    CAPTURE(n);
    Tensor patches = check::random_tensor(ctx, {n, c.num_patches(), c.patch_dim()}, rng);
    Tensor want(ctx.eng, {n, c.num_classes});
    want.copy_from(model.forward(ctx, patches));
    ctx.wait();
    CHECK(max_abs_diff(ctx, fused.forward(ctx, patches), want) < 1e-5);
    expected.insert(VitInference::plan_images(n));
  }
  CHECK(fused.plans() == expected.size());
  CHECK(fused.plans() == 16);  // 1..8, 10, 12, 14, 16, 20, 24, 28, 32: not 32
}

// The prefix-token and pooling variants timm has, each through both paths.
std::vector<VitConfig> variant_configs() {
  std::vector<VitConfig> out;
  VitConfig c = tiny_config();
  c.class_token = false, c.global_pool = "avg", c.fc_norm = true;  // timm's avg pooling + fc_norm
  out.push_back(c);
  c = tiny_config();
  c.reg_tokens = 2;  // registers, cls token pooled
  out.push_back(c);
  c = tiny_config();
  c.reg_tokens = 3, c.no_embed_class = true, c.global_pool = "avg", c.fc_norm = false;
  out.push_back(c);  // DINOv2's layout: no positions on the prefix; avg then the final norm
  c = tiny_config();
  c.init_values = 0.1, c.qk_norm = true, c.act_layer = "gelu_tanh";
  out.push_back(c);  // LayerScale (DeiT III, DINOv2) and qk_norm
  c = tiny_config();
  c.pre_norm = true, c.norm_eps = 1e-5, c.act_layer = "quick_gelu";
  out.push_back(c);  // CLIP's: norm_pre, no patch_embed bias, QuickGELU
  c = tiny_config();
  c.distilled = true;
  out.push_back(c);  // DeiT distilled: dist token, two heads averaged
  c = tiny_config();
  c.num_classes = 0, c.reg_tokens = 1, c.init_values = 1.0;
  out.push_back(c);  // no head: the pooled features
  c = tiny_config();
  c.class_token = false, c.global_pool = "seq";
  out.push_back(c);  // CCT's sequence pooling, no cls token
  c = tiny_config();
  c.reg_tokens = 1, c.global_pool = "seq", c.fc_norm = true;
  out.push_back(c);  // SeqPool over the patch rows only, then fc_norm
  return out;
}

TEST_CASE(
    "VisionTransformer variants: tokens, pooling, LayerScale, qk_norm, pre_norm, DeiT heads, "
    "no head: gradients by FD, both paths") {
  Context ctx(8);
  std::mt19937_64 rng(159);
  for (const VitConfig& c : variant_configs()) {
    CAPTURE(nlohmann::json(c).dump());
    ParameterStore store;
    VisionTransformer model(store, c);
    store.allocate(ctx.eng);
    CHECK((store.find("reg_token") != nullptr) == (c.reg_tokens > 0));
    CHECK((store.find("cls_token") != nullptr) == c.class_token);
    CHECK((store.find("fc_norm.weight") != nullptr) == c.fc_norm);
    CHECK((store.find("norm.weight") != nullptr) == !c.fc_norm);
    CHECK(store["pos_embed"].dims == Dims{1, c.pos_embed_len(), c.embed_dim});
    CHECK((store.find("blocks.1.ls2.gamma") != nullptr) == (c.init_values > 0));
    CHECK((store.find("blocks.0.attn.k_norm.weight") != nullptr) == c.qk_norm);
    CHECK((store.find("norm_pre.bias") != nullptr) == c.pre_norm);
    CHECK((store.find("patch_embed.proj.bias") != nullptr) == !c.pre_norm);
    CHECK((store.find("dist_token") != nullptr) == c.distilled);
    CHECK((store.find("head_dist.weight") != nullptr) == c.distilled);
    CHECK((store.find("head.weight") != nullptr) == (c.num_classes > 0));
    CHECK((store.find("attention_pool.weight") != nullptr) == (c.global_pool == "seq"));
    if (c.init_values > 0) {  // LayerScale starts at init_values
      model.init_weights(ctx);
      CHECK(store["blocks.0.ls1.gamma"].value[3] == float(c.init_values));
    }
    randomize_for_fd(store, rng, 0.4f);
    Tensor patches = check::random_tensor(ctx, {2, 4, 32}, rng);
    auto forward = [&]() -> const Tensor& { return model.forward(ctx, patches); };
    Tensor r = check::random_tensor(ctx, forward().dims(), rng);
    store.zero_grad();
    model.backward(ctx, r);
    ctx.wait();
    check_every_gradient(store, c);
    check::check_gradients(ctx, forward, r, parameter_targets(store, 6), 1e-2f);

    model.train(false);
    Tensor want(ctx.eng, {2, c.num_outputs()});
    want.copy_from(model.forward(ctx, patches));
    for (auto precision : {engine::Precision::f32, engine::Precision::bf16}) {
      if (!engine::precision_supported(precision)) continue;
      VitInference fused(model, store, precision);
      CHECK(max_abs_diff(ctx, fused.forward(ctx, patches), want) <
            (precision == engine::Precision::f32 ? 1e-5 : 3e-2));
    }
  }
}

TEST_CASE("conv stem: timm's ConvStem names, gradients by FD in training mode, both paths") {
  Context ctx(9);
  std::mt19937_64 rng(160);
  for (int64_t chans : {1, 2}) {  // one channel is already NHWC; two are transposed first
    CAPTURE(chans);
    VitConfig c = tiny_config();
    c.in_chans = chans, c.stem_channels = {3, 5}, c.stem_strides = {2, 2};
    ParameterStore store;
    VisionTransformer model(store, c);
    store.allocate(ctx.eng);
    model.init_weights(ctx);
    CHECK(store.find("patch_embed.proj.weight") == nullptr);
    CHECK(store["patch_embed.backbone.0.conv.weight"].dims == Dims{3, chans, 3, 3});
    CHECK(store.find("patch_embed.backbone.0.conv.bias") == nullptr);
    CHECK(store["patch_embed.backbone.1.conv.weight"].dims == Dims{5, 3, 3, 3});
    CHECK(store["patch_embed.backbone.1.bn.weight"].value[4] == 1.0f);
    CHECK_FALSE(store["patch_embed.backbone.1.bn.running_var"].trainable);
    CHECK_FALSE(store["patch_embed.backbone.1.bn.bias"].decay);
    CHECK(store["patch_embed.backbone.2.conv.weight"].dims == Dims{8, 5, 1, 1});
    CHECK(store["patch_embed.backbone.2.conv.bias"].dims == Dims{8});
    CHECK(model.layer_id("patch_embed.backbone.1.bn.weight") == 0);
    CHECK(c.input_dims(3) == Dims{3, chans, 8, 8});
    CHECK(c.input_patch_size() == 0);
    // 3×3 stages at 4×4 and 2×2, then the 1×1 conv on the 4 tokens: forward multiply-adds ×2.
    VitConfig plain = c;
    plain.stem_channels.clear(), plain.stem_strides.clear();
    const double stem_macs = double(16 * chans * 3 * 9 + 4 * 3 * 5 * 9 + 4 * 5 * 8);
    const double patch_macs = double(4 * plain.patch_dim() * 8);
    CHECK(c.flops_per_image() - plain.flops_per_image() ==
          doctest::Approx(2.0 * (stem_macs - patch_macs)));

    randomize_for_fd(store, rng, 0.4f);
    model.train(true);  // the stem normalises with the batch's statistics
    Tensor images = check::random_tensor(ctx, c.input_dims(3), rng);
    auto forward = [&]() -> const Tensor& { return model.forward(ctx, images); };
    Tensor r = check::random_tensor(ctx, forward().dims(), rng);
    store.zero_grad();
    model.backward(ctx, r);
    ctx.wait();
    check_every_gradient(store, c);
    // The stem's ReLUs see the batch statistics: a step of 1e-2 in its weights moves every
    // pre-activation and crosses several kinks, so the stem takes a smaller one.
    std::vector<GradTarget> stem, rest;
    for (const GradTarget& t : parameter_targets(store, 6))
      (t.name.starts_with("patch_embed.") ? stem : rest).push_back(t);
    check::check_gradients(ctx, forward, r, rest, 1e-2f);
    check::check_gradients(ctx, forward, r, stem, 1e-3f);

    // Evaluation: the running statistics, folded into the fused path's convolutions; an
    // optimizer step and new statistics must reach the packed copies.
    model.train(false);
    VitInference fused(model, store, engine::Precision::f32);
    for (int round = 0; round < 2; ++round) {
      CAPTURE(round);
      Tensor want(ctx.eng, {3, c.num_classes});
      want.copy_from(model.forward(ctx, images));
      ctx.wait();
      CHECK(max_abs_diff(ctx, fused.forward(ctx, images), want) < 1e-5);
      for (engine::Parameter& p : store.parameters())
        if (p.trainable) check::randomize(p.grad, rng, -1.0f, 1.0f);
      engine::Sgd{}.update(store, 0.05f);
      check::randomize(store["patch_embed.backbone.0.bn.running_mean"].value, rng, -0.5f, 0.5f);
      check::randomize(store["patch_embed.backbone.1.bn.running_var"].value, rng, 0.5f, 2.0f);
      store.mark_changed();
    }
  }
}

TEST_CASE("VitConfig: contradictory sizes name the flag") {
  VitConfig c = tiny_config();
  c.patch_size = 3;
  CHECK_THROWS_WITH_AS(c.validate(), "--patch-size 3 does not divide --img-size 8", engine::Error);
  c = tiny_config();
  c.num_heads = 3;
  CHECK_THROWS_WITH_AS(c.validate(), "--num-heads 3 does not divide --embed-dim 8", engine::Error);
  c = tiny_config();
  c.drop_path_rate = 1.0;
  CHECK_THROWS_AS(c.validate(), engine::Error);
  c = tiny_config();
  c.stem_channels = {4, 4}, c.stem_strides = {2};
  CHECK_THROWS_WITH_AS(c.validate(), "--stem-channels gives 2 stages but --stem-strides 1",
                       engine::Error);
  c.stem_strides = {2, 1};
  CHECK_THROWS_WITH_AS(c.validate(),
                       "--stem-strides multiply to 2, not the patch size 4 (the stem's total "
                       "stride is the token's)",
                       engine::Error);
  c.stem_strides = {2, 2}, c.stem_channels = {4, 0};
  CHECK_THROWS_WITH_AS(c.validate(), "--stem-channels: stage 1 has 0 channels, not in [1, 4096]",
                       engine::Error);
  CHECK_THROWS_WITH_AS(vit_preset("vit_huge"), doctest::Contains("unknown model 'vit_huge'"),
                       engine::Error);
  const VitConfig ti = vit_preset("vit_tiny_patch16_224");
  CHECK(ti.embed_dim == 192);
  CHECK(ti.num_heads == 3);
  CHECK(ti.flops_per_image() == doctest::Approx(2.507e9).epsilon(0.005));  // ../shared/PEERS.md
  nlohmann::json j = ti;
  CHECK(j.get<VitConfig>() == ti);
}

TEST_CASE("VitConfig: every key to_json writes is read back, unknown keys are refused") {
  VitConfig c = tiny_config();
  c.qkv_bias = false, c.drop_rate = 0.125, c.attn_drop_rate = 0.25, c.drop_path_rate = 0.5;
  c.class_token = false, c.reg_tokens = 2, c.no_embed_class = true, c.global_pool = "avg";
  c.fc_norm = false, c.init_values = 0.25, c.qk_norm = true, c.pre_norm = true;
  c.distilled = true, c.norm_eps = 1e-5, c.act_layer = "quick_gelu";
  c.stem_channels = {4}, c.stem_strides = {4};
  const nlohmann::json j = c;
  CHECK(j.get<VitConfig>() == c);
  for (const auto& [key, value] : j.items()) {  // each key matters: flipping it changes the config
    CAPTURE(key);
    nlohmann::json changed = j;
    if (value.is_boolean())
      changed[key] = !value.get<bool>();
    else if (value.is_string())
      changed[key] = "token";
    else if (value.is_number_integer())
      changed[key] = value.get<int64_t>() + 4;
    else if (value.is_array())  // the stem's lists
      changed[key] = nlohmann::json::array({8});
    else
      changed[key] = value.get<double>() / 2;
    CHECK_FALSE(changed.get<VitConfig>() == c);
  }
  nlohmann::json unknown = j;
  unknown["dynamic_img_size"] = true;
  CHECK_THROWS_WITH_AS(unknown.get<VitConfig>(), "'dynamic_img_size' is not a setting of a ViT",
                       engine::Error);
  nlohmann::json wrong = j;
  wrong["class_token"] = 1;
  CHECK_THROWS_WITH_AS(wrong.get<VitConfig>(), "'class_token' must be true or false, not 1",
                       engine::Error);
  // timm's fc_norm=None: on exactly for average pooling.
  nlohmann::json auto_norm = j;
  auto_norm["fc_norm"] = nullptr;
  CHECK(auto_norm.get<VitConfig>().fc_norm);
  auto_norm["global_pool"] = "token";
  auto_norm["class_token"] = true;
  CHECK_FALSE(auto_norm.get<VitConfig>().fc_norm);
  // The default attention is not named, so that a plain ViT's config is timm's.
  CHECK_FALSE(nlohmann::json(tiny_config()).contains("attn_layer"));
  c = tiny_config();
  c.class_token = false;
  CHECK_THROWS_WITH_AS(c.validate(),
                       "--global-pool token needs the class token (or pool by avg or seq)",
                       engine::Error);
  c = tiny_config();
  c.attn_layer = "nope";
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("--attn-layer: no attention named 'nope'"),
                       engine::Error);
}
