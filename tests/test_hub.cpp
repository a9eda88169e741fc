// Checkpoints in the Hugging Face hub's layouts (timm and transformers folders, F32, F16 and
// BF16 weights) against the torch references of tests/fixtures/export_hub_vits.py, through
// the layers and the fused path; what the readers make of their configs; what they refuse.
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include <doctest/doctest.h>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include "check.hpp"
#include "datasets/preprocess.hpp"
#include "engine/error.hpp"
#include "models/hub.hpp"
#include "models/training.hpp"
#include "models/vit_model.hpp"
#include "vit/pos_embed.hpp"

namespace fs = std::filesystem;
using engine::Context;
using engine::Tensor;

namespace {

const fs::path kHub = fs::path(VIT_FIXTURES) / "hub";

// The reference's "input<suffix>" through the model, against its "logits<suffix>".
void check_model(models::LoadedModel& loaded, const fs::path& reference,
                 const std::string& suffix = "") {
  Context ctx(0);
  auto& model = dynamic_cast<models::VitModel&>(*loaded.model);
  const vit::VitConfig& c = model.net.config;
  const engine::SafetensorsFile ref(reference);
  const int64_t n = ref.entries().at("input" + suffix).shape[0], C = c.in_chans, S = c.img_size;
  std::vector<float> images(n * C * S * S), want(n * c.num_outputs());
  ref.read_f32("input" + suffix, {n, C, S, S}, images.data());
  ref.read_f32("logits" + suffix, {n, c.num_outputs()}, want.data());
  const Tensor patches = check::patches_from_nchw(ctx, images.data(), n, C, S, c.patch_size);
  model.train(false);
  const Tensor& layers = model.net.forward(ctx, patches);  // the training layers, evaluation mode
  ctx.wait();
  check::check_close_to_largest(layers, want, "layers");
  const Tensor& fused = model.forward(ctx, patches);  // evaluation mode: the fused path
  ctx.wait();
  check::check_close_to_largest(fused, want, "fused");
}

void check_folder(const std::string& name) {
  CAPTURE(name);
  Context ctx(0);
  models::LoadedModel loaded = models::load_model(kHub / name, ctx);
  check_model(loaded, kHub / name / "reference.safetensors");
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("vit_hub_" + std::to_string(::getpid()) + "_" + std::to_string(std::rand()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// A copy of a fixture folder whose config.json is `edit`ed.
fs::path edited_copy(const TempDir& dir, const std::string& name,
                     const std::function<void(nlohmann::json&)>& edit,
                     const std::string& file = "config.json") {
  const fs::path to = dir.path / name;
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(kHub / name))
    fs::copy_file(e.path(), to / e.path().filename(), fs::copy_options::overwrite_existing);
  std::ifstream in(to / file);
  nlohmann::json j = nlohmann::json::parse(in);
  edit(j);
  std::ofstream(to / file) << j.dump();
  return to;
}

}  // namespace

TEST_CASE("hub checkpoints equal their torch references, layers and fused") {
  for (const char* name :
       {"timm_token", "timm_token_f16", "timm_avg_fc_norm_bf16", "timm_reg4_layerscale",
        "timm_qk_norm", "timm_clip_pre_norm", "timm_deit_distilled", "timm_dinov2_no_head_bf16",
        "hf_vit", "hf_vit_f16"})
    check_folder(name);
}

TEST_CASE("a checkpoint at another --img-size equals torch with timm's resampled pos_embed") {
  TempDir dir;
  for (const auto& [name, size] :
       {std::pair<std::string, int64_t>{"timm_token", 24}, {"timm_reg4_layerscale", 8}}) {
    CAPTURE(name);
    Context ctx(0);
    const fs::path ref = kHub / name / "reference.safetensors";
    const std::string suffix = "_" + std::to_string(size);
    models::LoadedModel loaded = models::load_model(kHub / name, ctx, {}, {size, true});
    CHECK(loaded.preprocess.img_size == size);
    check_model(loaded, ref, suffix);
    // Our own file at the checkpoint's size, read back at the other: the same resampling.
    const fs::path own = dir.path / (name + ".safetensors");
    models::LoadedModel original = models::load_model(kHub / name, ctx);
    models::save_model(own, *original.model, original.preprocess, original.classes);
    models::LoadedModel resized = models::load_model(own, ctx, {}, {size, true});
    check_model(resized, ref, suffix);
    // Written at the new size, it holds the resampled table and reads back as it is.
    const fs::path again = dir.path / (name + "_resized.safetensors");
    models::save_model(again, *resized.model, resized.preprocess, resized.classes);
    models::LoadedModel back = models::load_model(again, ctx);
    CHECK(back.preprocess.img_size == size);
    check_model(back, ref, suffix);
  }
  Context ctx(0);
  CHECK_THROWS_WITH_AS(
      models::load_model(kHub / "timm_token", ctx, {}, {18, true}),
      doctest::Contains("--img-size 18 is not a multiple of the model's patch size 4"),
      engine::Error);
}

TEST_CASE("hub readers: configs, preprocessing and labels as timm and transformers mean them") {
  const models::HubCheckpoint t = models::read_hub_checkpoint(kHub / "timm_token");
  CHECK(t.source == "timm vit_tiny_patch16_224");
  CHECK(t.config.embed_dim == 32);  // model_args over the architecture's 192
  CHECK(t.classes == std::vector<std::string>{"cat", "dog", "fish", "bird", "frog"});
  CHECK(t.preprocess.interpolation == "bicubic");
  CHECK(t.preprocess.crop_pct == 0.875);
  CHECK(t.preprocess.mean[2] == doctest::Approx(0.406));
  // The folder's model.safetensors names the same checkpoint.
  CHECK(models::read_hub_checkpoint(kHub / "timm_token" / "model.safetensors").config == t.config);
  CHECK(models::is_hub_checkpoint(kHub / "timm_token" / "model.safetensors"));

  const models::HubCheckpoint h = models::read_hub_checkpoint(kHub / "hf_vit");
  CHECK(h.config.norm_eps == 1e-12);
  CHECK(h.config.mlp_hidden() == 64);
  CHECK(h.classes[4] == "frog");
  // ViTImageProcessor: squash to 16 × 16 bilinear; (x/255 - 0.5)/0.5 is ours as is.
  CHECK(h.preprocess.crop_mode == "squash");
  CHECK(h.preprocess.interpolation == "bilinear");
  CHECK(h.preprocess.mean[0] == doctest::Approx(0.5));
  CHECK(h.preprocess.std[0] == doctest::Approx(0.5));

  const models::HubCheckpoint d = models::read_hub_checkpoint(kHub / "timm_dinov2_no_head_bf16");
  CHECK(d.config.num_classes == 0);
  CHECK(d.classes.empty());

  // timm's names: families, sizes, tags.
  const vit::VitConfig b = models::timm_architecture("vit_base_patch16_384");
  CHECK(b.embed_dim == 768);
  CHECK(b.img_size == 384);
  const vit::VitConfig r = models::timm_architecture("vit_large_patch14_reg4_dinov2");
  CHECK(r.reg_tokens == 4);
  CHECK(r.no_embed_class);
  CHECK(r.init_values == 1e-5);
  CHECK(r.img_size == 518);
  CHECK(models::timm_architecture("deit3_medium_patch16_224").init_values == 1e-6);
  CHECK(models::timm_architecture("deit_small_distilled_patch16_224").distilled);
  CHECK(models::timm_architecture("vit_base_patch32_clip_quickgelu_224").act_layer == "quick_gelu");
  CHECK(models::imagenet1k_classes().size() == 1000);
  CHECK(models::imagenet1k_classes()[0] == "tench");
}

TEST_CASE("hub readers refuse what they cannot run, naming the file and the key") {
  TempDir dir;
  auto refuses = [](const fs::path& p, const std::string& why) {
    Context ctx(0);
    CHECK_THROWS_WITH_AS(models::load_model(p, ctx), doctest::Contains(why.c_str()), engine::Error);
  };
  refuses(edited_copy(dir, "timm_token", [](auto& j) { j["architecture"] = "swin_tiny_224"; }),
          "architecture 'swin_tiny_224' is not one vit implements");
  refuses(
      edited_copy(dir, "timm_qk_norm", [](auto& j) { j["model_args"]["scale_mlp_norm"] = true; }),
      "model_args: 'scale_mlp_norm' = true is not implemented by vit");
  refuses(edited_copy(dir, "timm_clip_pre_norm",
                      [](auto& j) { j["model_args"]["mlp_layer"] = "swiglu"; }),
          "'mlp_layer' = \"swiglu\" is not a setting vit implements");
  // A config that does not match its tensors: the first disagreement named.
  refuses(edited_copy(dir, "timm_token_f16", [](auto& j) { j["model_args"]["depth"] = 3; }),
          "no tensor 'blocks.2.norm1.weight', which timm vit_tiny_patch16_224 as configured needs");
  refuses(edited_copy(dir, "timm_deit_distilled",
                      [](auto& j) { j["architecture"] = "deit_tiny_patch16_224"; }),
          "tensor 'pos_embed' has shape [1, 18, 32], the config implies [1, 17, 32]");
  refuses(edited_copy(dir, "hf_vit", [](auto& j) { j["model_type"] = "deit"; }),
          "'model_type' \"deit\" is not implemented");
  refuses(edited_copy(dir, "hf_vit", [](auto& j) { j["hidden_act"] = "relu"; }),
          "'hidden_act' \"relu\" is not implemented");
  refuses(edited_copy(dir, "hf_vit", [](auto& j) { j["intermediate_size"] = 96; }),
          "has shape [64, 32], the config implies [96, 32]");
  refuses(edited_copy(
              dir, "hf_vit", [](auto& j) { j["resample"] = 1; }, "preprocessor_config.json"),
          "preprocessor_config.json': 'resample' 1 is not implemented");
  // Pickles are never opened.
  const fs::path pickle_dir = dir.path / "pickled";
  fs::create_directories(pickle_dir);
  std::ofstream(pickle_dir / "pytorch_model.bin") << "not read";
  std::ofstream(pickle_dir / "config.json") << "{}";
  refuses(pickle_dir, "pytorch_model.bin': a PyTorch pickle, which can run code when loaded");
  refuses(pickle_dir / "pytorch_model.bin", "convert it once with python3");
  fs::create_directories(dir.path / "empty");
  refuses(dir.path / "empty", "not a checkpoint folder (no config.json");
}

TEST_CASE("pos_embed resampling equals torch's bicubic interpolate, with and without antialias") {
  const engine::SafetensorsFile ref(fs::path(VIT_FIXTURES) / "pos_resample.safetensors");
  for (const char* name : {"14x14_16x16", "24x24_14x14", "14x14_10x20", "7x7_3x5"}) {
    const auto& src_entry = ref.entries().at(std::string("src.") + name);
    const int64_t D = src_entry.shape[1], H = src_entry.shape[2], W = src_entry.shape[3];
    std::vector<float> src_nchw(D * H * W);
    ref.read_f32(std::string("src.") + name, src_entry.shape, src_nchw.data());
    std::vector<float> grid(H * W * D);  // ours: [H·W, D]
    for (int64_t d = 0; d < D; ++d)
      for (int64_t i = 0; i < H * W; ++i) grid[i * D + d] = src_nchw[d * H * W + i];
    for (const bool aa : {true, false}) {
      const std::string key = std::string(aa ? "aa." : "noaa.") + name;
      CAPTURE(key);
      const auto& e = ref.entries().at(key);
      const int64_t h = e.shape[2], w = e.shape[3];
      std::vector<float> want(D * h * w), got(h * w * D);
      ref.read_f32(key, e.shape, want.data());
      vit::resample_grid(grid.data(), H, W, got.data(), h, w, D, aa);
      double worst = 0;
      for (int64_t d = 0; d < D; ++d)
        for (int64_t i = 0; i < h * w; ++i)
          worst = std::max(worst, std::abs(double(got[i * D + d]) - want[d * h * w + i]));
      CHECK(worst < 1e-5);
    }
  }
  // The two filters differ: the test above could not pass with one for the other.
  const std::vector<double> a = vit::bicubic_weights(24, 14, true),
                            b = vit::bicubic_weights(24, 14, false);
  CHECK(a != b);
}

TEST_CASE("fine-tuning: --layer-decay gives each parameter group the formula's rate") {
  vit::VitConfig c = models::timm_architecture("vit_tiny_patch16_224");
  c.depth = 3, c.embed_dim = 16, c.num_heads = 2, c.img_size = 32, c.pre_norm = true;
  models::VitModel model(c);
  models::TrainConfig recipe;
  recipe.layer_decay = 0.5;
  models::apply_fine_tuning(model, recipe);
  // L = depth + 2 = 5 layers: the head at lr, block i at lr·R^(depth - i), the embeddings at
  // lr·R^(depth + 1).
  const std::map<std::string, float> want = {{"head.weight", 1.0f},
                                             {"norm.bias", 1.0f},
                                             {"blocks.2.mlp.fc1.weight", 0.5f},
                                             {"blocks.1.attn.qkv.bias", 0.25f},
                                             {"blocks.0.norm1.weight", 0.125f},
                                             {"pos_embed", 0.0625f},
                                             {"cls_token", 0.0625f},
                                             {"patch_embed.proj.weight", 0.0625f},
                                             {"norm_pre.weight", 0.0625f}};
  for (const auto& [name, scale] : want) {
    CAPTURE(name);
    CHECK(model.store[name].lr_scale == scale);
  }
  // A linear probe: the head and the final norm train, nothing else.
  models::TrainConfig probe;
  probe.freeze_backbone = true;
  models::apply_fine_tuning(model, probe);
  for (const engine::Parameter& p : model.store.parameters()) {
    CAPTURE(p.name);
    CHECK(p.trainable == (p.name.starts_with("head.") || p.name.starts_with("norm.")));
  }
}

namespace {

// The eval geometry of torchvision's Resize + CenterCrop (timm) or a plain resize (Hugging
// Face), with any OpenCV filter: to measure each filter against PIL.
cv::Mat geometry(const cv::Mat& image, bool timm, int S, double crop_pct, int flag) {
  cv::Mat out;
  if (!timm) {
    cv::resize(image, out, cv::Size(S, S), 0, 0, flag);
    return out;
  }
  const int size = int(std::floor(S / crop_pct)), h = image.rows, w = image.cols;
  const int nw = w <= h ? size : int(double(size) * w / h),
            nh = w <= h ? int(double(size) * h / w) : size;
  cv::resize(image, out, cv::Size(nw, nh), 0, 0, flag);
  const int top = int(std::nearbyint((nh - S) / 2.0)), left = int(std::nearbyint((nw - S) / 2.0));
  return out(cv::Rect(left, top, S, S)).clone();
}

double mean_abs_diff(const cv::Mat& a, const std::vector<float>& want) {
  double sum = 0;
  for (int i = 0; i < a.rows * a.cols * 3; ++i) sum += std::abs(double(a.data[i]) - want[i]);
  return sum / double(want.size());
}

}  // namespace

TEST_CASE(
    "preprocessing against PIL on photographs: each OpenCV filter measured, ours the closest") {
  const fs::path fixtures(VIT_FIXTURES);
  const engine::SafetensorsFile ref(fixtures / "resize_reference.safetensors");
  const int S = 64;
  const double crop_pct = 0.875;
  const std::pair<const char*, int> flags[] = {{"INTER_LINEAR", cv::INTER_LINEAR},
                                               {"INTER_CUBIC", cv::INTER_CUBIC},
                                               {"INTER_AREA", cv::INTER_AREA},
                                               {"INTER_LANCZOS4", cv::INTER_LANCZOS4}};
  for (const char* transform : {"timm", "hf"})
    for (const char* filter : {"bicubic", "bilinear"}) {
      std::map<std::string, double> by_flag;
      double ours = 0;
      for (const char* photo : {"astronaut", "coffee", "grace_hopper"}) {
        const cv::Mat image =
            datasets::load_image(fixtures / "photos" / (std::string(photo) + ".png"), 3);
        std::vector<float> want(S * S * 3);
        ref.read_f32(std::string(photo) + "." + transform + "." + filter, {S, S, 3}, want.data());
        for (const auto& [name, flag] : flags)
          by_flag[name] +=
              mean_abs_diff(geometry(image, transform == std::string("timm"), S, crop_pct, flag),
                            want) /
              3;
        datasets::Preprocess p;
        p.img_size = S, p.interpolation = filter;
        p.crop_pct = transform == std::string("timm") ? crop_pct : 1.0;
        p.crop_mode = transform == std::string("timm") ? "center" : "squash";
        ours += mean_abs_diff(datasets::eval_transform(image, p), want) / 3;
      }
      std::string report;
      double best = 1e9;
      for (const auto& [name, d] : by_flag) {
        report += " " + name + " " + std::to_string(d);
        best = std::min(best, d);
      }
      MESSAGE(std::string(transform)
              << " " << std::string(filter) << ": mean |OpenCV - PIL| in 0..255 levels:" << report
              << "; vit's " << ours);
      CHECK(ours <= best + 1e-9);  // vit picks the OpenCV filter closest to PIL's
    }
}
