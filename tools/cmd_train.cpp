// vit train: a classifier from an image folder.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <optional>
#include <sstream>

#include "datasets/image_folder.hpp"
#include "datasets/loader.hpp"
#include "engine/error.hpp"
#include "models/registry.hpp"
#include "models/training.hpp"
#include "tools/cli.hpp"

namespace cli {

namespace {

std::atomic<int> g_stop{0};  // the signal received: the one thing a handler may touch
extern "C" void on_signal(int signo) {
  g_stop.store(signo);
}

// The recipe flags and where each lands in TrainConfig's JSON form. One table builds the recipe
// and, on --resume, finds the flags given that contradict the checkpoint's recipe.
struct RecipeFlag {
  const char* flag;
  const char* key;
  const char* section = nullptr;  // "augment": inside the recipe's augment object
};
const RecipeFlag kRecipeFlags[] = {
    {"epochs", "epochs"},
    {"batch-size", "batch_size"},
    {"lr", "lr"},
    {"min-lr", "min_lr"},
    {"warmup-lr", "warmup_lr"},
    {"warmup-epochs", "warmup_epochs"},
    {"opt", "opt"},
    {"momentum", "momentum"},
    {"weight-decay", "weight_decay"},
    {"smoothing", "label_smoothing"},
    {"clip-grad", "clip_grad"},
    {"precision", "precision"},
    {"seed", "seed"},
    {"subset", "subset"},
    {"val-split", "val_split"},
    {"layer-decay", "layer_decay"},
    {"freeze-backbone", "freeze_backbone"},
    {"model-ema-decay", "model_ema_decay"},
    {"crop", "crop", "augment"},
    {"pad", "pad", "augment"},
    {"hflip", "hflip", "augment"},
    {"auto-augment", "auto_augment", "augment"},
    {"random-erase", "random_erase", "augment"},
    {"mixup", "mixup_alpha", "augment"},
    {"cutmix", "cutmix_alpha", "augment"},
    {"mix-prob", "mix_prob", "augment"},
    {"switch-prob", "switch_prob", "augment"},
};

nlohmann::json flag_json(const po::variable_value& v) {
  const boost::any& a = v.value();
  if (const auto* i = boost::any_cast<int64_t>(&a)) return *i;
  if (const auto* u = boost::any_cast<uint64_t>(&a)) return *u;
  if (const auto* d = boost::any_cast<double>(&a)) return *d;
  if (const auto* t = boost::any_cast<std::string>(&a)) return *t;
  if (const auto* b = boost::any_cast<bool>(&a)) return *b;
  throw std::logic_error("vit train: a recipe flag of an unexpected type");
}

nlohmann::json& slot(nlohmann::json& recipe, const RecipeFlag& f) {
  return f.section ? recipe[f.section][f.key] : recipe[f.key];
}

bool given(const po::variables_map& vm, const char* flag) {
  return vm.count(flag) && !vm[flag].defaulted();
}

// The recipe: each flag as given, else as the preset's recipe gives it (`preset`, parsed from
// Preset::recipe; null for a resumed or fine-tuned run), else its default.
models::TrainConfig recipe_from_flags(const po::variables_map& vm,
                                      const po::variables_map* preset = nullptr) {
  const auto in_preset = [&](const char* flag) { return preset && given(*preset, flag); };
  nlohmann::json j = models::TrainConfig{};
  for (const RecipeFlag& f : kRecipeFlags)
    slot(j, f) =
        flag_json(!given(vm, f.flag) && in_preset(f.flag) ? (*preset)[f.flag] : vm[f.flag]);
  // --pad 2 alone asks for that padding, as before crop "auto" was the default; so does a
  // preset's, unless the command line names the padding alone.
  const bool crop_named = given(vm, "crop") || (in_preset("crop") && !given(vm, "pad"));
  if (!crop_named && (given(vm, "pad") || in_preset("pad"))) j["augment"]["crop"] = "pad";
  parse_precision_flag(vm, "vit train");  // a usage error before the recipe's own check
  models::TrainConfig recipe = j.get<models::TrainConfig>();
  recipe.validate();
  return recipe;
}

// A resumed run takes its model, recipe and data selection from the checkpoint: a flag given
// with another value than the checkpoint's is refused, naming both.
void refuse_contradictions(const po::variables_map& vm, const models::Resumed& resumed,
                           const std::string& path) {
  const auto contradiction = [&](const std::string& flag, const nlohmann::json& value,
                                 const std::string& key, const nlohmann::json& saved) {
    auto text = [](const nlohmann::json& v) {
      return v.is_string() ? v.get<std::string>() : v.dump();
    };
    return UsageError("vit train: --" + flag + " " + text(value) +
                      " contradicts the checkpoint's " + key + " " + text(saved) + " ('" + path +
                      "'); a resumed run keeps its checkpoint's model, recipe and data selection");
  };
  nlohmann::json saved = resumed.recipe;
  for (const RecipeFlag& f : kRecipeFlags) {
    if (!given(vm, f.flag)) continue;
    const nlohmann::json value = flag_json(vm[f.flag]);
    if (value != slot(saved, f)) throw contradiction(f.flag, value, f.key, slot(saved, f));
  }
  if (given(vm, "pad") && !given(vm, "crop") && resumed.recipe.augment.crop != "pad")
    throw contradiction("pad", vm["pad"].as<int64_t>(), "augment.crop",
                        resumed.recipe.augment.crop);
  if (given(vm, "val-data") && resumed.recipe.val_split > 0)
    throw contradiction("val-data", vm["val-data"].as<std::string>(), "val_split",
                        resumed.recipe.val_split);
  const engine::Model& model = *resumed.loaded.model;
  const nlohmann::json config = model.config();
  const models::Preset& preset = models::preset(vm["model"].as<std::string>());
  if (given(vm, "model") && preset.arch != model.arch())
    throw contradiction("model", preset.name, "architecture", model.arch());
  nlohmann::json want = model_config(vm, preset, "vit train");
  for (const auto& [key, value] : want.items()) {
    std::string flag = key;
    std::replace(flag.begin(), flag.end(), '_', '-');
    const bool asked = given(vm, flag.c_str()) || (given(vm, "model") && key != "num_classes");
    // A lab setting the file does not name has its default.
    const nlohmann::json in_file = config.contains(key) ? config[key] : lab_default(key);
    if (!asked || in_file.is_null() || in_file == value) continue;
    if (given(vm, flag.c_str())) throw contradiction(flag, value, key, in_file);
    throw contradiction("model", preset.name + " (" + key + " " + value.dump() + ")", key, in_file);
  }
  const datasets::Preprocess& pre = resumed.loaded.preprocess;
  if (given(vm, "mean") && parse_floats(vm["mean"].as<std::string>(), "mean") != pre.mean)
    throw contradiction("mean", vm["mean"].as<std::string>(), "mean", pre.mean);
  if (given(vm, "std") && parse_floats(vm["std"].as<std::string>(), "std") != pre.std)
    throw contradiction("std", vm["std"].as<std::string>(), "std", pre.std);
  if (given(vm, "crop-pct") && vm["crop-pct"].as<double>() != pre.crop_pct)
    throw contradiction("crop-pct", vm["crop-pct"].as<double>(), "crop_pct", pre.crop_pct);
}

// The model to fine-tune: the checkpoint's weights (its positional embedding resampled when
// --img-size asks for another size), and a new head when the folder's classes are not the
// checkpoint's.
std::unique_ptr<engine::Model> init_from(const std::string& path, const models::LoadOptions& load,
                                         const std::vector<std::string>& classes,
                                         engine::Context& ctx, datasets::Preprocess& preprocess,
                                         models::TrainOutputs& outputs) {
  models::LoadedModel init = models::load_model(path, ctx, {"optimizer."}, load);
  preprocess = init.preprocess;
  outputs.metadata["init"] = path;
  if (init.metadata.count("source")) outputs.metadata["init_source"] = init.metadata.at("source");
  if (init.classes == classes) return std::move(init.model);
  nlohmann::json config = init.model->config();
  config["num_classes"] = static_cast<int64_t>(classes.size());
  auto net = models::make_model(init.model->arch(), config, ctx);
  net->init_weights(ctx);  // the head's init; everything else is copied over it
  const std::vector<std::string> head = net->head_prefixes();
  for (engine::Parameter& p : net->store.parameters()) {
    const bool in_head = std::any_of(head.begin(), head.end(),
                                     [&](const std::string& h) { return p.name.starts_with(h); });
    if (!in_head) p.value.copy_from(init.model->store[p.name].value);
  }
  net->store.mark_changed();
  std::printf("%s has %zu classes, the folder %zu: the head is re-initialised\n", path.c_str(),
              init.classes.size(), classes.size());
  return net;
}

}  // namespace

int run_train(const std::vector<std::string>& args) {
  po::options_description data_opts("data");
  auto add_data = data_opts.add_options();
  add_data("data", po::value<std::string>(), "training image folder: one sub-folder per class");
  add_data("val-data", po::value<std::string>(), "validation image folder (the same class names)");
  add_data("val-split", po::value<double>()->default_value(0.0),
           "or: hold out this fraction of --data, stratified");
  add_data("subset", po::value<int64_t>()->default_value(0),
           "train on a stratified subset of N images (0: all)");
  add_data("strict", "an unreadable image is an error (default: skipped with a warning)");
  add_data("cache-mb", po::value<int64_t>()->default_value(4096),
           "decoded images are kept in memory when they fit in this many MB; otherwise they are "
           "decoded again every epoch by the loader threads");
  add_data("workers", po::value<int>()->default_value(1), "loader threads building batches ahead");

  po::options_description model_opts = model_options("vit_fmnist_patch4");
  auto add_model = model_opts.add_options();
  add_model("mean", po::value<std::string>(),
            "normalization mean per channel, e.g. 0.5,0.5,0.5 (default 0.5)");
  add_model("std", po::value<std::string>(), "normalization std per channel (default 0.5)");
  add_model("crop-pct", po::value<double>()->default_value(1.0),
            "evaluation: resize to S / crop-pct, centre crop S");
  add_model("init", po::value<std::string>(),
            "fine-tune: start from this model file or checkpoint folder (timm, Hugging Face), "
            "its preprocessing and, unless the folder's classes differ, its head; --img-size "
            "resamples its positional embedding");

  po::options_description recipe_opts("recipe");
  auto add_recipe = recipe_opts.add_options();
  add_recipe("epochs", po::value<int64_t>()->default_value(10), "");
  add_recipe("batch-size", po::value<int64_t>()->default_value(128), "");
  add_recipe("lr", po::value<double>()->default_value(1e-3), "peak learning rate");
  add_recipe("min-lr", po::value<double>()->default_value(1e-5),
             "learning rate at the end of the cosine");
  add_recipe("warmup-lr", po::value<double>()->default_value(1e-6),
             "learning rate at the first step");
  add_recipe("warmup-epochs", po::value<double>()->default_value(1.0), "linear warmup length");
  add_recipe("opt", po::value<std::string>()->default_value("adamw"), "adamw or sgd");
  add_recipe("momentum", po::value<double>()->default_value(0.9), "SGD momentum");
  add_recipe("weight-decay", po::value<double>()->default_value(0.05),
             "not on biases, norms, pos_embed, cls_token");
  add_recipe("smoothing", po::value<double>()->default_value(0.1), "label smoothing");
  add_recipe("clip-grad", po::value<double>()->default_value(0.0),
             "global gradient-norm limit (0: none)");
  add_recipe("crop", po::value<std::string>()->default_value("auto"),
             "augmentation crop: auto (none below 48 epochs, then pad-and-crop by 2, at most "
             "--pad), none, pad (pad-and-crop) or rrc");
  add_recipe("pad", po::value<int64_t>()->default_value(4),
             "padding of the pad crop (given alone: --crop pad; with auto: its largest)");
  add_recipe("hflip", po::value<double>()->default_value(0.0), "horizontal flip probability");
  add_recipe("auto-augment", po::value<std::string>()->default_value("none"),
             "none or ta_wide (TrivialAugmentWide: one of 14 operations at a random magnitude)");
  add_recipe("random-erase", po::value<double>()->default_value(0.0), "random erasing probability");
  add_recipe("mixup", po::value<double>()->default_value(0.0), "mixup alpha (0: off)");
  add_recipe("cutmix", po::value<double>()->default_value(0.0), "cutmix alpha (0: off)");
  add_recipe("mix-prob", po::value<double>()->default_value(1.0), "probability of mixing a batch");
  add_recipe("switch-prob", po::value<double>()->default_value(0.5),
             "cutmix rather than mixup, with both on");
  add_recipe("layer-decay", po::value<double>()->default_value(0.0),
             "layer-wise lr decay R: the head at lr, block i at lr·R^(depth-i), the embeddings at "
             "lr·R^(depth+1) (0: off)");
  add_recipe("freeze-backbone", po::bool_switch(),
             "a linear probe: only the head and the final norm train");
  add_recipe("model-ema-decay", po::value<double>()->default_value(0.0),
             "keep an exponential moving average of the weights with this decay (timm's "
             "ModelEmaV2, e.g. 0.999; warmed up as (1+t)/(10+t)): validated beside them every "
             "epoch, and the final model file holds it (0: off)");
  add_recipe("seed", po::value<uint64_t>()->default_value(0),
             "seeds initialisation, data order and augmentation");
  add_recipe("threads", po::value<int>()->default_value(0), "compute threads (0: all cores)");
  add_recipe("precision", po::value<std::string>()->default_value("f32"),
             "f32 or bf16: bf16 matmul operands on AVX-512 CPUs, f32 weights and optimizer "
             "state (ViT models)");

  po::options_description output("output");
  auto add_out = output.add_options();
  add_out("out", po::value<std::string>()->default_value("model.safetensors"), "the trained model");
  add_out("checkpoint", po::value<std::string>(),
          "resumable checkpoint (default: OUT with .ckpt before the extension)");
  add_out("checkpoint-every", po::value<int64_t>()->default_value(0),
          "also checkpoint every N steps");
  add_out("resume", po::value<std::string>(),
          "continue from a checkpoint: its model, recipe, augmentation and data selection");
  add_out("stop-after-epochs", po::value<int64_t>()->default_value(0),
          "train at most N epochs in this run, then checkpoint and stop (resume later)");
  add_out("log", po::value<std::string>(), "append per-epoch metrics as JSON lines");
  add_out("no-progress", "no live progress line");
  add_out("help,h", "show this help");
  po::options_description all("vit train: a classifier from an image folder");
  all.add(data_opts)
      .add(model_opts)
      .add(load_options_description(false))
      .add(recipe_opts)
      .add(output);
  const po::variables_map vm = parse(args, all);
  if (vm.count("help")) {
    std::cout << "usage: vit train --data DIR [--val-data DIR | --val-split F] [options]\n\n"
              << all;
    return 0;
  }
  if (!vm.count("data")) throw UsageError("vit train: --data is required");
  if (vm.count("val-data") && vm["val-split"].as<double>() > 0)
    throw UsageError("vit train: --val-data and --val-split contradict each other; give one");
  if (vm.count("init")) {
    if (vm.count("resume"))
      throw UsageError(
          "vit train: --init and --resume contradict each other; a resumed run "
          "keeps its checkpoint's weights");
    // The checkpoint is the model and says how images are prepared; only its size may change.
    for (const auto& [flag, value] : vm) {
      const bool shape = model_options("").find_nothrow(flag, false) != nullptr;
      const bool preprocessing = flag == "mean" || flag == "std" || flag == "crop-pct";
      if ((shape || preprocessing) && flag != "img-size" && !value.defaulted())
        throw UsageError("vit train: --" + flag + " contradicts --init, whose checkpoint " +
                         (preprocessing ? "sets the preprocessing" : "is the model") +
                         " (--img-size may change its size)");
    }
  }

  models::TrainData data;
  data.train = vm["data"].as<std::string>();
  if (vm.count("val-data")) data.val = vm["val-data"].as<std::string>();
  data.source.strict = vm.count("strict") > 0;
  data.source.cache_bytes = size_t(std::max<int64_t>(0, vm["cache-mb"].as<int64_t>())) << 20;
  data.workers = std::max(1, vm["workers"].as<int>());

  models::TrainOutputs outputs;
  outputs.out = vm["out"].as<std::string>();
  if (vm.count("checkpoint")) {
    outputs.checkpoint = vm["checkpoint"].as<std::string>();
  } else {
    std::filesystem::path ckpt = outputs.out;
    ckpt.replace_extension(".ckpt" + outputs.out.extension().string());
    outputs.checkpoint = ckpt;
  }
  outputs.checkpoint_every = vm["checkpoint-every"].as<int64_t>();
  if (vm.count("log")) outputs.log = vm["log"].as<std::string>();
  outputs.progress = !vm.count("no-progress");
  outputs.stop = &g_stop;
  outputs.stop_after_epochs = vm["stop-after-epochs"].as<int64_t>();

  // A preset trained from scratch brings its own recipe; a resumed run has its checkpoint's,
  // a fine-tuned one the flags'.
  const models::Preset& chosen = models::preset(vm["model"].as<std::string>());
  std::optional<po::variables_map> preset_vm;
  if (!chosen.recipe.empty() && !vm.count("init") && !vm.count("resume")) {
    std::vector<std::string> words;
    std::istringstream in(chosen.recipe);
    for (std::string w; in >> w;) words.push_back(w);
    preset_vm = parse(words, recipe_opts);
    for (const auto& [flag, value] : *preset_vm)
      if (!value.defaulted() && std::none_of(std::begin(kRecipeFlags), std::end(kRecipeFlags),
                                             [&](const RecipeFlag& f) { return flag == f.flag; }))
        throw std::logic_error("the preset " + chosen.name + "'s recipe sets --" + flag +
                               ", which is not a recipe flag");
    std::printf("recipe of the preset %s, where no flag is given: %s\n", chosen.name.c_str(),
                chosen.recipe.c_str());
  }
  models::TrainConfig recipe = recipe_from_flags(vm, preset_vm ? &*preset_vm : nullptr);
  const std::string resume = vm.count("resume") ? vm["resume"].as<std::string>() : "";
  engine::Context ctx(recipe.seed, vm["threads"].as<int>());
  const datasets::ImageFolder folder(data.train);

  // The model: the checkpoint's, or a preset with any size overridden.
  std::unique_ptr<engine::Model> net;
  datasets::Preprocess preprocess;
  if (vm.count("init")) {
    net = init_from(vm["init"].as<std::string>(), load_options(vm, "vit train"), folder.classes(),
                    ctx, preprocess, outputs);
  } else if (!resume.empty()) {
    models::Resumed resumed = models::load_checkpoint(resume, ctx, folder.classes());
    refuse_contradictions(vm, resumed, resume);
    for (const char* key : {"init", "init_source"})  // where the fine-tuned weights came from
      if (resumed.loaded.metadata.count(key))
        outputs.metadata[key] = resumed.loaded.metadata.at(key);
    recipe = resumed.recipe;
    ctx.rng.seed(recipe.seed);  // as a fresh run; restore() then sets the saved state
    net = std::move(resumed.loaded.model);
    preprocess = resumed.loaded.preprocess;
  } else {
    const models::Preset& preset = models::preset(vm["model"].as<std::string>());
    nlohmann::json config = model_config(vm, preset, "vit train");
    config["num_classes"] = static_cast<int64_t>(folder.classes().size());
    net = models::make_model(preset.arch, config, ctx);
    net->init_weights(ctx);
    preprocess = model_preprocess(*net);
    if (vm.count("mean")) preprocess.mean = parse_floats(vm["mean"].as<std::string>(), "mean");
    if (vm.count("std")) preprocess.std = parse_floats(vm["std"].as<std::string>(), "std");
    preprocess.crop_pct = vm["crop-pct"].as<double>();
    preprocess.validate();
  }
  net->set_precision(engine::parse_precision(recipe.precision));

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const models::TrainResult result =
      models::train_on_folder(ctx, *net, preprocess, folder, data, recipe, outputs, resume);
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  if (result.interrupted) {
    const int signo = g_stop.load();
    std::fprintf(stderr, "vit: %s; resume with --resume %s\n",
                 signo ? (signo == SIGTERM ? "terminated (SIGTERM), checkpoint saved"
                                           : "interrupted (SIGINT), checkpoint saved")
                       : "stopped as asked",
                 outputs.checkpoint.c_str());
    return signo ? 128 + signo : 0;  // the shell's convention for a death by that signal
  }
  std::printf("saved %s after %.1fs of training", outputs.out.c_str(), result.seconds);
  if (!result.epochs.empty() && result.epochs.back().validated)
    std::printf(" (validation accuracy %.2f%%)", 100 * result.epochs.back().val_acc);
  std::printf("\n");
  if (result.skipped) std::printf("%zu unreadable images were skipped\n", result.skipped);
  return 0;
}

}  // namespace cli
