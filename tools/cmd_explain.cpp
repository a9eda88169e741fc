// vit explain: where a model looks, as a heat map over each image (PNG) or the raw grid (JSON).
#include <cstdio>
#include <iostream>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "datasets/overlay.hpp"
#include "engine/error.hpp"
#include "models/explain.hpp"
#include "models/registry.hpp"
#include "tools/cli.hpp"

namespace cli {

namespace {

// out/<stem>_<method>.png, with _2, _3, ... for a stem seen before in this run.
std::filesystem::path picture_path(const std::filesystem::path& dir,
                                   const std::filesystem::path& image, const std::string& suffix,
                                   std::set<std::string>& used) {
  std::string name = image.stem().string() + "_" + suffix;
  for (int i = 2; !used.insert(name).second; ++i)
    name = image.stem().string() + "_" + suffix + "_" + std::to_string(i);
  return dir / (name + ".png");
}

}  // namespace

int run_explain(const std::vector<std::string>& args) {
  po::options_description opts(
      "vit explain: where a model looks. ViT: attention rollout or one block's attention; "
      "CNN: Grad-CAM on its last stage");
  auto add = opts.add_options();
  add("model", po::value<std::string>()->default_value(VIT_DEFAULT_MODEL),
      "model file (default: the bundled Fashion-MNIST ViT)");
  add("method", po::value<std::string>(),
      "rollout (ViT, the default), attention (ViT: the cls token's attention in --layer) or "
      "gradcam (CNN, the default)");
  add("head-fusion", po::value<std::string>()->default_value("mean"),
      "how a block's heads are fused: mean, max or min");
  add("discard-ratio", po::value<double>()->default_value(0.0),
      "rollout: the share of each block's lowest attention weights dropped, in [0, 1)");
  add("layer", po::value<int64_t>()->default_value(-1),
      "attention: the block (0 the first, -1 the last)");
  add("heads", "attention: also each head's map (in the JSON, and as <stem>_attention_heads.png)");
  add("class", po::value<std::string>(),
      "gradcam: explain this class (a name or an index) instead of each image's top class");
  add("out", po::value<std::string>(), "write one PNG per image into this folder");
  add("scale", po::value<int>()->default_value(0),
      "draw the pictures at this integer multiple of the image the model saw (1: its own size; "
      "0: the smallest reaching 224 pixels)");
  add("json", "print the maps (and the top-k, as vit classify --json) as one JSON array");
  add("top-k", po::value<int64_t>()->default_value(5), "classes in the JSON per image");
  add_image_options(opts, "f32 or bf16 (matmul operands in bf16 on AVX-512 CPUs; ViT models)",
                    /*batch_size=*/8);
  po::positional_options_description positional;
  positional.add("images", -1);
  const po::variables_map vm = parse(args, opts, positional);
  if (vm.count("help")) {
    std::cout << "usage: vit explain [--model FILE] [--method rollout|attention|gradcam] "
                 "[--out DIR] [--json] IMAGE|DIR...\n\n"
              << opts;
    return 0;
  }
  check_image_options(vm, "vit explain");
  if (!vm.count("out") && !vm.count("json"))
    throw UsageError("vit explain: give --out DIR for the pictures, --json for the maps, or both");
  if (vm["top-k"].as<int64_t>() < 1) throw UsageError("vit explain: --top-k must be positive");
  const int scale = vm["scale"].as<int>();
  if (scale < 0 || scale > 64) throw UsageError("vit explain: --scale must be in 0 to 64");
  std::filesystem::path out_dir;
  if (vm.count("out")) {
    out_dir = vm["out"].as<std::string>();
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    if (ec || !std::filesystem::is_directory(out_dir))
      throw engine::Error("--out '" + out_dir.string() + "': cannot create the folder" +
                          (ec ? ": " + ec.message() : ""));
  }

  const std::string model_path = vm["model"].as<std::string>();
  const std::vector<std::filesystem::path> paths =
      image_paths(vm["images"].as<std::vector<std::string>>());
  const engine::Precision precision = parse_precision_flag(vm, "vit explain");
  engine::Context ctx(0, vm["threads"].as<int>());
  models::LoadedModel loaded =
      models::load_model(model_path, ctx, {"optimizer."}, load_options(vm, "vit explain"));
  require_head(loaded, model_path);
  loaded.model->set_precision(precision);
  const int64_t K = static_cast<int64_t>(loaded.classes.size());

  models::ExplainOptions o;
  if (vm.count("method")) o.method = vm["method"].as<std::string>();
  o.rollout.head_fusion = vm["head-fusion"].as<std::string>();
  o.rollout.discard_ratio = vm["discard-ratio"].as<double>();
  o.layer = vm["layer"].as<int64_t>();
  o.heads = vm.count("heads") > 0;
  if (vm.count("class")) {  // a class name, or its index
    const std::string c = vm["class"].as<std::string>();
    const std::optional<int64_t> index = class_index(c, loaded.classes);
    if (!index || *index < 0 || *index >= K)
      throw engine::Error("--class '" + c + "': not one of the model's " + std::to_string(K) +
                          " classes (a name or an index 0 to " + std::to_string(K - 1) + ")");
    o.target_class = *index;
  }
  // A flag the model or the method has no use for is the command line's mistake.
  std::unique_ptr<models::Explainer> explainer_;
  try {
    explainer_ = std::make_unique<models::Explainer>(ctx, *loaded.model, o);
  } catch (const engine::Error& e) {
    throw UsageError("vit explain: " + std::string(e.what()));
  }
  models::Explainer& explainer = *explainer_;
  const std::string& method = explainer.options().method;
  if (!explainer.note().empty())
    std::fprintf(stderr, "vit explain: %s\n", explainer.note().c_str());
  const std::string what = method == "attention"
                               ? "attention, block " + std::to_string(explainer.options().layer)
                               : method;

  nlohmann::json results = nlohmann::json::array();
  std::set<std::string> used;
  auto take = [&](const std::vector<std::filesystem::path>& ok, const std::vector<cv::Mat>& images,
                  const engine::Tensor& input) {
    const std::vector<models::Explanation> found = explainer.explain(ctx, input);
    for (size_t i = 0; i < ok.size(); ++i) {
      const models::Explanation& e = found[i];
      nlohmann::json r = {{"image", ok[i].string()}};
      if (vm.count("out")) {
        const std::filesystem::path png = picture_path(out_dir, ok[i], method, used);
        datasets::write_png(
            png, datasets::heatmap_overlay(images[i], e.map, e.grid_h, e.grid_w,
                                           explanation_caption(e, loaded.classes, what), scale));
        r["png"] = png.string();
        if (!e.heads.empty()) {
          std::vector<cv::Mat> tiles;
          for (size_t h = 0; h < e.heads.size(); ++h)
            tiles.push_back(datasets::heatmap_overlay(images[i], e.heads[h], e.grid_h, e.grid_w,
                                                      "head " + std::to_string(h), scale));
          const std::filesystem::path heads_png =
              picture_path(out_dir, ok[i], method + "_heads", used);
          datasets::write_png(heads_png, datasets::tile(tiles, 4));
          r["heads_png"] = heads_png.string();
        }
        if (!vm.count("json"))
          std::printf("%s: %s %.2f%% -> %s\n", ok[i].c_str(),
                      loaded.classes[size_t(e.explained_class)].c_str(),
                      100.0 * e.probabilities[size_t(e.explained_class)], png.c_str());
      }
      if (vm.count("json")) {
        r.update(explanation_json(e, explainer.options(), explainer.note(), loaded.classes,
                                  vm["top-k"].as<int64_t>()));
        results.push_back(r);
      }
    }
  };
  const int failures =
      for_each_batch(ctx, loaded.preprocess, paths, vm["batch-size"].as<int64_t>(), take);
  if (vm.count("json"))
    std::cout << results.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  return failures ? 1 : 0;
}

}  // namespace cli
