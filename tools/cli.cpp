#include "tools/cli.hpp"

#include <algorithm>

#include "vit/config.hpp"

namespace cli {

std::vector<float> parse_floats(const std::string& text, const std::string& flag) {
  std::vector<float> values;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = text.find(',', pos);
    const std::string item =
        text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    try {
      size_t used = 0;
      values.push_back(std::stof(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw UsageError("--" + flag + ": '" + text + "' is not a comma-separated list of numbers");
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return values;
}

// "32,64" -> {32, 64}; "none" -> {} (a stem preset without its stem).
static std::vector<int64_t> parse_ints(const std::string& text, const std::string& flag) {
  if (text == "none") return {};
  std::vector<int64_t> values;
  for (float v : parse_floats(text, flag)) {
    if (v != static_cast<float>(static_cast<int64_t>(v)))
      throw UsageError("--" + flag + ": '" + text + "' is not a comma-separated list of integers");
    values.push_back(static_cast<int64_t>(v));
  }
  return values;
}

po::options_description load_options_description(bool with_img_size) {
  po::options_description opts("resolution");
  auto add = opts.add_options();
  if (with_img_size)
    add("img-size", po::value<int64_t>(),
        "run the model at this image side (a multiple of its patch size): a ViT's positional "
        "embedding is resampled, as timm's resample_abs_pos_embed does");
  add("pos-interp", po::value<std::string>()->default_value("antialias"),
      "antialias: bicubic with antialiasing, timm's default; no-antialias: plain bicubic, "
      "MAE's and DeiT's interpolate_pos_embed");
  return opts;
}

models::LoadOptions load_options(const po::variables_map& vm, const std::string& command) {
  models::LoadOptions o;
  if (vm.count("img-size")) {
    o.img_size = vm["img-size"].as<int64_t>();
    if (o.img_size < 1 || o.img_size > 8192)
      throw UsageError(command + ": --img-size must be in [1, 8192]");
  }
  const std::string interp = vm["pos-interp"].as<std::string>();
  if (interp != "antialias" && interp != "no-antialias")
    throw UsageError(command + ": --pos-interp must be antialias or no-antialias, not '" + interp +
                     "'");
  o.pos_antialias = interp == "antialias";
  return o;
}

namespace {

// The self-attention lab's flags, each a ViT setting of the same name in snake case
// (vit::lab_settings): absent from a preset's JSON, whose defaults are not written.
struct LabFlag {
  const char* flag;
  bool integer;
  const char* help;
};
const LabFlag kLabFlags[] = {
    {"pos-embed", false, "learned (default), sincos (MAE's fixed 2-D table) or none"},
    {"attn-score", false, "dot (q·kᵀ/√d, default) or additive (wᵀ tanh(W_q q + W_k k))"},
    {"attn-additive-dim", true, "additive scores' hidden size d_a (default: the head dim)"},
    {"attn-norm", false, "softmax (default), relu (relu(s)/n) or sigmoid (σ(s − log n))"},
    {"attn-window", true, "R: patches attend within Chebyshev distance R (0: global)"},
    {"attn-lowrank", true, "Linformer: keys and values projected to K rows (0: off)"},
    {"attn-features", true, "Performer: M positive random features (0: off)"},
    {"attn-redraw", true, "Performer: steps between feature redraws in training (0: never)"},
};

std::string snake(std::string flag) {
  std::replace(flag.begin(), flag.end(), '-', '_');
  return flag;
}

}  // namespace

nlohmann::json lab_default(const std::string& key) {
  const nlohmann::json defaults = vit::lab_settings(vit::VitConfig{});
  return defaults.contains(key) ? defaults[key] : nlohmann::json();
}

po::options_description model_options(const std::string& default_model) {
  po::options_description opts("model (a preset, then any size overridden)");
  auto add = opts.add_options();
  add("model", po::value<std::string>()->default_value(default_model),
      "preset name (see vit models)");
  add("img-size", po::value<int64_t>(), "image side S");
  add("patch-size", po::value<int64_t>(), "patch side P, dividing S");
  add("in-chans", po::value<int64_t>(), "1 (grayscale) or 3 (RGB)");
  add("embed-dim", po::value<int64_t>(), "D");
  add("depth", po::value<int64_t>(), "blocks");
  add("num-heads", po::value<int64_t>(), "H, dividing D");
  add("mlp-ratio", po::value<double>(), "MLP hidden = ratio × D");
  add("drop-rate", po::value<double>(), "dropout");
  add("attn-drop-rate", po::value<double>(), "attention dropout");
  add("drop-path-rate", po::value<double>(), "stochastic depth");
  add("global-pool", po::value<std::string>(),
      "what a ViT's head reads: token (the cls token), avg (the patch tokens' mean) or seq "
      "(CCT's sequence pooling: the patch tokens weighted by a learned softmax)");
  add("class-token", po::value<bool>(), "a ViT's cls token: true or false (pool by avg or seq)");
  add("widths", po::value<std::string>(), "a ResNet's stage widths, e.g. 32,64,128");
  add("depths", po::value<std::string>(), "a ResNet's blocks per stage, e.g. 1,1,1");
  add("stem-channels", po::value<std::string>(),
      "a ViT's convolutional stem: the 3×3 stages' channels, e.g. 32,64 (none: patches)");
  add("stem-strides", po::value<std::string>(),
      "the stem stages' strides, e.g. 2,2, multiplying to --patch-size");
  for (const LabFlag& f : kLabFlags) {
    if (f.integer)
      add(f.flag, po::value<int64_t>(), f.help);
    else
      add(f.flag, po::value<std::string>(), f.help);
  }
  return opts;
}

nlohmann::json model_config(const po::variables_map& vm, const models::Preset& preset,
                            const std::string& command) {
  nlohmann::json config = preset.config;
  const auto not_for_preset = [&](const std::string& flag) {
    return UsageError(command + ": --" + flag + " does not apply to " + preset.name + " (a " +
                      preset.arch + " model)");
  };
  auto apply = [&](const char* flag, auto type_tag) {
    if (!vm.count(flag)) return;
    const std::string key = snake(flag);
    if (!preset.config.contains(key)) throw not_for_preset(flag);
    config[key] = vm[flag].as<decltype(type_tag)>();
  };
  for (const char* flag : {"img-size", "patch-size", "in-chans", "embed-dim", "depth", "num-heads"})
    apply(flag, int64_t{});
  for (const char* flag : {"mlp-ratio", "drop-rate", "attn-drop-rate", "drop-path-rate"})
    apply(flag, double{});
  apply("global-pool", std::string{});
  apply("class-token", bool{});
  // Lists of integers, each for one architecture (a plain ViT's config has no stem lists).
  for (auto [flag, arch] : {std::pair{"widths", "resnet"},
                            {"depths", "resnet"},
                            {"stem-channels", "vit"},
                            {"stem-strides", "vit"}}) {
    if (!vm.count(flag)) continue;
    if (preset.arch != arch) throw not_for_preset(flag);
    config[snake(flag)] = parse_ints(vm[flag].as<std::string>(), flag);
  }
  if (config.contains("stem_channels") && config["stem_channels"].empty())
    config.erase("stem_channels"), config.erase("stem_strides");  // --stem-channels none
  for (const LabFlag& f : kLabFlags) {
    if (!vm.count(f.flag)) continue;
    if (preset.arch != "vit") throw not_for_preset(f.flag);
    nlohmann::json value = f.integer ? nlohmann::json(vm[f.flag].as<int64_t>())
                                     : nlohmann::json(vm[f.flag].as<std::string>());
    if (value == "learned") value = "learn";  // timm's name for the learned table
    config[snake(f.flag)] = value;
  }
  return config;
}

datasets::Preprocess model_preprocess(const engine::Model& model) {
  const nlohmann::json config = model.config();
  datasets::Preprocess p;
  p.img_size = config.at("img_size").get<int64_t>();
  p.in_chans = config.at("in_chans").get<int64_t>();
  p.patch_size = model.input_patch_size();
  p.mean.assign(static_cast<size_t>(p.in_chans), 0.5f);
  p.std.assign(static_cast<size_t>(p.in_chans), 0.5f);
  return p;
}

}  // namespace cli
