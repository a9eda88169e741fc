#include "vit/config.hpp"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "engine/error.hpp"
#include "engine/json_read.hpp"
#include "vit/attention.hpp"

namespace vit {

using engine::require;

void VitConfig::validate() const {
  auto positive = [](int64_t v, const char* flag) {
    require(v > 0, std::string("--") + flag + " must be positive, got " + std::to_string(v));
  };
  positive(img_size, "img-size");
  positive(patch_size, "patch-size");
  positive(in_chans, "in-chans");
  require(num_classes >= 0,
          "--num-classes must not be negative, got " + std::to_string(num_classes));
  positive(embed_dim, "embed-dim");
  positive(depth, "depth");
  positive(num_heads, "num-heads");
  // Bounds far above any real ViT, so that a hostile model file cannot ask for a model that
  // exhausts memory or overflows the size arithmetic before its tensors are checked.
  auto at_most = [](int64_t v, int64_t limit, const char* flag) {
    require(v <= limit, std::string("--") + flag + " " + std::to_string(v) +
                            " exceeds the limit of " + std::to_string(limit));
  };
  at_most(img_size, 8192, "img-size");
  at_most(in_chans, 64, "in-chans");
  at_most(num_classes, 1'000'000, "num-classes");
  at_most(embed_dim, 65536, "embed-dim");
  at_most(depth, 1024, "depth");
  require(img_size % patch_size == 0, "--patch-size " + std::to_string(patch_size) +
                                          " does not divide --img-size " +
                                          std::to_string(img_size));
  require(stem_channels.size() == stem_strides.size(),
          "--stem-channels gives " + std::to_string(stem_channels.size()) +
              " stages but --stem-strides " + std::to_string(stem_strides.size()));
  require(stem_channels.size() <= 8,
          "--stem-channels: at most 8 stages, got " + std::to_string(stem_channels.size()));
  if (conv_stem()) {
    int64_t stride = 1;
    for (size_t i = 0; i < stem_channels.size(); ++i) {
      require(stem_channels[i] > 0 && stem_channels[i] <= 4096,
              "--stem-channels: stage " + std::to_string(i) + " has " +
                  std::to_string(stem_channels[i]) + " channels, not in [1, 4096]");
      require(stem_strides[i] >= 1 && stem_strides[i] <= 4,
              "--stem-strides: stage " + std::to_string(i) + " has stride " +
                  std::to_string(stem_strides[i]) + ", not in [1, 4]");
      stride *= stem_strides[i];
    }
    require(stride == patch_size, "--stem-strides multiply to " + std::to_string(stride) +
                                      ", not the patch size " + std::to_string(patch_size) +
                                      " (the stem's total stride is the token's)");
  }
  require(embed_dim % num_heads == 0, "--num-heads " + std::to_string(num_heads) +
                                          " does not divide --embed-dim " +
                                          std::to_string(embed_dim));
  require(mlp_ratio > 0 && mlp_ratio <= 64 && mlp_hidden() > 0,
          "--mlp-ratio must be in (0, 64], got " + std::to_string(mlp_ratio));
  require(num_patches() <= 65536, "--img-size " + std::to_string(img_size) + " / --patch-size " +
                                      std::to_string(patch_size) + " gives " +
                                      std::to_string(num_patches()) +
                                      " patches, more than the limit of 65536");
  require(reg_tokens >= 0 && reg_tokens <= 64,
          "--reg-tokens must be in [0, 64], got " + std::to_string(reg_tokens));
  require(global_pool == "token" || global_pool == "avg" || global_pool == "seq",
          "--global-pool must be token, avg or seq, got '" + global_pool + "'");
  require(class_token || global_pool != "token",
          "--global-pool token needs the class token (or pool by avg or seq)");
  require(attention_registered(attn_layer), "--attn-layer: no attention named '" + attn_layer +
                                                "' (known: " + attention_names() + ")");
  require(
      pos_embed == "learn" || pos_embed == "sincos" || pos_embed == "none",
      "--pos-embed must be learned (a file's 'learn'), sincos or none, got '" + pos_embed + "'");
  require(pos_embed != "sincos" || embed_dim % 4 == 0,
          "--pos-embed sincos needs --embed-dim divisible by 4, got " + std::to_string(embed_dim));
  require(attn_score == "dot" || attn_score == "additive",
          "--attn-score must be dot or additive, got '" + attn_score + "'");
  require(attn_additive_dim >= 0 && attn_additive_dim <= 4096,
          "--attn-additive-dim must be in [0, 4096] (0: the head dimension), got " +
              std::to_string(attn_additive_dim));
  require(attn_additive_dim == 0 || attn_score == "additive",
          "--attn-additive-dim applies to --attn-score additive only");
  require(attn_norm == "softmax" || attn_norm == "relu" || attn_norm == "sigmoid",
          "--attn-norm must be softmax, relu or sigmoid, got '" + attn_norm + "'");
  require(attn_window >= 0 && attn_window < std::max<int64_t>(grid(), 1),
          "--attn-window must be in [0, " + std::to_string(grid() - 1) + "] for a grid of " +
              std::to_string(grid()) + "x" + std::to_string(grid()) +
              " patches (0: global attention), got " + std::to_string(attn_window));
  require(attn_lowrank >= 0 && attn_lowrank <= num_tokens(),
          "--attn-lowrank must be in [0, " + std::to_string(num_tokens()) +
              "] (the tokens, N), got " + std::to_string(attn_lowrank));
  require(attn_lowrank == 0 || attn_window == 0,
          "--attn-lowrank (Linformer) mixes every position into each projected key: it cannot "
          "take --attn-window");
  require(
      attn_lowrank == 0 || attn_score == "dot",
      "--attn-lowrank (Linformer) takes dot-product scores only, not --attn-score " + attn_score);
  require(attn_features >= 0 && attn_features <= 65536,
          "--attn-features must be in [0, 65536], got " + std::to_string(attn_features));
  if (attn_features > 0) {  // Performer approximates softmax(q·kᵀ/√d) over all keys: nothing else
    require(attn_norm == "softmax", "--attn-norm " + attn_norm +
                                        " does not apply to Performer (--attn-features), which "
                                        "approximates softmax attention");
    require(attn_score == "dot", "--attn-score " + attn_score +
                                     " does not apply to Performer (--attn-features), whose "
                                     "kernel is the dot product's");
    require(attn_window == 0 && attn_lowrank == 0,
            "--attn-features (Performer) cannot be combined with --attn-window or --attn-lowrank");
  }
  require(attn_window_impl == "auto" || attn_window_impl == "mask" || attn_window_impl == "blocks",
          "--attn-window-impl must be auto, mask or blocks, got '" + attn_window_impl + "'");
  require(attn_window_impl != "blocks" || (attn_window > 0 && attn_score == "dot"),
          "--attn-window-impl blocks needs --attn-window R > 0 and dot-product scores");
  require(attn_redraw >= 0,
          "--attn-redraw must not be negative, got " + std::to_string(attn_redraw));
  require(attn_features > 0 || attn_redraw == VitConfig{}.attn_redraw,
          "--attn-redraw applies to Performer (--attn-features) only");
  check_attention(*this);
  require(
      init_values >= 0.0 && init_values <= 1e3,
      "--init-values must be in [0, 1000] (0: no LayerScale), got " + std::to_string(init_values));
  require(norm_eps > 0.0 && norm_eps < 1.0,
          "--norm-eps must be in (0, 1), got " + std::to_string(norm_eps));
  require(act_layer == "gelu" || act_layer == "gelu_tanh" || act_layer == "quick_gelu",
          "--act-layer must be gelu, gelu_tanh or quick_gelu, got '" + act_layer + "'");
  require(!distilled || (class_token && reg_tokens == 0 && global_pool == "token"),
          "--distilled (DeiT's dist_token) needs the class token, token pooling and no registers");
  // timm's pre-logits of a distilled model average the cls and dist rows: not implemented.
  require(!distilled || num_classes > 0, "--distilled needs a head (--num-classes > 0)");
  for (auto [rate, flag] : {std::pair{drop_rate, "drop-rate"},
                            {attn_drop_rate, "attn-drop-rate"},
                            {drop_path_rate, "drop-path-rate"}})
    require(rate >= 0.0 && rate < 1.0,
            std::string("--") + flag + " must be in [0, 1), got " + std::to_string(rate));
}

int64_t VitConfig::keys_per_query() const {
  if (attn_lowrank > 0) return attn_lowrank;
  if (attn_window > 0) {
    const int64_t side = std::min(2 * attn_window + 1, grid());
    return std::min(num_tokens(), side * side + num_prefix_tokens());
  }
  return num_tokens();
}

std::vector<int64_t> VitConfig::input_dims(int64_t batch) const {
  if (conv_stem()) return {batch, in_chans, img_size, img_size};
  return {batch, num_patches(), patch_dim()};
}

double VitConfig::flops_per_image() const {
  const double N = double(num_tokens()), L = double(num_patches()), D = double(embed_dim),
               F = double(mlp_hidden());
  double patch = L * double(patch_dim()) * D;
  if (conv_stem()) {  // each 3×3 stage at its output size (padding 1: ceil(side / stride)),
    int64_t side = img_size, in = in_chans;  // then the 1×1 convolution to D
    patch = 0;
    for (size_t i = 0; i < stem_channels.size(); ++i) {
      side = (side + stem_strides[i] - 1) / stem_strides[i];
      patch += double(side * side) * double(in * stem_channels[i] * 9);
      in = stem_channels[i];
    }
    patch += L * double(in) * D;
  }
  const double mlp = N * 2 * D * F;  // multiply-adds; attention_flops counts ×2 already
  const double heads = distilled ? 2.0 : 1.0;
  const double seq_pool = global_pool == "seq" ? 2 * L * D : 0.0;  // the scores, the weighted sum
  return 2.0 * (patch + double(depth) * mlp + heads * D * double(num_classes) + seq_pool) +
         double(depth) * attention_flops(*this);
}

void to_json(nlohmann::json& j, const VitConfig& c) {
  j = {{"img_size", c.img_size},
       {"patch_size", c.patch_size},
       {"in_chans", c.in_chans},
       {"num_classes", c.num_classes},
       {"embed_dim", c.embed_dim},
       {"depth", c.depth},
       {"num_heads", c.num_heads},
       {"mlp_ratio", c.mlp_ratio},
       {"qkv_bias", c.qkv_bias},
       {"drop_rate", c.drop_rate},
       {"attn_drop_rate", c.attn_drop_rate},
       {"drop_path_rate", c.drop_path_rate},
       {"class_token", c.class_token},
       {"reg_tokens", c.reg_tokens},
       {"no_embed_class", c.no_embed_class},
       {"global_pool", c.global_pool},
       {"fc_norm", c.fc_norm}};
  // Only a variant is named: a file of timm's own architecture carries none of our keys.
  const VitConfig plain;
  if (c.attn_layer != plain.attn_layer) j["attn_layer"] = c.attn_layer;
  if (c.init_values != plain.init_values) j["init_values"] = c.init_values;
  if (c.qk_norm) j["qk_norm"] = true;
  if (c.pre_norm) j["pre_norm"] = true;
  if (c.distilled) j["distilled"] = true;
  if (c.norm_eps != plain.norm_eps) j["norm_eps"] = c.norm_eps;
  if (c.act_layer != plain.act_layer) j["act_layer"] = c.act_layer;
  if (c.conv_stem()) j["stem_channels"] = c.stem_channels, j["stem_strides"] = c.stem_strides;
  const nlohmann::json settings = lab_settings(c), defaults = lab_settings(plain);
  for (auto it = settings.begin(); it != settings.end(); ++it)
    if (*it != defaults[it.key()]) j[it.key()] = *it;
  if (c.attn_features == 0) j.erase("attn_redraw");  // it means something for Performer only
}

nlohmann::json lab_settings(const VitConfig& c) {
  return {{"pos_embed", c.pos_embed},
          {"attn_score", c.attn_score},
          {"attn_additive_dim", c.attn_additive_dim},
          {"attn_norm", c.attn_norm},
          {"attn_window", c.attn_window},
          {"attn_lowrank", c.attn_lowrank},
          {"attn_features", c.attn_features},
          {"attn_redraw", c.attn_redraw}};
}

void from_json(const nlohmann::json& j, VitConfig& c) {
  using engine::field_double, engine::field_int, engine::json_bool, engine::json_double,
      engine::json_int, engine::json_string;
  if (!j.is_object()) throw engine::Error("a ViT config must be a JSON object, not " + j.dump());
  static const char* const known[] = {
      "img_size",       "patch_size",        "in_chans",         "num_classes",   "embed_dim",
      "depth",          "num_heads",         "mlp_ratio",        "qkv_bias",      "drop_rate",
      "attn_drop_rate", "drop_path_rate",    "class_token",      "reg_tokens",    "no_embed_class",
      "global_pool",    "fc_norm",           "attn_layer",       "init_values",   "qk_norm",
      "pre_norm",       "distilled",         "norm_eps",         "act_layer",     "pos_embed",
      "attn_score",     "attn_additive_dim", "attn_norm",        "attn_window",   "attn_lowrank",
      "attn_features",  "attn_redraw",       "attn_window_impl", "stem_channels", "stem_strides"};
  for (const auto& [key, value] : j.items())
    require(std::find(std::begin(known), std::end(known), key) != std::end(known),
            "'" + key + "' is not a setting of a ViT");
  // Every size is required: a model file that omits one is not ours to guess.
  c.img_size = field_int(j, "img_size");
  c.patch_size = field_int(j, "patch_size");
  c.in_chans = field_int(j, "in_chans");
  c.num_classes = field_int(j, "num_classes");
  c.embed_dim = field_int(j, "embed_dim");
  c.depth = field_int(j, "depth");
  c.num_heads = field_int(j, "num_heads");
  c.mlp_ratio = field_double(j, "mlp_ratio");
  c.qkv_bias = json_bool(j, "qkv_bias", true);
  c.drop_rate = json_double(j, "drop_rate", 0.0);
  c.attn_drop_rate = json_double(j, "attn_drop_rate", 0.0);
  c.drop_path_rate = json_double(j, "drop_path_rate", 0.0);
  c.class_token = json_bool(j, "class_token", true);
  c.reg_tokens = json_int(j, "reg_tokens", 0);
  c.no_embed_class = json_bool(j, "no_embed_class", false);
  c.global_pool = json_string(j, "global_pool", "token");
  // timm's fc_norm=None: on exactly for average pooling.
  c.fc_norm = j.contains("fc_norm") && !j["fc_norm"].is_null() ? json_bool(j, "fc_norm", false)
                                                               : c.global_pool == "avg";
  const VitConfig plain;
  c.attn_layer = json_string(j, "attn_layer", plain.attn_layer);
  // timm's init_values=None: no LayerScale.
  c.init_values = j.contains("init_values") && !j["init_values"].is_null()
                      ? json_double(j, "init_values", 0.0)
                      : 0.0;
  c.qk_norm = json_bool(j, "qk_norm", false);
  c.pre_norm = json_bool(j, "pre_norm", false);
  c.distilled = json_bool(j, "distilled", false);
  c.norm_eps = json_double(j, "norm_eps", plain.norm_eps);
  c.act_layer = json_string(j, "act_layer", plain.act_layer);
  c.pos_embed = json_string(j, "pos_embed", plain.pos_embed);
  c.attn_score = json_string(j, "attn_score", plain.attn_score);
  c.attn_additive_dim = json_int(j, "attn_additive_dim", plain.attn_additive_dim);
  c.attn_norm = json_string(j, "attn_norm", plain.attn_norm);
  c.attn_window = json_int(j, "attn_window", plain.attn_window);
  c.attn_lowrank = json_int(j, "attn_lowrank", plain.attn_lowrank);
  c.attn_features = json_int(j, "attn_features", plain.attn_features);
  c.attn_redraw = json_int(j, "attn_redraw", plain.attn_redraw);
  c.stem_channels = j.contains("stem_channels")
                        ? engine::json_ints(j["stem_channels"], "stem_channels")
                        : std::vector<int64_t>{};
  c.stem_strides = j.contains("stem_strides") ? engine::json_ints(j["stem_strides"], "stem_strides")
                                              : std::vector<int64_t>{};
  // Read when a command passes it (vit bench --attn-window-impl); to_json never writes it.
  c.attn_window_impl = json_string(j, "attn_window_impl", plain.attn_window_impl);
}

static VitConfig make(int64_t img, int64_t patch, int64_t chans, int64_t dim, int64_t depth,
                      int64_t heads, int64_t classes) {
  VitConfig c;
  c.img_size = img, c.patch_size = patch, c.in_chans = chans, c.embed_dim = dim;
  c.depth = depth, c.num_heads = heads, c.num_classes = classes;
  return c;
}

static VitConfig with_stem(VitConfig c, std::vector<int64_t> channels,
                           std::vector<int64_t> strides) {
  c.stem_channels = std::move(channels), c.stem_strides = std::move(strides);
  return c;
}

const std::vector<VitPreset>& vit_presets() {
  static const std::vector<VitPreset> presets = {
      {"vit_tiny_patch16_224", "timm ViT-Ti/16, 5.7M parameters",
       make(224, 16, 3, 192, 12, 3, 1000)},
      {"vit_small_patch16_224", "timm ViT-S/16, 22M parameters",
       make(224, 16, 3, 384, 12, 6, 1000)},
      {"vit_base_patch16_224", "timm ViT-B/16, 86M parameters",
       make(224, 16, 3, 768, 12, 12, 1000)},
      {"vit_fmnist_patch4", "28x28 grayscale, patch 4 (49 tokens + cls), D 128, depth 6",
       make(28, 4, 1, 128, 6, 4, 10)},
      {"vit_fmnist_patch7", "28x28 grayscale, patch 7 (16 tokens + cls), D 128, depth 6",
       make(28, 7, 1, 128, 6, 4, 10)},
      {"vit_fmnist_convstem",
       "28x28 grayscale, conv stem 32-64 (stride 4: 49 tokens + cls), D 128, depth 6",
       with_stem(make(28, 4, 1, 128, 6, 4, 10), {32, 64}, {2, 2})},
      {"vit_micro_patch4_32", "32x32 colour (CIFAR-sized), patch 4, D 192, depth 6",
       make(32, 4, 3, 192, 6, 3, 10)},
      {"vit_micro_patch8_64", "64x64 colour, patch 8, D 192, depth 6",
       make(64, 8, 3, 192, 6, 3, 10)},
  };
  return presets;
}

VitConfig vit_preset(const std::string& name) {
  std::string known;
  for (const VitPreset& p : vit_presets()) {
    if (name == p.name) return p.config;
    known += (known.empty() ? "" : ", ") + std::string(p.name);
  }
  throw engine::Error("unknown model '" + name + "' (known: " + known + ")");
}

}  // namespace vit
