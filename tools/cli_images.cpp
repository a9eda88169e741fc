// What the commands that take images (classify, embed, explain) share.
#include <algorithm>
#include <cstdio>
#include <numeric>

#include "datasets/image_folder.hpp"
#include "engine/error.hpp"
#include "tools/cli.hpp"

namespace cli {

// classify and eval need a classifier: a checkpoint without a head (DINOv2, ViTModel) has none.
void require_head(const models::LoadedModel& loaded, const std::string& model) {
  if (loaded.model->num_classes() == 0)
    throw engine::Error("'" + model +
                        "' has no classification head (num_classes 0): 'vit embed' gives its "
                        "features, 'vit train --init' fine-tunes a head on an image folder");
}

// What classify and embed share: images in batches, threads, precision, the model's resolution.
void add_image_options(po::options_description& opts, const char* precision_help,
                       int64_t batch_size) {
  auto add = opts.add_options();
  add("batch-size", po::value<int64_t>()->default_value(batch_size), "images per forward pass");
  add("threads", po::value<int>()->default_value(0), "compute threads (0: all cores)");
  add("precision", po::value<std::string>()->default_value("f32"), precision_help);
  add("images", po::value<std::vector<std::string>>(),
      "image files or folders (searched recursively)");
  add("help,h", "show this help");
  opts.add(load_options_description());
}

void check_image_options(const po::variables_map& vm, const std::string& command) {
  if (!vm.count("images")) throw UsageError(command + ": no images given");
  if (vm["batch-size"].as<int64_t>() < 1)
    throw UsageError(command + ": --batch-size must be positive");
}

// Every file named, and every image file under every folder named, in sorted order.
std::vector<std::filesystem::path> image_paths(const std::vector<std::string>& args) {
  std::vector<std::filesystem::path> paths;
  for (const std::string& arg : args) {
    std::error_code ec;
    if (std::filesystem::is_directory(arg, ec)) {
      const std::vector<std::filesystem::path> found = datasets::find_images(arg);
      if (found.empty()) throw engine::Error("'" + arg + "': folder holds no images");
      paths.insert(paths.end(), found.begin(), found.end());
    } else {
      paths.emplace_back(arg);
    }
  }
  return paths;
}

int for_each_batch(engine::Context& ctx, const datasets::Preprocess& p,
                   const std::vector<std::filesystem::path>& paths, int64_t batch_size,
                   const BatchFn& take) {
  int failures = 0;
  for (size_t begin = 0; begin < paths.size(); begin += static_cast<size_t>(batch_size)) {
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
    take(ok, images, input);
  }
  return failures;
}

std::optional<int64_t> parse_int64(const std::string& text) {
  size_t used = 0;
  int64_t x = 0;
  try {
    x = std::stoll(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (used != text.size()) return std::nullopt;
  return x;
}

std::optional<int64_t> class_index(const std::string& text,
                                   const std::vector<std::string>& classes) {
  const auto it = std::find(classes.begin(), classes.end(), text);
  if (it != classes.end()) return int64_t(it - classes.begin());
  return parse_int64(text);
}

std::vector<int64_t> top_classes(const float* probabilities, int64_t K, int64_t k) {
  std::vector<int64_t> order(static_cast<size_t>(K));
  std::iota(order.begin(), order.end(), int64_t{0});
  k = std::min(k, K);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int64_t a, int64_t b) { return probabilities[a] > probabilities[b]; });
  order.resize(static_cast<size_t>(k));
  return order;
}

nlohmann::json top_k_json(const float* probabilities, const std::vector<int64_t>& order,
                          const std::vector<std::string>& classes) {
  nlohmann::json top = nlohmann::json::array();
  for (int64_t c : order)
    top.push_back({{"class", classes[size_t(c)]}, {"index", c}, {"probability", probabilities[c]}});
  return top;
}

std::string explanation_caption(const models::Explanation& e,
                                const std::vector<std::string>& classes, const std::string& what) {
  char text[64];
  std::snprintf(text, sizeof text, " %.1f%%", 100.0 * e.probabilities[size_t(e.explained_class)]);
  return classes[size_t(e.explained_class)] + text + "  " + what;
}

namespace {

nlohmann::json grid_json(const std::vector<float>& map, int64_t h, int64_t w) {
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t r = 0; r < h; ++r)
    rows.push_back(std::vector<float>(map.begin() + r * w, map.begin() + (r + 1) * w));
  return rows;
}

}  // namespace

nlohmann::json explanation_json(const models::Explanation& e, const models::ExplainOptions& o,
                                const std::string& note, const std::vector<std::string>& classes,
                                int64_t top_k) {
  nlohmann::json r;
  r["method"] = o.method;
  if (o.method == "attention") r["layer"] = o.layer;
  if (o.method != "gradcam") r["head_fusion"] = o.rollout.head_fusion;
  if (o.method == "rollout") r["discard_ratio"] = o.rollout.discard_ratio;
  if (!note.empty()) r["note"] = note;
  r["explained"] = {{"class", classes[size_t(e.explained_class)]},
                    {"index", e.explained_class},
                    {"probability", e.probabilities[size_t(e.explained_class)]}};
  r["grid"] = {e.grid_h, e.grid_w};
  r["map"] = grid_json(e.map, e.grid_h, e.grid_w);
  if (!e.heads.empty()) {
    nlohmann::json heads = nlohmann::json::array();
    for (const auto& h : e.heads) heads.push_back(grid_json(h, e.grid_h, e.grid_w));
    r["heads"] = heads;
  }
  const int64_t K = int64_t(classes.size());
  r["top_k"] =
      top_k_json(e.probabilities.data(), top_classes(e.probabilities.data(), K, top_k), classes);
  return r;
}

}  // namespace cli
