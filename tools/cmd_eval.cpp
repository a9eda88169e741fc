// vit eval (accuracy on a labelled folder) and vit classify (top-k classes of images).
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <numeric>

#include <nlohmann/json.hpp>

#include "datasets/image_folder.hpp"
#include "datasets/loader.hpp"
#include "engine/error.hpp"
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
  add("threads", po::value<int>()->default_value(0), "compute threads (0: all cores)");
  add("precision", po::value<std::string>()->default_value("f32"),
      "f32 or bf16 (matmul operands in bf16 on AVX-512 CPUs; ViT models)");
  add("help,h", "show this help");
  const po::variables_map vm = parse(args, opts);
  if (vm.count("help")) {
    std::cout << "usage: vit eval --model FILE --data DIR [--json]\n\n" << opts;
    return 0;
  }
  if (!vm.count("model")) throw UsageError("vit eval: --model is required");
  if (!vm.count("data")) throw UsageError("vit eval: --data is required");
  const engine::Precision precision = parse_precision_flag(vm, "vit eval");
  engine::Context ctx(0, vm["threads"].as<int>());
  // A training checkpoint is a model file plus optimizer state: it evaluates as one.
  models::LoadedModel loaded =
      models::load_model(vm["model"].as<std::string>(), ctx, {"optimizer."});
  loaded.model->set_precision(precision);
  const datasets::ImageFolder folder(vm["data"].as<std::string>(), loaded.classes);
  std::vector<size_t> all(folder.samples().size());
  std::iota(all.begin(), all.end(), size_t{0});
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
  add("batch-size", po::value<int64_t>()->default_value(64), "");
  add("threads", po::value<int>()->default_value(0), "compute threads (0: all cores)");
  add("precision", po::value<std::string>()->default_value("f32"),
      "f32 or bf16 (matmul operands in bf16 on AVX-512 CPUs; ViT models)");
  add("images", po::value<std::vector<std::string>>(),
      "image files or folders (searched recursively)");
  add("help,h", "show this help");
  po::positional_options_description positional;
  positional.add("images", -1);
  const po::variables_map vm = parse(args, opts, positional);
  if (vm.count("help")) {
    std::cout << "usage: vit classify [--model FILE] [--top-k K] [--json] IMAGE|DIR...\n\n" << opts;
    return 0;
  }
  if (!vm.count("images")) throw UsageError("vit classify: no images given");
  if (vm["top-k"].as<int64_t>() < 1) throw UsageError("vit classify: --top-k must be positive");
  if (vm["batch-size"].as<int64_t>() < 1)
    throw UsageError("vit classify: --batch-size must be positive");

  // Every file named, and every image file under every folder named, in sorted order.
  std::vector<std::filesystem::path> paths;
  for (const std::string& arg : vm["images"].as<std::vector<std::string>>()) {
    std::error_code ec;
    if (std::filesystem::is_directory(arg, ec)) {
      const std::vector<std::filesystem::path> found = datasets::find_images(arg);
      if (found.empty()) throw engine::Error("'" + arg + "': folder holds no images");
      paths.insert(paths.end(), found.begin(), found.end());
    } else {
      paths.emplace_back(arg);
    }
  }

  const engine::Precision precision = parse_precision_flag(vm, "vit classify");
  engine::Context ctx(0, vm["threads"].as<int>());
  // A training checkpoint is a model file plus optimizer state: it evaluates as one.
  models::LoadedModel loaded =
      models::load_model(vm["model"].as<std::string>(), ctx, {"optimizer."});
  loaded.model->set_precision(precision);
  loaded.model->train(false);
  const datasets::Preprocess& p = loaded.preprocess;
  const int64_t K = static_cast<int64_t>(loaded.classes.size());
  const int64_t top_k = std::min(vm["top-k"].as<int64_t>(), K);
  const int64_t batch_size = vm["batch-size"].as<int64_t>();
  engine::Softmax softmax;
  nlohmann::json results = nlohmann::json::array();
  int failures = 0;
  for (size_t begin = 0; begin < paths.size(); begin += static_cast<size_t>(batch_size)) {
    // Decode this batch; a file that fails is reported and left out.
    std::vector<std::filesystem::path> ok;
    std::vector<cv::Mat> images;
    for (size_t i = begin; i < std::min(paths.size(), begin + static_cast<size_t>(batch_size));
         ++i) {
      try {
        images.push_back(datasets::eval_transform(datasets::load_image(paths[i], p.in_chans), p));
        ok.push_back(paths[i]);
      } catch (const engine::Error& e) {
        std::fprintf(stderr, "vit: %s\n", e.what());
        ++failures;
      }
    }
    if (ok.empty()) continue;
    engine::Tensor input(ctx.eng, p.input_dims(static_cast<int64_t>(ok.size())));
    for (size_t i = 0; i < ok.size(); ++i)
      datasets::to_model_input(images[i], p,
                               input.data() + static_cast<int64_t>(i) * p.sample_size());
    const engine::Tensor& probs = softmax.forward(ctx, loaded.model->forward(ctx, input));
    ctx.wait();
    for (size_t i = 0; i < ok.size(); ++i) {
      const float* row = probs.data() + static_cast<int64_t>(i) * K;
      std::vector<int64_t> order(K);
      std::iota(order.begin(), order.end(), int64_t{0});
      std::partial_sort(order.begin(), order.begin() + top_k, order.end(),
                        [&](int64_t a, int64_t b) { return row[a] > row[b]; });
      nlohmann::json top = nlohmann::json::array();
      for (int64_t k = 0; k < top_k; ++k)
        top.push_back({{"class", loaded.classes[order[k]]},
                       {"index", order[k]},
                       {"probability", row[order[k]]}});
      if (vm.count("json")) {
        results.push_back({{"image", ok[i].string()}, {"top_k", top}});
      } else {
        std::printf("%s\n", ok[i].c_str());
        for (int64_t k = 0; k < top_k; ++k)
          std::printf("  %-20s %7.2f%%\n", loaded.classes[order[k]].c_str(), 100.0 * row[order[k]]);
      }
    }
  }
  // A file name need not be UTF-8; JSON must be: invalid bytes print as U+FFFD.
  if (vm.count("json"))
    std::cout << results.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  return failures ? 1 : 0;
}

}  // namespace cli
