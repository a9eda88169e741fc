// vit info, vit models.
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>

#include "datasets/image_folder.hpp"
#include "engine/context.hpp"
#include "models/registry.hpp"
#include "tools/cli.hpp"

namespace cli {

int run_info(const std::vector<std::string>& args) {
  po::options_description opts("vit info: the build and the machine it runs on");
  opts.add_options()("help,h", "show this help")("threads", po::value<int>()->default_value(0),
                                                 "threads to use (0: all cores)");
  const po::variables_map vm = parse(args, opts);
  if (vm.count("help")) {
    std::cout << "usage: vit info [--threads N]\n\n" << opts;
    return 0;
  }
  engine::Context ctx(0, vm["threads"].as<int>());
  std::cout << "vit " << VIT_VERSION << "\n"
            << "compiler: " << __VERSION__ << "\n"
            << engine::onednn_version() << "\n"
            << "cpu isa: " << engine::onednn_isa() << "\n"
            << "threads: " << ctx.threads << " (OpenMP)\n"
            << "primitive cache capacity: " << dnnl::get_primitive_cache_capacity() << "\n";
  return 0;
}

int run_models(const std::vector<std::string>& args) {
  po::options_description opts("vit models: the named model presets");
  opts.add_options()("help,h", "show this help");
  opts.add_options()("json", "one JSON object per line: name, arch, parameters, FLOPs, config");
  const po::variables_map vm = parse(args, opts);
  if (vm.count("help")) {
    std::cout << "usage: vit models [--json]\n\n" << opts;
    return 0;
  }
  for (const models::Preset& p : models::presets()) {
    const auto model = models::build_model(p.arch, p.config);
    if (vm.count("json")) {
      const nlohmann::json j = {{"name", p.name},
                                {"arch", p.arch},
                                {"parameters", model->store.num_trainable()},
                                {"flops_per_image", model->flops_per_image()},
                                {"description", p.description},
                                {"config", p.config},
                                {"recipe", p.recipe}};
      std::cout << j.dump() << "\n";
      continue;
    }
    std::printf("%-24s %-6s %7.2fM params %8.3f GFLOP/image  %s\n", p.name.c_str(), p.arch.c_str(),
                double(model->store.num_trainable()) / 1e6, model->flops_per_image() / 1e9,
                p.description.c_str());
    if (!p.recipe.empty()) std::printf("%-24s recipe: %s\n", "", p.recipe.c_str());
  }
  return 0;
}

int run_folder(const std::vector<std::string>& args) {
  po::options_description opts("vit folder: an image folder as vit train and vit eval read it");
  auto add = opts.add_options();
  add("folder", po::value<std::string>(), "the folder: one sub-folder per class");
  add("files", "list every image file too");
  add("help,h", "show this help");
  po::positional_options_description positional;
  positional.add("folder", 1);
  const po::variables_map vm = parse(args, opts, positional);
  if (vm.count("help")) {
    std::cout << "usage: vit folder DIR [--files]\n\nPrints one JSON object: the classes in "
                 "order, their image counts (hidden files and folders skipped, the image "
                 "extensions vit reads), and with --files every image's path.\n\n"
              << opts;
    return 0;
  }
  if (!vm.count("folder")) throw UsageError("vit folder: give the folder");
  const datasets::ImageFolder folder(vm["folder"].as<std::string>());
  std::vector<int64_t> counts(folder.classes().size());
  for (const datasets::Sample& s : folder.samples()) ++counts[size_t(s.label)];
  nlohmann::json classes = nlohmann::json::array();
  for (size_t c = 0; c < counts.size(); ++c)
    classes.push_back({{"name", folder.classes()[c]}, {"images", counts[c]}});
  nlohmann::json j = {
      {"root", folder.root().string()}, {"images", folder.samples().size()}, {"classes", classes}};
  if (vm.count("files")) {
    nlohmann::json files = nlohmann::json::array();
    for (const datasets::Sample& s : folder.samples())
      files.push_back({{"path", s.path.string()}, {"label", s.label}});
    j["files"] = files;
  }
  std::cout << j.dump() << "\n";
  return 0;
}

}  // namespace cli
