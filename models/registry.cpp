#include "models/registry.hpp"

#include "engine/error.hpp"
#include "engine/state_dict.hpp"
#include "models/hub.hpp"
#include "models/resnet.hpp"
#include "models/vit_model.hpp"
#include "vit/config.hpp"

namespace models {

using engine::Error;

static const std::map<std::string, Factory>& factories() {
  static const std::map<std::string, Factory> table = {
      {"vit",
       [](const nlohmann::json& config) -> std::unique_ptr<engine::Model> {
         return std::make_unique<VitModel>(config.get<vit::VitConfig>());
       }},
      {"resnet",
       [](const nlohmann::json& config) -> std::unique_ptr<engine::Model> {
         return std::make_unique<ResNet>(config.get<ResNetConfig>());
       }},
  };
  return table;
}

std::unique_ptr<engine::Model> build_model(const std::string& arch, const nlohmann::json& config) {
  auto it = factories().find(arch);
  if (it == factories().end()) throw Error("unknown architecture '" + arch + "'");
  std::unique_ptr<engine::Model> model;
  try {
    model = it->second(config);
  } catch (const nlohmann::json::exception& e) {
    throw Error("bad " + arch + " config: " + e.what());
  }
  return model;
}

std::unique_ptr<engine::Model> make_model(const std::string& arch, const nlohmann::json& config,
                                          Context& ctx, bool inference_only) {
  auto model = build_model(arch, config);
  model->store.allocate(ctx.eng, inference_only);
  return model;
}

// Each preset's own training recipe (Preset::recipe), where one has been chosen.
static std::string recipe_of(const std::string& preset) {
  static const std::map<std::string, std::string> recipes = {
      // docs/accuracy/select-cnn18: 18 epochs, 5 000 validation images, seed 0: pad 2 94.24 %,
      // with --random-erase 0.25 94.24 %, with TrivialAugment 93.08 %: the simplest of the two
      // best.
      {"cnn_resnet8_fmnist",
       "--epochs 18 --opt sgd --lr 0.1 --weight-decay 5e-4 --warmup-epochs 1 --hflip 0.5 --pad 2"},
  };
  const auto r = recipes.find(preset);
  return r == recipes.end() ? "" : r->second;
}

const std::vector<Preset>& presets() {
  static const std::vector<Preset> table = [] {
    std::vector<Preset> t;
    for (const vit::VitPreset& p : vit::vit_presets())
      t.push_back({p.name, "vit", p.description, p.config, recipe_of(p.name)});
    for (const ResNetPreset& p : resnet_presets())
      t.push_back({p.name, "resnet", p.description, p.config, recipe_of(p.name)});
    return t;
  }();
  return table;
}

const Preset& preset(const std::string& name) {
  std::string known;
  for (const Preset& p : presets()) {
    if (p.name == name) return p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  throw Error("unknown model '" + name + "' (known: " + known + ")");
}

void save_model(const std::filesystem::path& path, const engine::Model& model,
                const datasets::Preprocess& preprocess, const std::vector<std::string>& classes,
                const std::map<std::string, std::string>& extra,
                const std::vector<engine::TensorToWrite>& extra_tensors) {
  std::map<std::string, std::string> metadata = extra;
  metadata["format"] = "pt";  // what the Python safetensors loaders look for
  metadata["arch"] = model.arch();
  metadata["config"] = model.config().dump();
  metadata["preprocess"] = nlohmann::json(preprocess).dump();
  metadata["classes"] = nlohmann::json(classes).dump();
  metadata["vit_version"] = VIT_VERSION;
  engine::save_state_dict(path, model.store, metadata, extra_tensors);
}

std::unique_ptr<engine::Model> inspect_model(const engine::SafetensorsFile& file,
                                             const std::vector<std::string>& extra_prefixes,
                                             datasets::Preprocess& preprocess,
                                             std::vector<std::string>& classes) {
  const std::string where = "'" + file.path().string() + "'";
  const auto& meta = file.metadata();
  for (const char* key : {"arch", "config", "preprocess", "classes"})
    if (!meta.count(key))
      throw Error(where + ": not a vit model file (no '" + key + "' in __metadata__)");
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(meta.at("config"));
    preprocess = nlohmann::json::parse(meta.at("preprocess")).get<datasets::Preprocess>();
    classes = nlohmann::json::parse(meta.at("classes")).get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(where + ": malformed __metadata__: " + e.what());
  } catch (const Error& e) {
    throw Error(where + ": malformed __metadata__: " + e.what());
  }
  std::unique_ptr<engine::Model> model;
  try {
    preprocess.validate();
    model = build_model(meta.at("arch"), config);
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
  if (static_cast<int64_t>(classes.size()) != model->num_classes())
    throw Error(where + ": " + std::to_string(classes.size()) + " class names for a model of " +
                std::to_string(model->num_classes()) + " classes");
  nlohmann::json model_preprocess = model->config();
  model_preprocess["patch_size"] = model->input_patch_size();  // 0: whole images
  for (const char* key : {"img_size", "in_chans", "patch_size"})
    if (model_preprocess.contains(key) && model_preprocess[key] != nlohmann::json(preprocess)[key])
      throw Error(where + ": __metadata__ 'preprocess' has " + key + " " +
                  nlohmann::json(preprocess)[key].dump() + " but the model takes " +
                  model_preprocess[key].dump());
  engine::check_state_dict(model->store, file, /*strict=*/true, extra_prefixes);
  return model;
}

LoadedModel load_model(const std::filesystem::path& path, Context& ctx,
                       const std::vector<std::string>& extra_prefixes, const LoadOptions& options) {
  if (is_hub_checkpoint(path)) return load_hub_model(path, ctx, options);
  const engine::SafetensorsFile file(path);
  LoadedModel loaded;
  loaded.metadata = file.metadata();
  loaded.model = inspect_model(file, extra_prefixes, loaded.preprocess, loaded.classes);
  const int64_t size = options.img_size;
  if (size > 0 && size != loaded.preprocess.img_size) {
    // Checked at the file's size; built and read at the one asked for.
    nlohmann::json config = loaded.model->config();
    try {
      if (loaded.model->arch() == "vit") {
        const vit::VitConfig from = config.get<vit::VitConfig>();
        const vit::VitConfig to = at_image_size(from, size);
        loaded.model = make_model("vit", to, ctx, /*inference_only=*/true);
        read_vit_weights(loaded.model->store, file, {}, from, to, options.pos_antialias);
      } else {  // a CNN runs at any size: only its config's size changes
        config["img_size"] = size;
        loaded.model = make_model(loaded.model->arch(), config, ctx, /*inference_only=*/true);
        engine::load_state_dict(loaded.model->store, file, /*strict=*/true, extra_prefixes);
      }
    } catch (const Error& e) {
      throw Error("'" + path.string() + "': " + e.what());
    }
    loaded.preprocess.img_size = size;
    return loaded;
  }
  loaded.model->store.allocate(ctx.eng, /*inference_only=*/true);
  engine::load_state_dict(loaded.model->store, file, /*strict=*/true, extra_prefixes);
  return loaded;
}

}  // namespace models
