// vit eval (accuracy on a labelled folder), vit classify (top-k classes of images) and vit embed
// (a ViT's pooled features of images).
#include <algorithm>
#include <cstdio>
#include <functional>
#include <iostream>
#include <numeric>

#include <nlohmann/json.hpp>

#include "datasets/image_folder.hpp"
#include "datasets/loader.hpp"
#include "engine/error.hpp"
#include "engine/safetensors.hpp"
#include "engine/softmax.hpp"
#include "models/registry.hpp"
#include "models/training.hpp"
#include "tools/cli.hpp"

namespace cli {

int run_eval(const std::vector<std::string>& args) {
  po::options_description opts("vit eval: accuracy of a model on a labelled image folder");
  auto add = opts.add_options();
  add("model", po::value<std::string>(), "model file (.safetensors)");
  add("data", po::value<std::string>(),
      "image folder: one sub-folder per class, the model's class names");
  add("json", "print the result as one JSON object");
  add("batch-size", po::value<int64_t>()->default_value(256), "");
  add("strict", "an unreadable image is an error (default: skipped and counted)");
  add("subset", po::value<int64_t>()->default_value(0),
      "evaluate a stratified subset of N images, as vit train --subset draws it (0: all)");
  add("seed", po::value<uint64_t>()->default_value(0), "the subset's seed");
  add("threads", po::value<int>()->default_value(0), "compute threads (0: all cores)");
  add("precision", po::value<std::string>()->default_value("f32"),
      "f32 or bf16 (matmul operands in bf16 on AVX-512 CPUs; ViT models)");
  add("help,h", "show this help");
  opts.add(load_options_description());
  const po::variables_map vm = parse(args, opts);
  if (vm.count("help")) {
    std::cout << "usage: vit eval --model FILE --data DIR [--json]\n\n" << opts;
    return 0;
  }
  if (!vm.count("model")) throw UsageError("vit eval: --model is required");
  if (!vm.count("data")) throw UsageError("vit eval: --data is required");
  const int64_t subset = vm["subset"].as<int64_t>();
  if (subset < 0) throw UsageError("vit eval: --subset must not be negative");
  const engine::Precision precision = parse_precision_flag(vm, "vit eval");
  engine::Context ctx(0, vm["threads"].as<int>());
  // A training checkpoint is a model file plus optimizer state: it evaluates as one.
  models::LoadedModel loaded = models::load_model(vm["model"].as<std::string>(), ctx,
                                                  {"optimizer."}, load_options(vm, "vit eval"));
  require_head(loaded, vm["model"].as<std::string>());
  loaded.model->set_precision(precision);
  const datasets::ImageFolder folder(vm["data"].as<std::string>(), loaded.classes);
  std::vector<size_t> all(folder.samples().size());
  std::iota(all.begin(), all.end(), size_t{0});
  if (subset > 0) {  // in folder order, so the batches are those of the whole folder's
    all = datasets::stratified_subset(folder.samples(), size_t(subset), vm["seed"].as<uint64_t>());
    std::sort(all.begin(), all.end());
  }
  datasets::SourceOptions source_opts;
  source_opts.strict = vm.count("strict") > 0;
  const datasets::ImageSource source(folder, all, loaded.preprocess, source_opts);
  datasets::LoaderOptions loader_opts;
  loader_opts.batch_size = vm["batch-size"].as<int64_t>();
  datasets::DataLoader loader(ctx.eng, source, loader_opts);
  const engine::Metrics m = models::evaluate(ctx, *loaded.model, loader);
  const int64_t K = m.num_classes;
  const std::vector<double> per_class = m.per_class_accuracy();

  if (vm.count("json")) {
    nlohmann::json j = {{"model", vm["model"].as<std::string>()},
                        {"data", vm["data"].as<std::string>()},
                        {"arch", loaded.model->arch()},
                        {"precision", engine::precision_name(precision)},
                        {"parameters", loaded.model->store.num_trainable()},
                        {"flops_per_image", loaded.model->flops_per_image()},
                        {"images", m.count},
                        {"skipped", source.skipped().size()},
                        {"loss", m.loss()},
                        {"top1", m.accuracy()},
                        {"classes", loaded.classes}};
    if (K >= 5) j["top5"] = m.top5_accuracy();
    j["per_class_accuracy"] = per_class;
    std::vector<std::vector<int64_t>> confusion(K);
    for (int64_t c = 0; c < K; ++c)
      confusion[c].assign(m.confusion.begin() + c * K, m.confusion.begin() + (c + 1) * K);
    j["confusion"] = confusion;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::printf("%lld images, loss %.4f, top-1 %.2f%%", (long long)m.count, m.loss(),
                100 * m.accuracy());
    if (K >= 5) std::printf(", top-5 %.2f%%", 100 * m.top5_accuracy());
    std::printf("\n\nper class:\n");
    for (int64_t c = 0; c < K; ++c)
      std::printf("  %-20s %6.2f%%\n", loaded.classes[c].c_str(), 100 * per_class[c]);
    std::printf("\nconfusion (rows: true class, columns: predicted, in class order):\n");
    for (int64_t c = 0; c < K; ++c) {
      std::printf("  %-20s", loaded.classes[c].c_str());
      for (int64_t p = 0; p < K; ++p) std::printf(" %6lld", (long long)m.confusion[c * K + p]);
      std::printf("\n");
    }
  }
  for (const std::string& s : source.skipped())
    std::fprintf(stderr, "vit: skipped %s\n", s.c_str());
  return 0;
}

int run_classify(const std::vector<std::string>& args) {
  po::options_description opts("vit classify: the most likely classes of images");
  auto add = opts.add_options();
  add("model", po::value<std::string>()->default_value(VIT_DEFAULT_MODEL),
      "model file (default: the bundled Fashion-MNIST ViT)");
  add("top-k", po::value<int64_t>()->default_value(5), "classes to print per image");
  add("json", "print one JSON array");
  add_image_options(opts, "f32 or bf16 (matmul operands in bf16 on AVX-512 CPUs; ViT models)");
  po::positional_options_description positional;
  positional.add("images", -1);
  const po::variables_map vm = parse(args, opts, positional);
  if (vm.count("help")) {
    std::cout << "usage: vit classify [--model FILE] [--top-k K] [--json] IMAGE|DIR...\n\n" << opts;
    return 0;
  }
  check_image_options(vm, "vit classify");
  if (vm["top-k"].as<int64_t>() < 1) throw UsageError("vit classify: --top-k must be positive");

  const std::vector<std::filesystem::path> paths =
      image_paths(vm["images"].as<std::vector<std::string>>());
  const engine::Precision precision = parse_precision_flag(vm, "vit classify");
  engine::Context ctx(0, vm["threads"].as<int>());
  // A training checkpoint is a model file plus optimizer state: it evaluates as one.
  models::LoadedModel loaded = models::load_model(vm["model"].as<std::string>(), ctx,
                                                  {"optimizer."}, load_options(vm, "vit classify"));
  require_head(loaded, vm["model"].as<std::string>());
  loaded.model->set_precision(precision);
  loaded.model->train(false);
  const int64_t K = static_cast<int64_t>(loaded.classes.size());
  const int64_t top_k = std::min(vm["top-k"].as<int64_t>(), K);
  const int64_t batch_size = vm["batch-size"].as<int64_t>();
  engine::Softmax softmax;
  nlohmann::json results = nlohmann::json::array();
  auto take = [&](const std::vector<std::filesystem::path>& ok, const std::vector<cv::Mat>&,
                  const engine::Tensor& input) {
    const engine::Tensor& probs = softmax.forward(ctx, loaded.model->forward(ctx, input));
    ctx.wait();
    for (size_t i = 0; i < ok.size(); ++i) {
      const float* row = probs.data() + static_cast<int64_t>(i) * K;
      const std::vector<int64_t> order = top_classes(row, K, top_k);
      const nlohmann::json top = top_k_json(row, order, loaded.classes);
      if (vm.count("json")) {
        results.push_back({{"image", ok[i].string()}, {"top_k", top}});
      } else {
        std::printf("%s\n", ok[i].c_str());
        for (int64_t k = 0; k < top_k; ++k)
          std::printf("  %-20s %7.2f%%\n", loaded.classes[order[k]].c_str(), 100.0 * row[order[k]]);
      }
    }
  };
  const int failures = for_each_batch(ctx, loaded.preprocess, paths, batch_size, take);
  // A file name need not be UTF-8; JSON must be: invalid bytes print as U+FFFD.
  if (vm.count("json"))
    std::cout << results.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  return failures ? 1 : 0;
}

int run_embed(const std::vector<std::string>& args) {
  po::options_description opts(
      "vit embed: a ViT's pooled features of images (timm's forward_head(pre_logits=True))");
  auto add = opts.add_options();
  add("model", po::value<std::string>(), "model file or checkpoint folder (ViT)");
  add("out", po::value<std::string>(),
      "write a .safetensors file: 'embeddings' F32 [images, D], the image paths in its metadata "
      "(default: print JSON)");
  add_image_options(opts, "f32 or bf16 (matmul operands in bf16 on AVX-512 CPUs)");
  po::positional_options_description positional;
  positional.add("images", -1);
  const po::variables_map vm = parse(args, opts, positional);
  if (vm.count("help")) {
    std::cout << "usage: vit embed --model M [--out FILE] IMAGE|DIR...\n\n" << opts;
    return 0;
  }
  if (!vm.count("model")) throw UsageError("vit embed: --model is required");
  check_image_options(vm, "vit embed");
  const std::string model_path = vm["model"].as<std::string>();
  const std::vector<std::filesystem::path> paths =
      image_paths(vm["images"].as<std::vector<std::string>>());
  const engine::Precision precision = parse_precision_flag(vm, "vit embed");
  engine::Context ctx(0, vm["threads"].as<int>());
  models::LoadedModel loaded =
      models::load_model(model_path, ctx, {"optimizer."}, load_options(vm, "vit embed"));
  if (loaded.model->arch() != "vit")
    throw engine::Error("'" + model_path + "' is a " + loaded.model->arch() +
                        "; vit embed takes a ViT");
  // With a head, the same weights without it: the output is then the pooled features.
  if (loaded.model->num_classes() > 0) {
    nlohmann::json config = loaded.model->config();
    if (config.value("distilled", false))
      throw engine::Error("'" + model_path +
                          "' is a distilled DeiT: its features (the mean of the cls and "
                          "dist tokens) are not implemented");
    config["num_classes"] = 0;
    auto headless = models::make_model("vit", config, ctx, /*inference_only=*/true);
    for (engine::Parameter& p : headless->store.parameters())
      p.value.copy_from(loaded.model->store[p.name].value);
    headless->store.mark_changed();
    loaded.model = std::move(headless);
  }
  loaded.model->set_precision(precision);
  loaded.model->train(false);
  std::vector<std::string> names;
  std::vector<float> features;
  int64_t D = 0;
  auto take = [&](const std::vector<std::filesystem::path>& ok, const std::vector<cv::Mat>&,
                  const engine::Tensor& input) {
    const engine::Tensor& out = loaded.model->forward(ctx, input);
    ctx.wait();
    D = out.dim(1);
    for (const auto& path : ok) names.push_back(path.string());
    features.insert(features.end(), out.data(), out.data() + out.numel());
  };
  const int failures =
      for_each_batch(ctx, loaded.preprocess, paths, vm["batch-size"].as<int64_t>(), take);
  if (names.empty()) throw engine::Error("no image could be read");
  if (vm.count("out")) {
    const int64_t n = static_cast<int64_t>(names.size());
    engine::write_safetensors(
        vm["out"].as<std::string>(), {{"embeddings", "F32", {n, D}, features.data()}},
        {{"images",
          nlohmann::json(names).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)},
         {"model", model_path}});
    std::fprintf(stderr, "vit: %lld embeddings of %lld floats written to %s\n", (long long)n,
                 (long long)D, vm["out"].as<std::string>().c_str());
  } else {
    nlohmann::json results = nlohmann::json::array();
    for (size_t i = 0; i < names.size(); ++i)
      results.push_back({{"image", names[i]},
                         {"embedding", std::vector<float>(features.begin() + int64_t(i) * D,
                                                          features.begin() + int64_t(i + 1) * D)}});
    std::cout << results.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  return failures ? 1 : 0;
}

}  // namespace cli
