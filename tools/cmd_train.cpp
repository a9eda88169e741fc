// vit train: a classifier from an image folder.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <numeric>

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

void print_skipped(const datasets::ImageSource& source, const char* what) {
  if (source.skipped().empty()) return;
  for (size_t i = 0; i < std::min<size_t>(source.skipped().size(), 10); ++i)
    std::fprintf(stderr, "vit: warning: skipped %s\n", source.skipped()[i].c_str());
  std::fprintf(stderr,
               "vit: warning: %zu unreadable %s images skipped (--strict makes this an error)\n",
               source.skipped().size(), what);
}

}  // namespace

int run_train(const std::vector<std::string>& args) {
  po::options_description data("data");
  auto add_data = data.add_options();
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
  add_recipe("crop", po::value<std::string>()->default_value("pad"),
             "augmentation crop: none, pad (pad-and-crop) or rrc");
  add_recipe("pad", po::value<int64_t>()->default_value(4), "padding of the pad crop");
  add_recipe("hflip", po::value<double>()->default_value(0.0), "horizontal flip probability");
  add_recipe("random-erase", po::value<double>()->default_value(0.0), "random erasing probability");
  add_recipe("mixup", po::value<double>()->default_value(0.0), "mixup alpha (0: off)");
  add_recipe("cutmix", po::value<double>()->default_value(0.0), "cutmix alpha (0: off)");
  add_recipe("mix-prob", po::value<double>()->default_value(1.0), "probability of mixing a batch");
  add_recipe("switch-prob", po::value<double>()->default_value(0.5),
             "cutmix rather than mixup, with both on");
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
  all.add(data).add(model_opts).add(recipe_opts).add(output);
  const po::variables_map vm = parse(args, all);
  if (vm.count("help")) {
    std::cout << "usage: vit train --data DIR [--val-data DIR | --val-split F] [options]\n\n"
              << all;
    return 0;
  }
  if (!vm.count("data")) throw UsageError("vit train: --data is required");
  if (vm.count("val-data") && vm["val-split"].as<double>() > 0)
    throw UsageError("vit train: --val-data and --val-split contradict each other; give one");

  engine::Context ctx(vm["seed"].as<uint64_t>(), vm["threads"].as<int>());
  const datasets::ImageFolder image_folder(vm["data"].as<std::string>());
  const std::vector<std::string>& classes = image_folder.classes();

  // The model: from a checkpoint, or a preset with any size overridden.
  std::unique_ptr<engine::Model> net;
  datasets::Preprocess preprocess;
  models::TrainConfig recipe;
  std::string resume;
  if (vm.count("resume")) {
    resume = vm["resume"].as<std::string>();
    models::LoadedModel loaded = models::load_model(resume, ctx, {"optimizer."});
    if (loaded.classes != classes)
      throw engine::Error("'" + resume + "': its classes differ from those of --data");
    if (!loaded.metadata.count("train_config"))
      throw engine::Error("'" + resume + "': a model file, not a training checkpoint");
    try {
      recipe = nlohmann::json::parse(loaded.metadata.at("train_config")).get<models::TrainConfig>();
      recipe.validate();
    } catch (const std::exception& e) {  // nlohmann's or ours: either way a bad checkpoint
      throw engine::Error("'" + resume + "': malformed train_config: " + e.what());
    }
    net = std::move(loaded.model);
    preprocess = loaded.preprocess;
  } else {
    const models::Preset& preset = models::preset(vm["model"].as<std::string>());
    nlohmann::json config = model_config(vm, preset, "vit train");
    config["num_classes"] = static_cast<int64_t>(classes.size());
    net = models::make_model(preset.arch, config, ctx);
    net->init_weights(ctx);
    preprocess = model_preprocess(net->config());
    if (vm.count("mean")) preprocess.mean = parse_floats(vm["mean"].as<std::string>(), "mean");
    if (vm.count("std")) preprocess.std = parse_floats(vm["std"].as<std::string>(), "std");
    preprocess.crop_pct = vm["crop-pct"].as<double>();
    preprocess.validate();
    recipe.epochs = vm["epochs"].as<int64_t>();
    recipe.batch_size = vm["batch-size"].as<int64_t>();
    recipe.lr = vm["lr"].as<double>();
    recipe.min_lr = vm["min-lr"].as<double>();
    recipe.warmup_lr = vm["warmup-lr"].as<double>();
    recipe.warmup_epochs = vm["warmup-epochs"].as<double>();
    recipe.opt = vm["opt"].as<std::string>();
    recipe.precision = engine::precision_name(parse_precision_flag(vm, "vit train"));
    recipe.momentum = vm["momentum"].as<double>();
    recipe.weight_decay = vm["weight-decay"].as<double>();
    recipe.label_smoothing = vm["smoothing"].as<double>();
    recipe.clip_grad = vm["clip-grad"].as<double>();
    recipe.seed = vm["seed"].as<uint64_t>();
    recipe.subset = vm["subset"].as<int64_t>();
    recipe.val_split = vm["val-split"].as<double>();
    recipe.augment.crop = vm["crop"].as<std::string>();
    recipe.augment.pad = vm["pad"].as<int64_t>();
    recipe.augment.hflip = vm["hflip"].as<double>();
    recipe.augment.random_erase = vm["random-erase"].as<double>();
    recipe.augment.mixup_alpha = vm["mixup"].as<double>();
    recipe.augment.cutmix_alpha = vm["cutmix"].as<double>();
    recipe.augment.mix_prob = vm["mix-prob"].as<double>();
    recipe.augment.switch_prob = vm["switch-prob"].as<double>();
    recipe.validate();
  }

  net->set_precision(engine::parse_precision(recipe.precision));

  // The data: subset, split, decode once.
  const int64_t subset = vm["subset"].as<int64_t>();
  if (subset < 0) throw UsageError("vit train: --subset must not be negative");
  const std::vector<size_t> indices = datasets::stratified_subset(
      image_folder.samples(), subset > 0 ? size_t(subset) : image_folder.samples().size(),
      recipe.seed);
  std::vector<size_t> train_idx = indices, val_idx;
  const double split = vm["val-split"].as<double>();
  if (split > 0)
    datasets::stratified_split(image_folder.samples(), indices, split, recipe.seed, train_idx,
                               val_idx);
  datasets::SourceOptions source_opts;
  source_opts.strict = vm.count("strict") > 0;
  source_opts.cache_bytes = static_cast<size_t>(std::max<int64_t>(0, vm["cache-mb"].as<int64_t>()))
                            << 20;
  source_opts.training = true;
  datasets::ImageSource train_source(image_folder, train_idx, preprocess, source_opts);
  print_skipped(train_source, "training");
  std::unique_ptr<datasets::ImageFolder> val_folder;
  std::unique_ptr<datasets::ImageSource> val_source;
  source_opts.training = false;
  if (vm.count("val-data")) {
    val_folder = std::make_unique<datasets::ImageFolder>(vm["val-data"].as<std::string>(), classes);
    std::vector<size_t> every(val_folder->samples().size());
    std::iota(every.begin(), every.end(), size_t{0});
    val_source =
        std::make_unique<datasets::ImageSource>(*val_folder, every, preprocess, source_opts);
  } else if (!val_idx.empty()) {
    val_source =
        std::make_unique<datasets::ImageSource>(image_folder, val_idx, preprocess, source_opts);
  }
  if (val_source) print_skipped(*val_source, "validation");

  datasets::LoaderOptions train_opts;
  train_opts.batch_size = recipe.batch_size;
  train_opts.shuffle = true;
  train_opts.drop_last = true;
  train_opts.augment = true;
  train_opts.augmentation = recipe.augment;
  train_opts.num_classes = static_cast<int64_t>(classes.size());
  train_opts.seed = recipe.seed;
  train_opts.workers = std::max(1, vm["workers"].as<int>());
  datasets::DataLoader train_loader(ctx.eng, train_source, train_opts);
  std::unique_ptr<datasets::DataLoader> val_loader;
  if (val_source) {
    datasets::LoaderOptions val_opts;
    val_opts.batch_size = std::max<int64_t>(recipe.batch_size, 256);
    val_opts.workers = train_opts.workers;
    val_loader = std::make_unique<datasets::DataLoader>(ctx.eng, *val_source, val_opts);
  }

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

  std::printf("data: %zu training images%s, %zu classes (%s)\n", train_source.size(),
              train_source.cached() ? " decoded in memory" : " streamed", classes.size(),
              vm["data"].as<std::string>().c_str());
  if (val_source) std::printf("validation: %zu images\n", val_source->size());
  std::printf("model: %s %s, %.3fM parameters, %.1f MFLOP per image\n", net->arch().c_str(),
              net->config().dump().c_str(), double(net->store.num_trainable()) / 1e6,
              net->flops_per_image() / 1e6);
  std::printf("recipe: %s, %d threads\n", nlohmann::json(recipe).dump().c_str(), ctx.threads);
  std::fflush(stdout);

  models::Trainer trainer(ctx, *net, preprocess, classes, recipe, outputs);
  if (!resume.empty()) {
    trainer.restore(resume);
    std::printf("resumed from %s\n", resume.c_str());
  }
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const models::TrainResult result = trainer.fit(train_loader, val_loader.get());
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
  const size_t skipped =
      train_source.skipped().size() + (val_source ? val_source->skipped().size() : 0);
  if (skipped) std::printf("%zu unreadable images were skipped\n", skipped);
  return 0;
}

}  // namespace cli
