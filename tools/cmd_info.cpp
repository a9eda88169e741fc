// vit info, vit models.
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>

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
                                {"config", p.config}};
      std::cout << j.dump() << "\n";
      continue;
    }
    std::printf("%-24s %-6s %7.2fM params %8.3f GFLOP/image  %s\n", p.name.c_str(), p.arch.c_str(),
                double(model->store.num_trainable()) / 1e6, model->flops_per_image() / 1e9,
                p.description.c_str());
  }
  return 0;
}

}  // namespace cli
