// What `vit explain` computes: attention rollout against the formula written out naively, and
// on attention built by hand, where the answer is known.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <random>

#include <nlohmann/json.hpp>
#include <opencv2/imgproc.hpp>

#include "check.hpp"
#include "datasets/overlay.hpp"
#include "datasets/preprocess.hpp"
#include "engine/error.hpp"
#include "models/explain.hpp"
#include "models/registry.hpp"
#include "models/resnet.hpp"
#include "models/vit_model.hpp"
#include "vit/inference.hpp"
#include "vit/multi_head_attention.hpp"
#include "vit/rollout.hpp"
#include "vit/vision_transformer.hpp"

using namespace vit;

namespace {

// Random attention probabilities [B, H, N, N]: each row a softmax of normal scores.
Tensor random_probs(Context& ctx, const Dims& dims, std::mt19937_64& rng) {
  Tensor p(ctx.eng, dims);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const int64_t N = dims[3], rows = p.numel() / N;
  for (int64_t r = 0; r < rows; ++r) {
    float* row = p.data() + r * N;
    double sum = 0;
    for (int64_t j = 0; j < N; ++j) sum += (row[j] = std::exp(normal(rng)));
    for (int64_t j = 0; j < N; ++j) row[j] = float(row[j] / sum);
  }
  return p;
}

// The rollout by the book, in double: fuse the heads, drop the lowest weights (ties by
// position), add I, normalise the rows, multiply the blocks' matrices, read the map.
std::vector<double> naive_rollout(const std::vector<const Tensor*>& probs, int64_t prefix,
                                  bool class_token, const RolloutOptions& o) {
  const Dims dims = probs[0]->dims();
  const int64_t B = dims[0], H = dims[1], N = dims[2], L = N - prefix;
  const int64_t drop = static_cast<int64_t>(o.discard_ratio * double(N * N));
  std::vector<double> map(size_t(B * L));
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> R(size_t(N * N), 0.0);
    for (int64_t i = 0; i < N; ++i) R[size_t(i * N + i)] = 1.0;
    for (const Tensor* p : probs) {
      std::vector<float> a(size_t(N * N));
      for (int64_t i = 0; i < N * N; ++i) {
        float v = o.head_fusion == "mean" ? 0.0f : (*p)[b * H * N * N + i];
        double s = 0;
        for (int64_t h = 0; h < H; ++h) {
          const float x = (*p)[(b * H + h) * N * N + i];
          s += x;
          if (o.head_fusion == "max") v = std::max(v, x);
          if (o.head_fusion == "min") v = std::min(v, x);
        }
        a[size_t(i)] = o.head_fusion == "mean" ? float(s / double(H)) : v;
      }
      std::vector<int64_t> order(size_t(N * N));
      std::iota(order.begin(), order.end(), int64_t{0});
      std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
        return a[size_t(x)] < a[size_t(y)] || (a[size_t(x)] == a[size_t(y)] && x < y);
      });
      for (int64_t i = 0; i < drop; ++i) a[size_t(order[size_t(i)])] = 0.0f;
      std::vector<double> A(size_t(N * N));
      for (int64_t i = 0; i < N; ++i) {
        double sum = 0;
        for (int64_t j = 0; j < N; ++j)
          sum += A[size_t(i * N + j)] = double(a[size_t(i * N + j)]) + (i == j ? 1.0 : 0.0);
        for (int64_t j = 0; j < N; ++j) A[size_t(i * N + j)] /= sum;  // rows, not columns
      }
      std::vector<double> next(size_t(N * N), 0.0);
      for (int64_t i = 0; i < N; ++i)
        for (int64_t k = 0; k < N; ++k)
          for (int64_t j = 0; j < N; ++j)
            next[size_t(i * N + j)] += A[size_t(i * N + k)] * R[size_t(k * N + j)];
      R = next;
    }
    for (int64_t j = 0; j < L; ++j) {
      double s = 0;
      if (class_token)
        s = R[size_t(prefix + j)];
      else
        for (int64_t i = prefix; i < N; ++i) s += R[size_t(i * N + prefix + j)] / double(L);
      map[size_t(b * L + j)] = s;
    }
  }
  return map;
}

}  // namespace

TEST_CASE("attention rollout equals the formula written out, rows renormalised") {
  Context ctx(71);
  std::mt19937_64 rng(711);
  struct Case {
    int64_t heads, prefix;
    bool cls;
    const char* fusion;
    double discard;
  };
  // Discarding after a mean over heads is compared at one head only: oneDNN's mean and the
  // naive one may round a near-tie apart, and then drop different weights.
  const Case cases[] = {{3, 1, true, "mean", 0.0},  {3, 1, true, "max", 0.0},
                        {3, 1, true, "min", 0.0},   {3, 2, true, "max", 0.3},
                        {3, 1, true, "min", 0.9},   {1, 1, true, "mean", 0.5},
                        {2, 0, false, "mean", 0.0}, {2, 1, false, "max", 0.2}};
  for (const Case& c : cases) {
    CAPTURE(c.fusion);
    CAPTURE(c.discard);
    CAPTURE(c.prefix);
    const int64_t N = c.prefix + 16;
    std::vector<Tensor> layers;
    std::vector<const Tensor*> probs;
    for (int l = 0; l < 3; ++l) layers.push_back(random_probs(ctx, {2, c.heads, N, N}, rng));
    for (const Tensor& t : layers) probs.push_back(&t);
    const RolloutOptions o{c.fusion, c.discard};
    const Tensor map = attention_rollout(ctx, probs, c.prefix, c.cls, o);
    REQUIRE(map.dims() == Dims{2, 16});
    check::check_close("rollout", map, naive_rollout(probs, c.prefix, c.cls, o), 1e-5, 1e-6);
  }
}

TEST_CASE("attention rollout of heads that all attend to one patch finds that patch") {
  // Every query of every head puts its whole weight on patch 5: with the residual, each block
  // sends half of every token to patch 5, so after L blocks the cls token holds 1 − 2^−L of
  // patch 5 and nothing of any other patch.
  Context ctx(72);
  const int64_t N = 1 + 9, target = 5;
  for (int64_t depth : {1, 2, 4}) {
    std::vector<Tensor> layers;
    std::vector<const Tensor*> probs;
    for (int64_t l = 0; l < depth; ++l) {
      Tensor p(ctx.eng, {1, 2, N, N});
      for (int64_t r = 0; r < 2 * N; ++r) p[r * N + 1 + target] = 1.0f;
      layers.push_back(std::move(p));
    }
    for (const Tensor& t : layers) probs.push_back(&t);
    const Tensor map = attention_rollout(ctx, probs, 1, true, {});
    for (int64_t j = 0; j < 9; ++j)
      CHECK(map[j] == doctest::Approx(j == target ? 1.0 - std::pow(0.5, double(depth)) : 0.0));
  }
}

TEST_CASE("attention rollout refuses what it cannot read, in one line") {
  Context ctx(73);
  Tensor p(ctx.eng, {1, 2, 5, 5});
  const std::vector<const Tensor*> probs = {&p};
  CHECK_THROWS_WITH_AS(attention_rollout(ctx, probs, 1, true, {"median", 0.0}),
                       "--head-fusion must be mean, max or min, got 'median'", engine::Error);
  CHECK_THROWS_WITH_AS(attention_rollout(ctx, probs, 1, true, {"mean", 1.0}),
                       doctest::Contains("--discard-ratio must be in [0, 1)"), engine::Error);
  Tensor q(ctx.eng, {1, 2, 5, 4});
  CHECK_THROWS_WITH_AS(attention_rollout(ctx, {&q}, 1, true, {}),
                       doctest::Contains("must be [B, H, N, N]"), engine::Error);
  CHECK_THROWS_AS(attention_rollout(ctx, {}, 1, true, {}), engine::Error);
}

TEST_CASE("attention probabilities: exact softmax, and the halo blocks spread over all keys") {
  Context ctx(74);
  std::mt19937_64 rng(741);
  VitConfig c;
  c.img_size = 20, c.patch_size = 4, c.in_chans = 1, c.num_classes = 3;
  c.embed_dim = 8, c.depth = 1, c.num_heads = 2, c.mlp_ratio = 2.0;
  const int64_t N = c.num_tokens(), D = c.embed_dim, H = c.num_heads, d = D / H;
  ParameterStore store;
  MultiHeadAttention attn(store, "attn", c);
  store.allocate(ctx.eng);
  check::randomize_parameters(store, rng, 0.6f);
  attn.train(false);
  Tensor x = check::random_tensor(ctx, {2, N, D}, rng);
  attn.forward(ctx, x);
  const Tensor& p = attn.probabilities(ctx);
  ctx.wait();
  REQUIRE(p.dims() == Dims{2, H, N, N});
  // softmax(q·kᵀ/√d) by the book, from the qkv projection.
  const float* W = attn.qkv.weight->value.data();
  const float* bias = attn.qkv.bias->value.data();
  std::vector<double> want(size_t(p.numel()));
  for (int64_t b = 0; b < 2; ++b) {
    std::vector<double> qkv(size_t(N * 3 * D));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < 3 * D; ++o) {
        double s = bias[o];
        for (int64_t i = 0; i < D; ++i) s += double(x[(b * N + n) * D + i]) * W[o * D + i];
        qkv[size_t(n * 3 * D + o)] = s;
      }
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i) {
        std::vector<double> s(static_cast<size_t>(N), 0.0);
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j < N; ++j) {
          for (int64_t e = 0; e < d; ++e)
            s[size_t(j)] +=
                qkv[size_t(i * 3 * D + h * d + e)] * qkv[size_t(j * 3 * D + D + h * d + e)];
          s[size_t(j)] /= std::sqrt(double(d));
          mx = std::max(mx, s[size_t(j)]);
        }
        for (double& v : s) sum += (v = std::exp(v - mx));
        for (int64_t j = 0; j < N; ++j)
          want[size_t(((b * H + h) * N + i) * N + j)] = s[size_t(j)] / sum;
      }
  }
  check::check_close("probabilities", p, want, 1e-5, 1e-6);

  // A window: the halo blocks' probabilities spread over all N keys equal the masked scores'.
  for (const char* norm : {"softmax", "sigmoid"}) {
    CAPTURE(norm);
    c.attn_window = 1, c.attn_norm = norm;
    ParameterStore stores[2];
    std::optional<MultiHeadAttention> windowed[2];
    for (int i = 0; i < 2; ++i) {
      c.attn_window_impl = i == 0 ? "mask" : "blocks";
      windowed[i].emplace(stores[i], "attn", c);
      stores[i].allocate(ctx.eng);
    }
    check::randomize_parameters(stores[0], rng, 0.6f);
    for (size_t k = 0; k < stores[0].parameters().size(); ++k)
      stores[1].parameters()[k].value.copy_from(stores[0].parameters()[k].value);
    std::vector<float> probs[2];
    for (int i = 0; i < 2; ++i) {
      windowed[i]->train(false);
      windowed[i]->forward(ctx, x);
      probs[i] = check::copy_of(windowed[i]->probabilities(ctx));
    }
    REQUIRE(probs[0].size() == size_t(2 * H * N * N));
    double gap = 0;
    for (size_t k = 0; k < probs[0].size(); ++k)
      gap = std::max(gap, double(std::abs(probs[0][k] - probs[1][k])));
    CHECK(gap < 1e-6);
    CHECK(probs[0][size_t((1 + 24) * N + 1)] == 0.0f);  // patch (4, 4) does not see (0, 0)
  }
  // Variants without a token-to-token matrix say so.
  c = VitConfig{};
  c.img_size = 16, c.patch_size = 4, c.in_chans = 1, c.num_classes = 3;
  c.embed_dim = 8, c.depth = 1, c.num_heads = 2, c.attn_features = 8;
  ParameterStore s2;
  MultiHeadAttention performer(s2, "attn", c);
  CHECK_THROWS_WITH_AS(performer.probabilities(ctx), doctest::Contains("never forms"),
                       engine::Error);
}

TEST_CASE("the fused path's attention tap equals the layers' probabilities, logits unchanged") {
  Context ctx(75);
  std::mt19937_64 rng(751);
  std::vector<VitConfig> configs;
  VitConfig base;
  base.img_size = 16, base.patch_size = 4, base.in_chans = 1, base.num_classes = 3;
  base.embed_dim = 8, base.depth = 2, base.num_heads = 2, base.mlp_ratio = 2.0;
  configs.push_back(base);
  VitConfig c = base;
  c.attn_norm = "relu", c.qk_norm = true;
  configs.push_back(c);
  c = base;
  c.attn_norm = "sigmoid", c.attn_window = 1, c.attn_window_impl = "mask";
  configs.push_back(c);
  c = base;
  c.img_size = 32, c.embed_dim = 16;  // N 65: the batch of 12 runs in several chunks
  configs.push_back(c);
  for (const VitConfig& config : configs) {
    CAPTURE(config.attn_norm);
    CAPTURE(config.img_size);
    ParameterStore store;
    VisionTransformer model(store, config);
    store.allocate(ctx.eng);
    model.init_weights(ctx);
    check::randomize_parameters(store, rng, 0.4f);
    model.train(false);
    const int64_t B = 12;
    Tensor patches = check::random_tensor(ctx, {B, config.num_patches(), config.patch_dim()}, rng);
    model.forward(ctx, patches);
    std::vector<float> want[2];
    for (int64_t block = 0; block < 2; ++block)
      want[block] = check::copy_of(model.attention_probabilities(ctx, block));
    VitInference fused(model, store, engine::Precision::f32);
    Tensor plain(ctx.eng, {B, config.num_classes});
    plain.copy_from(fused.forward(ctx, patches));
    fused.tap_attention({1, 0});
    CHECK(check::max_abs_diff(ctx, fused.forward(ctx, patches), plain) == 0.0);
    for (int64_t block = 0; block < 2; ++block) {
      const std::vector<float> got = check::copy_of(fused.attention_probabilities(block));
      REQUIRE(got.size() == want[block].size());
      double gap = 0;
      for (size_t i = 0; i < got.size(); ++i)
        gap = std::max(gap, double(std::abs(got[i] - want[block][i])));
      CHECK(gap < 1e-5);
    }
    fused.tap_attention({});
    CHECK_THROWS_AS(fused.attention_probabilities(0), engine::Error);
  }
  VitConfig performer = base;
  performer.attn_features = 8;
  ParameterStore store;
  VisionTransformer model(store, performer);
  store.allocate(ctx.eng);
  model.init_weights(ctx);
  VitInference fused(model, store, engine::Precision::f32);
  fused.tap_attention({0});
  Tensor patches =
      check::random_tensor(ctx, {2, performer.num_patches(), performer.patch_dim()}, rng);
  CHECK_THROWS_WITH_AS(fused.forward(ctx, patches), doctest::Contains("exact attention only"),
                       engine::Error);
}

namespace {

// A model behind engine::Model, allocated for training, with random weights.
std::unique_ptr<engine::Model> random_model(Context& ctx, const std::string& arch,
                                            const nlohmann::json& config, std::mt19937_64& rng) {
  auto model = models::make_model(arch, config, ctx);
  model->init_weights(ctx);
  check::randomize_parameters(model->store, rng, 0.4f);
  model->store.mark_changed();
  return model;
}

VitConfig small_vit() {
  VitConfig c;
  c.img_size = 16, c.patch_size = 4, c.in_chans = 1, c.num_classes = 3;
  c.embed_dim = 8, c.depth = 2, c.num_heads = 2, c.mlp_ratio = 2.0;
  return c;
}

}  // namespace

TEST_CASE("Grad-CAM: the head's gradient weighs the last stage's channels, then a ReLU") {
  Context ctx(81);
  std::mt19937_64 rng(811);
  models::ResNetConfig c;
  c.img_size = 8, c.in_chans = 2, c.num_classes = 4, c.widths = {4, 6}, c.depths = {1, 1};
  auto model = random_model(ctx, "resnet", c, rng);
  auto& net = dynamic_cast<models::ResNet&>(*model);
  net.train(false);
  const int64_t B = 3;
  Tensor input = check::random_tensor(ctx, {B, 2, 8, 8}, rng);
  net.forward(ctx, input);
  const std::vector<int64_t> classes{2, 0, 3};
  // The class score's gradient with respect to the last stage's activations, against central
  // differences of the head run on perturbed copies of them.
  const std::vector<float> gradient = check::copy_of(net.class_score_gradient(ctx, classes));
  {
    const Tensor& f = net.features();
    Tensor a(ctx.eng, f.dims());
    a.copy_from(f);
    const int64_t per_image = a.numel() / B, K = 4;
    const float h = 1e-2f;
    double worst = 0, largest = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
      const int64_t b = i / per_image;
      const float keep = a[i];
      a[i] = keep + h;
      const double up = net.forward_head(ctx, a)[b * K + classes[size_t(b)]];
      a[i] = keep - h;
      const double down = net.forward_head(ctx, a)[b * K + classes[size_t(b)]];
      a[i] = keep;
      const double fd = (up - down) / (2.0 * h);
      worst = std::max(worst, std::abs(fd - double(gradient[size_t(i)])));
      largest = std::max(largest, std::abs(fd));
    }
    CHECK(largest > 0);
    CHECK(worst <= 1e-3 * largest);
  }
  net.forward(ctx, input);  // the features again, as grad_cam reads them
  const Tensor map = net.grad_cam(ctx, classes);
  // The score is fc(mean over h, w of A): its gradient at A[b, y, x, k] is fc.weight[c, k] / hw
  // everywhere, so the map is relu(Σ_k fc.weight[c, k] / hw · A[b, y, x, k]).
  const Tensor& a = net.features();
  const int64_t HW = a.dim(1) * a.dim(2), C = a.dim(3);
  REQUIRE(map.dims() == Dims{B, HW});
  const Tensor& w = model->store["fc.weight"].value;
  std::vector<double> want;
  int positive = 0, zero = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < HW; ++i) {
      double s = 0;
      for (int64_t k = 0; k < C; ++k)
        s += double(w[classes[b] * C + k]) / double(HW) * a[(b * HW + i) * C + k];
      want.push_back(std::max(s, 0.0));
      (s > 0 ? positive : zero)++;
    }
  CHECK(positive > 0);  // both sides of the ReLU are exercised
  CHECK(zero > 0);
  check::check_close("grad-cam", map, want, 1e-5);
  CHECK_THROWS_WITH_AS(net.grad_cam(ctx, {0, 1}), doctest::Contains("2 classes for 3 images"),
                       engine::Error);
  CHECK_THROWS_WITH_AS(net.grad_cam(ctx, {0, 4, 1}), doctest::Contains("class 4 of 4"),
                       engine::Error);
}

TEST_CASE("Explainer: rollout and attention maps from the fused taps equal the layers'") {
  Context ctx(82);
  std::mt19937_64 rng(821);
  VitConfig base = small_vit();
  VitConfig avg = base;
  avg.class_token = false, avg.global_pool = "avg";
  VitConfig regs = base;
  regs.reg_tokens = 2;
  for (const VitConfig& c : {base, avg, regs}) {
    CAPTURE(c.global_pool);
    CAPTURE(c.reg_tokens);
    auto model = random_model(ctx, "vit", c, rng);
    auto& vm = dynamic_cast<models::VitModel&>(*model);
    const int64_t B = 3, P = c.num_prefix_tokens(), N = c.num_tokens(), L = c.num_patches();
    Tensor patches = check::random_tensor(ctx, {B, L, c.patch_dim()}, rng);
    // The reference: the layers' probabilities, rolled out and read by hand.
    vm.net.train(false);
    vm.net.forward(ctx, patches);
    std::vector<Tensor> probs;
    for (int64_t l = 0; l < c.depth; ++l) {
      probs.emplace_back(ctx.eng, Dims{B, c.num_heads, N, N});
      probs.back().copy_from(vm.net.attention_probabilities(ctx, l));
    }
    const Tensor rolled =
        attention_rollout(ctx, {&probs[0], &probs[1]}, P, c.global_pool == "token", {});

    models::Explainer rollout(ctx, *model, {});
    CHECK(rollout.options().method == "rollout");
    CHECK(rollout.note().empty() == (c.global_pool == "token"));
    const std::vector<models::Explanation> got = rollout.explain(ctx, patches);
    REQUIRE(got.size() == size_t(B));
    for (int64_t b = 0; b < B; ++b) {
      CHECK(got[b].grid_h == 4);
      REQUIRE(got[b].map.size() == size_t(L));
      for (int64_t j = 0; j < L; ++j)
        CHECK(got[b].map[j] == doctest::Approx(rolled[b * L + j]).epsilon(1e-5));
      double total = 0;
      for (float p : got[b].probabilities) total += p;
      CHECK(total == doctest::Approx(1.0).epsilon(1e-5));
    }

    models::ExplainOptions o;
    o.method = "attention", o.layer = 0, o.heads = true, o.rollout.head_fusion = "max";
    models::Explainer attention(ctx, *model, o);
    const std::vector<models::Explanation> att = attention.explain(ctx, patches);
    const int64_t H = c.num_heads;
    for (int64_t b = 0; b < B; ++b) {
      REQUIRE(att[b].heads.size() == size_t(H));
      for (int64_t j = 0; j < L; ++j) {
        // From the cls token, or averaged over the patch queries; the max over the heads taken
        // per query before the average.
        const int64_t q0 = c.global_pool == "token" ? 0 : P, q1 = c.global_pool == "token" ? 1 : N;
        double fused = 0;
        std::vector<double> heads(size_t(H), 0.0);
        for (int64_t i = q0; i < q1; ++i) {
          double m = -1;
          for (int64_t h = 0; h < H; ++h) {
            const double x = probs[0][((b * H + h) * N + i) * N + P + j];
            heads[size_t(h)] += x / double(q1 - q0);
            m = std::max(m, x);
          }
          fused += m / double(q1 - q0);
        }
        CHECK(att[b].map[j] == doctest::Approx(fused).epsilon(1e-5));
        for (int64_t h = 0; h < H; ++h)
          CHECK(att[b].heads[h][j] == doctest::Approx(heads[size_t(h)]).epsilon(1e-5));
      }
    }
  }
}

TEST_CASE("Explainer: a window run as blocks explains as the masked formulation does") {
  Context ctx(83);
  std::mt19937_64 rng(831);
  VitConfig c = small_vit();
  c.img_size = 32;  // an 8 × 8 grid
  c.attn_window = 1;
  c.attn_window_impl = "blocks";
  auto blocks = random_model(ctx, "vit", c, rng);
  c.attn_window_impl = "mask";
  auto mask = models::make_model("vit", c, ctx);
  for (size_t k = 0; k < mask->store.parameters().size(); ++k)
    mask->store.parameters()[k].value.copy_from(blocks->store.parameters()[k].value);
  mask->store.mark_changed();
  Tensor patches = check::random_tensor(ctx, {2, c.num_patches(), c.patch_dim()}, rng);
  for (const char* method : {"rollout", "attention"}) {
    CAPTURE(method);
    models::ExplainOptions o;
    o.method = method;
    models::Explainer a(ctx, *blocks, o), b(ctx, *mask, o);  // the layers; the fused taps
    const auto x = a.explain(ctx, patches), y = b.explain(ctx, patches);
    for (size_t i = 0; i < x.size(); ++i) {
      REQUIRE(x[i].map.size() == y[i].map.size());
      for (size_t j = 0; j < x[i].map.size(); ++j)
        CHECK(x[i].map[j] == doctest::Approx(y[i].map[j]).epsilon(1e-4));
      CHECK(x[i].explained_class == y[i].explained_class);
    }
  }
}

TEST_CASE("Explainer: Grad-CAM of the top class or a chosen one; refusals in one line") {
  Context ctx(84);
  std::mt19937_64 rng(841);
  models::ResNetConfig rc;
  rc.img_size = 8, rc.in_chans = 1, rc.num_classes = 3, rc.widths = {4, 4}, rc.depths = {1, 1};
  auto cnn = random_model(ctx, "resnet", rc, rng);
  Tensor images = check::random_tensor(ctx, {2, 1, 8, 8}, rng);
  models::Explainer top(ctx, *cnn, {});
  CHECK(top.options().method == "gradcam");
  for (const models::Explanation& e : top.explain(ctx, images)) {
    CHECK(e.grid_h == 4);
    CHECK(e.map.size() == 16);
    CHECK(e.explained_class == std::max_element(e.probabilities.begin(), e.probabilities.end()) -
                                   e.probabilities.begin());
  }
  models::ExplainOptions chosen;
  chosen.target_class = 2;
  models::Explainer two(ctx, *cnn, chosen);
  for (const models::Explanation& e : two.explain(ctx, images)) CHECK(e.explained_class == 2);

  auto refused = [&](engine::Model& m, models::ExplainOptions o, const char* why) {
    CAPTURE(why);
    CHECK_THROWS_WITH_AS(models::Explainer(ctx, m, o), doctest::Contains(why), engine::Error);
  };
  models::ExplainOptions o;
  o.method = "rollout";
  refused(*cnn, o, "explains a ViT");
  o = {}, o.heads = true;
  refused(*cnn, o, "--heads");
  o = {}, o.target_class = 3;
  refused(*cnn, o, "--class 3: the model has 3 classes");

  auto vit = random_model(ctx, "vit", small_vit(), rng);
  o = {}, o.method = "gradcam";
  refused(*vit, o, "explains the CNN");
  o = {}, o.method = "saliency";
  refused(*vit, o, "--method must be");
  o = {}, o.target_class = 1;
  refused(*vit, o, "do not depend on the class");
  o = {}, o.method = "attention", o.layer = 2;
  refused(*vit, o, "--layer 2: the model has 2 blocks");
  o = {}, o.method = "attention", o.layer = -3;
  refused(*vit, o, "--layer -3");
  o = {}, o.layer = 0;
  refused(*vit, o, "--layer is for --method attention");
  o = {}, o.heads = true;
  refused(*vit, o, "--heads is for --method attention");
  o = {}, o.method = "attention", o.rollout.discard_ratio = 0.5;
  refused(*vit, o, "--discard-ratio is for --method rollout");
  o = {}, o.rollout.head_fusion = "sum";
  refused(*vit, o, "--head-fusion must be");
  o = {}, o.rollout.discard_ratio = 1.0;
  refused(*vit, o, "--discard-ratio must be in [0, 1)");
  VitConfig pc = small_vit();
  pc.attn_features = 8;
  auto performer = random_model(ctx, "vit", pc, rng);
  refused(*performer, {}, "Performer");
  VitConfig lc = small_vit();
  lc.attn_lowrank = 4;
  auto linformer = random_model(ctx, "vit", lc, rng);
  refused(*linformer, {}, "Linformer");
}

TEST_CASE("heatmap_overlay: hot where the map is high, no colour for a constant map") {
  cv::Mat gray(28, 28, CV_8UC1, cv::Scalar(128));
  std::vector<float> map(16, 0.0f);
  map[0] = 5.0f;  // the top-left cell
  const cv::Mat pic = datasets::heatmap_overlay(gray, map, 4, 4, "sneaker 97.0%");
  REQUIRE(pic.cols == 224);  // scaled ×8 to reach kMinOverlaySide, the caption inside
  REQUIRE(pic.rows == 224);
  const cv::Vec3b hot = pic.at<cv::Vec3b>(40, 10), cold = pic.at<cv::Vec3b>(214, 214);
  CHECK(hot[2] > hot[0] + 40);    // red over blue (BGR)
  CHECK(cold[0] > cold[2] + 40);  // blue over red
  const cv::Mat flat = datasets::heatmap_overlay(gray, std::vector<float>(16, 0.3f), 4, 4, "x");
  CHECK(flat.at<cv::Vec3b>(100, 100) == cv::Vec3b(128, 128, 128));
  const cv::Mat same = datasets::heatmap_overlay(gray, map, 4, 4, "sneaker", 1);
  CHECK(same.size() == gray.size());  // scale 1: the image's own size
  CHECK(datasets::heatmap_overlay(gray, map, 4, 4, "x", 3).size() == cv::Size(84, 84));
  CHECK_THROWS_AS(datasets::heatmap_overlay(gray, map, 4, 4, "x", -1), engine::Error);
  std::vector<float> bad = map;
  bad[3] = std::nanf("");
  CHECK_THROWS_WITH_AS(datasets::heatmap_overlay(gray, bad, 4, 4, "x"), doctest::Contains("NaN"),
                       engine::Error);
  CHECK_THROWS_WITH_AS(datasets::heatmap_overlay(gray, map, 3, 4, "x"),
                       doctest::Contains("16 values for a 3 × 4 grid"), engine::Error);
  const cv::Mat grid = datasets::tile({pic, pic, pic}, 2);
  CHECK(grid.cols == 2 * pic.cols);
  CHECK(grid.rows == 2 * pic.rows);
  // PNG bytes that decode to the same picture.
  const cv::Mat back = datasets::decode_image(datasets::encode_png(pic), 3, "overlay.png");
  cv::Mat rgb;
  cv::cvtColor(pic, rgb, cv::COLOR_BGR2RGB);
  CHECK(cv::norm(back, rgb, cv::NORM_INF) == 0.0);
}

TEST_CASE("Explainer::resolve: resolved options resolve to themselves") {
  Context ctx(85);
  std::mt19937_64 rng(851);
  auto vit = random_model(ctx, "vit", small_vit(), rng);
  for (const char* method : {"", "rollout", "attention"}) {
    models::ExplainOptions o;
    o.method = method;
    const models::ExplainOptions once = models::Explainer::resolve(*vit, o);
    const models::ExplainOptions twice = models::Explainer::resolve(*vit, once);
    CHECK(twice.method == once.method);
    CHECK(twice.layer == once.layer);
  }
  models::ExplainOptions o;
  o.method = "attention";
  CHECK(models::Explainer::resolve(*vit, o).layer == 1);  // -1: the last of 2 blocks
}

TEST_CASE("rollout of a ViT whose weights make every head attend to one patch finds it") {
  // Every weight zero but these: the patch embedding sums a patch's pixels into channel 0; the
  // first LayerNorm's gain is 1; every query is the bias q0 = 1; a key is β·x̂₀/u₀ in every
  // channel, where x̂ is the normalised token and u₀ the x̂₀ of a token (s, 0, ..., 0). The
  // values and the MLP are zero, so no block changes the tokens. Only patch j* has pixels, so
  // its key alone is nonzero: every query in every head and block attends to it with weight
  // ≈ 1, and the rollout's cls row puts 1 − 2^−L on it and ≈ 0 elsewhere.
  Context ctx(86);
  VitConfig c = small_vit();  // 16 × 16 image, patch 4: a 4 × 4 grid; D 8, 2 heads of 4
  c.depth = 3;
  auto model = models::make_model("vit", c, ctx);
  for (engine::Parameter& p : model->store.parameters()) p.value.zero();
  const int64_t D = c.embed_dim, L = c.num_patches(), PP = c.patch_dim(), jstar = 6;
  engine::ParameterStore& store = model->store;
  for (int64_t k = 0; k < PP; ++k) store["patch_embed.proj.weight"].value[k] = 1.0f;  // row 0
  const double s = double(PP), mean = s / double(D);
  const double var = (s - mean) * (s - mean) / double(D) + double(D - 1) * mean * mean / double(D);
  const double u0 = (s - mean) / std::sqrt(var + c.norm_eps);
  const float beta = float(30.0 / std::sqrt(double(c.head_dim())));  // score 30 for j*
  for (int64_t l = 0; l < c.depth; ++l) {
    const std::string b = "blocks." + std::to_string(l) + ".";
    for (int64_t i = 0; i < D; ++i) store[b + "norm1.weight"].value[i] = 1.0f;
    Tensor& w = store[b + "attn.qkv.weight"].value;  // [3D, D]: q, k, v rows
    Tensor& bias = store[b + "attn.qkv.bias"].value;
    for (int64_t i = 0; i < D; ++i) {
      bias[i] = 1.0f;                         // q = 1
      w[(D + i) * D + 0] = float(beta / u0);  // k = β·x̂₀/u₀
    }
  }
  store.mark_changed();
  Tensor patches(ctx.eng, {1, L, PP});
  for (int64_t k = 0; k < PP; ++k) patches[jstar * PP + k] = 1.0f;

  // The layers' probabilities first: every row puts ≈ 1 on j* (the token N index P + j*).
  auto& vm = dynamic_cast<models::VitModel&>(*model);
  vm.net.train(false);
  vm.net.forward(ctx, patches);
  const int64_t N = c.num_tokens(), P = c.num_prefix_tokens();
  for (int64_t l = 0; l < c.depth; ++l) {
    const Tensor& a = vm.net.attention_probabilities(ctx, l);
    for (int64_t row = 0; row < c.num_heads * N; ++row) CHECK(a[row * N + P + jstar] > 0.999f);
  }
  models::Explainer explainer(ctx, *model, {});
  const std::vector<models::Explanation> e = explainer.explain(ctx, patches);
  const double want = 1.0 - std::pow(0.5, double(c.depth));
  for (int64_t j = 0; j < L; ++j) {
    CAPTURE(j);
    if (j == jstar)
      CHECK(e[0].map[size_t(j)] == doctest::Approx(want).epsilon(1e-3));
    else
      CHECK(e[0].map[size_t(j)] < 1e-3);
  }
}
