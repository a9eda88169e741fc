// The attention seam, shown from this file alone: a second variant, attention with its scores
// replaced by zeros (every token averages the values of all N tokens uniformly), is one class
// and one registration line, and then trains, runs in the fused path, saves and loads as any
// ViT does.
#include <doctest/doctest.h>

#include <unistd.h>
#include <filesystem>

#include "check.hpp"
#include "engine/batched_matmul.hpp"
#include "engine/optim.hpp"
#include "engine/trainer.hpp"
#include "models/registry.hpp"
#include "models/vit_model.hpp"
#include "vit/attention.hpp"

using namespace vit;
using dnnl::memory;

namespace {

class UniformAttention : public Attention {
 public:
  UniformAttention(ParameterStore& store, const std::string& prefix, const VitConfig& c)
      : v(store, prefix + ".v", c.embed_dim, c.embed_dim),
        proj(store, prefix + ".proj", c.embed_dim, c.embed_dim) {}

  const Tensor& forward(Context& ctx, const Tensor& x) override {
    const int64_t B = x.dim(0), N = x.dim(1), D = x.dim(2);
    Buffers& buf = buffers_.get(x.dims(), [&] {
      auto b = std::make_unique<Buffers>();
      b->uniform = Tensor(ctx.eng, {B, N, N});
      std::fill_n(b->uniform.data(), b->uniform.numel(), 1.0f / float(N));
      b->diff_values = Tensor(ctx.eng, {B, N, D});
      return b;
    });
    const Tensor& values = v.forward(ctx, x);
    const Tensor& mixed = mix.forward(ctx, buf.uniform.as_view(), values.as_view());
    return proj.forward(ctx, mixed);
  }
  const Tensor& backward(Context& ctx, const Tensor& diff_dst) override {
    Buffers& buf = buffers_.current("UniformAttention");
    const Tensor& d_mixed = proj.backward(ctx, diff_dst);
    mix.backward(ctx, d_mixed, View{}, buf.diff_values.as_view());  // the weights are constant
    return v.backward(ctx, buf.diff_values);
  }
  void train(bool) override {}
  void set_precision(engine::Precision p) override {
    v.set_precision(p);
    proj.set_precision(p);
  }
  void init_weights(Context& ctx) override {
    init_linear(ctx, v);
    init_linear(ctx, proj);
  }
  void share_gradients(const std::string&) override {}

  struct Fused : FusedStep {
    engine::Linear::Fused v, proj;
    dnnl::matmul mix;
    memory normed, values, uniform, mixed, x;
    void run(dnnl::stream& s) override {
      v.run(s, normed, values);
      mix.execute(s, {{DNNL_ARG_SRC, uniform}, {DNNL_ARG_WEIGHTS, values}, {DNNL_ARG_DST, mixed}});
      proj.run(s, mixed, x);
    }
  };
  std::unique_ptr<FusedStep> fused(FusedBuild& f, const FusedTokens& t) const override {
    const int64_t B = t.images, N = t.tokens, D = v.in_features;
    auto p = std::make_unique<Fused>();
    p->normed = t.normed;
    p->x = t.x;
    p->values = f.buffer("uniform.values", engine::fused_desc({B, N, D}, f.low()));
    p->mixed = f.buffer("uniform.mixed", engine::fused_desc({B, N, D}, f.low()));
    memory uniform_f32(engine::fused_desc({B, N, N}, memory::data_type::f32), f.ctx.eng);
    std::fill_n(static_cast<float*>(uniform_f32.get_data_handle()), B * N * N, 1.0f / float(N));
    p->uniform = memory(engine::fused_desc({B, N, N}, f.low()), f.ctx.eng);
    dnnl::reorder(uniform_f32, p->uniform).execute(f.ctx.strm, uniform_f32, p->uniform);
    f.ctx.wait();
    const memory::desc rows = engine::fused_desc({B * N, D}, f.low());
    p->v = v.fused(f, t.normed.get_desc(), rows);
    p->mix = dnnl::matmul(
        {{p->uniform.get_desc(), p->values.get_desc(), p->mixed.get_desc()}, f.ctx.eng});
    dnnl::post_ops add_residual;
    add_residual.append_sum(1.0f);
    p->proj = proj.fused(f, rows, t.x.get_desc(), add_residual, 0, -1, 1.0f, t.out_scale);
    return p;
  }

  engine::Linear v, proj;
  engine::BatchedMatmul mix;  // uniform [B, N, N] · values [B, N, D]

 private:
  struct Buffers {
    Tensor uniform, diff_values;
  };
  engine::PlanCache<Buffers> buffers_;
};

// The registration line.
const bool registered = register_attention(
    "uniform_test", [](ParameterStore& store, const std::string& prefix, const VitConfig& c) {
      return std::make_unique<UniformAttention>(store, prefix, c);
    });

nlohmann::json variant_config() {
  return {{"img_size", 8},
          {"patch_size", 4},
          {"in_chans", 1},
          {"num_classes", 3},
          {"embed_dim", 8},
          {"depth", 2},
          {"num_heads", 2},
          {"mlp_ratio", 2.0},
          {"qkv_bias", true},
          {"drop_rate", 0.0},
          {"attn_layer", "uniform_test"}};
}

}  // namespace

TEST_CASE("attention variant: registered from a test file, its layer checked by FD") {
  REQUIRE(registered);
  CHECK_FALSE(register_attention("uniform_test", nullptr));  // the name is taken
  CHECK(attention_names().find("uniform_test") != std::string::npos);
  Context ctx(31);
  std::mt19937_64 rng(311);
  const VitConfig c = variant_config().get<VitConfig>();
  ParameterStore store;
  auto attn = make_attention(store, "attn", c);
  REQUIRE(dynamic_cast<UniformAttention*>(attn.get()) != nullptr);
  store.allocate(ctx.eng);
  for (engine::Parameter& p : store.parameters()) check::randomize(p.value, rng, -0.5f, 0.5f);
  Tensor x = check::random_tensor(ctx, {2, 5, 8}, rng);
  const Tensor& y = attn->forward(ctx, x);
  ctx.wait();
  // Every token's output is the same: the average of all values, projected.
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t n = 1; n < 5; ++n)
      for (int64_t i = 0; i < 8; ++i)
        CHECK(y[(b * 5 + n) * 8 + i] == doctest::Approx(y[b * 40 + i]));
  auto forward = [&]() -> const Tensor& { return attn->forward(ctx, x); };
  Tensor r = check::random_tensor(ctx, y.dims(), rng);
  const Tensor& dx = attn->backward(ctx, r);
  ctx.wait();
  std::vector<check::GradTarget> targets;
  for (engine::Parameter& p : store.parameters())
    targets.push_back({p.name, p.value.data(), p.value.numel(), p.grad.data()});
  targets.push_back({"x", x.data(), x.numel(), dx.data()});
  check::check_gradients(ctx, forward, r, targets);
}

TEST_CASE("attention variant: trains, runs fused, saves and loads through the model file") {
  Context ctx(32);
  std::mt19937_64 rng(321);
  auto model = models::make_model("vit", variant_config(), ctx);
  model->init_weights(ctx);
  for (const char* name : {"blocks.0.attn.v.weight", "blocks.1.attn.proj.bias"})
    CHECK(model->store.find(name) != nullptr);
  CHECK(model->store.find("blocks.0.attn.qkv.weight") == nullptr);

  // Training: the loss on a fixed batch falls.
  Tensor patches = check::random_tensor(ctx, {6, 4, 16}, rng);
  const std::vector<int> labels{0, 1, 2, 0, 1, 2};
  engine::SoftmaxCrossEntropy loss;
  engine::Optimizer opt;
  model->train(true);
  const float first =
      engine::train_step(ctx, *model, loss, opt, patches, labels, nullptr, 3e-3f, nullptr);
  float last = first;
  for (int step = 0; step < 30; ++step)
    last = engine::train_step(ctx, *model, loss, opt, patches, labels, nullptr, 3e-3f, nullptr);
  CHECK(last < 0.5f * first);

  // The fused path (evaluation-mode forward of VitModel) equals the layers.
  auto& vit_model = dynamic_cast<models::VitModel&>(*model);
  model->train(false);
  Tensor layers(ctx.eng, {6, 3});
  layers.copy_from(vit_model.net.forward(ctx, patches));
  ctx.wait();
  Tensor fused(ctx.eng, {6, 3});
  fused.copy_from(model->forward(ctx, patches));
  ctx.wait();
  for (int64_t i = 0; i < layers.numel(); ++i)
    CHECK(fused[i] == doctest::Approx(layers[i]).epsilon(1e-5));
  if (engine::precision_supported(engine::Precision::bf16)) {
    model->set_precision(engine::Precision::bf16);
    const Tensor& low = model->forward(ctx, patches);
    ctx.wait();
    for (int64_t i = 0; i < layers.numel(); ++i) CHECK(std::abs(low[i] - layers[i]) < 3e-2);
    model->set_precision(engine::Precision::f32);
  }

  // Save and load: the file names the variant, and the loaded model computes the same logits.
  const std::filesystem::path path = std::filesystem::temp_directory_path() /
                                     ("vit_variant_" + std::to_string(::getpid()) + ".safetensors");
  datasets::Preprocess pre;
  pre.img_size = 8, pre.in_chans = 1, pre.patch_size = 4, pre.mean = {0.5f}, pre.std = {0.5f};
  models::save_model(path, *model, pre, {"a", "b", "c"});
  models::LoadedModel loaded = models::load_model(path, ctx);
  std::filesystem::remove(path);
  CHECK(loaded.metadata.at("config").find("\"attn_layer\":\"uniform_test\"") != std::string::npos);
  CHECK(loaded.model->config() == model->config());
  loaded.model->train(false);
  const Tensor& again = loaded.model->forward(ctx, patches);
  ctx.wait();
  for (int64_t i = 0; i < layers.numel(); ++i) CHECK(again[i] == fused[i]);
}
