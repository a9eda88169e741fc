#include "models/registry.hpp"

#include "engine/error.hpp"
#include "engine/state_dict.hpp"
#include "models/resnet.hpp"
#include "models/vit_model.hpp"

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
                                          Context& ctx) {
  auto model = build_model(arch, config);
  model->store.allocate(ctx.eng);
  return model;
}

const std::vector<Preset>& presets() {
  static const std::vector<Preset> table = [] {
    std::vector<Preset> t;
    for (const vit::VitPreset& p : vit::vit_presets())
      t.push_back({p.name, "vit", p.description, p.config});
    for (const ResNetPreset& p : resnet_presets())
      t.push_back({p.name, "resnet", p.description, p.config});
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

LoadedModel load_model(const std::filesystem::path& path, Context& ctx,
                       const std::vector<std::string>& extra_prefixes) {
  const engine::SafetensorsFile file(path);
  const std::string where = "'" + path.string() + "'";
  const auto& meta = file.metadata();
  for (const char* key : {"arch", "config", "preprocess", "classes"})
    if (!meta.count(key))
      throw Error(where + ": not a vit model file (no '" + key + "' in __metadata__)");
  LoadedModel loaded;
  loaded.metadata = meta;
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(meta.at("config"));
    loaded.preprocess = nlohmann::json::parse(meta.at("preprocess")).get<datasets::Preprocess>();
    loaded.classes = nlohmann::json::parse(meta.at("classes")).get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(where + ": malformed __metadata__: " + e.what());
  }
  try {
    loaded.preprocess.validate();
    loaded.model = make_model(meta.at("arch"), config, ctx);
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
  if (static_cast<int64_t>(loaded.classes.size()) != loaded.model->num_classes())
    throw Error(where + ": " + std::to_string(loaded.classes.size()) +
                " class names for a model of " + std::to_string(loaded.model->num_classes()) +
                " classes");
  engine::load_state_dict(loaded.model->store, file, /*strict=*/true, extra_prefixes);
  return loaded;
}

}  // namespace models
