// "Which model": architectures by name, named presets, and model files.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "datasets/preprocess.hpp"
#include "engine/model.hpp"
#include "engine/safetensors.hpp"

namespace models {

using engine::Context;

using Factory = std::function<std::unique_ptr<engine::Model>(const nlohmann::json& config)>;

// arch -> constructor from its JSON config; the parameters are registered, not allocated
// (enough to count them).
std::unique_ptr<engine::Model> build_model(const std::string& arch, const nlohmann::json& config);
// The same, with the parameters allocated (uninitialised: call init_weights or load a file);
// inference_only: without gradients and optimizer moments (see ParameterStore::allocate).
std::unique_ptr<engine::Model> make_model(const std::string& arch, const nlohmann::json& config,
                                          Context& ctx, bool inference_only = false);

struct Preset {
  std::string name, arch, description;
  nlohmann::json config;  // the architecture's own config
  // The recipe vit train uses for this preset where the command line gives no flag: vit train
  // flags as typed ("--epochs 18 --opt sgd ..."), recipe flags only; chosen on a validation
  // split (README, "Results on Fashion-MNIST"). Empty: the flags' own defaults.
  std::string recipe;
};
const std::vector<Preset>& presets();
const Preset& preset(const std::string& name);  // throws listing the known names

// The model and everything needed to feed it and read its output.
struct LoadedModel {
  std::unique_ptr<engine::Model> model;
  datasets::Preprocess preprocess;
  std::vector<std::string> classes;
  std::map<std::string, std::string> metadata;  // the file's __metadata__, as read
};

// The model file: timm's state-dict names and shapes, and in __metadata__ (all JSON strings):
// "arch", "config", "preprocess", "classes", "vit_version", plus whatever `extra` holds.
void save_model(const std::filesystem::path& path, const engine::Model& model,
                const datasets::Preprocess& preprocess, const std::vector<std::string>& classes,
                const std::map<std::string, std::string>& extra = {},
                const std::vector<engine::TensorToWrite>& extra_tensors = {});
// Validates a model file's __metadata__ (arch, config, preprocess, classes) against itself and
// against the tensors' names, dtypes and shapes, and returns the model built but not allocated:
// nothing is allocated before the config is known to match the file. Errors name the file.
std::unique_ptr<engine::Model> inspect_model(const engine::SafetensorsFile& file,
                                             const std::vector<std::string>& extra_prefixes,
                                             datasets::Preprocess& preprocess,
                                             std::vector<std::string>& classes);
// How to load a model: at another image size, a ViT's positional embedding resampled as
// timm's resample_abs_pos_embed does (the prefix rows kept, the patch grid interpolated).
struct LoadOptions {
  int64_t img_size = 0;       // 0: the file's own
  bool pos_antialias = true;  // timm's default; false: MAE's and DeiT's interpolate_pos_embed
};

// The same, then allocates (for inference: training calls store.allocate_training) and reads
// the weights: every error names the file and the problem.
// extra_prefixes: tensor names (such as a checkpoint's optimizer state) that are not the model's.
// A folder, or a model.safetensors beside a config.json, is a hub checkpoint (models/hub.hpp).
LoadedModel load_model(const std::filesystem::path& path, Context& ctx,
                       const std::vector<std::string>& extra_prefixes = {},
                       const LoadOptions& options = {});

}  // namespace models
