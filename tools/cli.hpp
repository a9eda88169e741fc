// Shared plumbing of the vit sub-commands: strict option parsing and the usage error type.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include "datasets/preprocess.hpp"
#include "engine/context.hpp"
#include "engine/precision.hpp"
#include "models/explain.hpp"
#include "models/registry.hpp"

namespace cli {

namespace po = boost::program_options;

// A wrong command line: printed with a pointer to --help, exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Parses a sub-command's arguments strictly: every flag must be declared.
inline po::variables_map parse(const std::vector<std::string>& args,
                               const po::options_description& opts,
                               const po::positional_options_description& positional = {}) {
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).positional(positional).run(), vm);
  po::notify(vm);
  return vm;
}

// "0.5,0.5,0.5" -> {0.5, 0.5, 0.5}; the flag names the error.
std::vector<float> parse_floats(const std::string& text, const std::string& flag);

// --model PRESET and the size flags that override it (--img-size, --patch-size, --embed-dim,
// ...), shared by vit train and vit bench.
po::options_description model_options(const std::string& default_model);
// The preset's config with every size flag given applied. A flag the architecture does not
// have (--patch-size for a CNN) is a usage error naming `command`.
nlohmann::json model_config(const po::variables_map& vm, const models::Preset& preset,
                            const std::string& command);
// A self-attention lab setting's default (its key in snake case), null for any other key: a
// model file names only the settings that differ from it.
nlohmann::json lab_default(const std::string& key);
// What a freshly built model takes: its image size, channels and patch size (0, whole images,
// for a CNN or a ViT with a conv stem), mean and std 0.5.
datasets::Preprocess model_preprocess(const engine::Model& model);

// --img-size and --pos-interp, for the commands that load a model file or checkpoint folder
// (without --img-size for vit train, whose model options have it).
po::options_description load_options_description(bool with_img_size = true);
// Their values; a usage error naming `command` for a bad one.
models::LoadOptions load_options(const po::variables_map& vm, const std::string& command);

// --precision f32|bf16, a usage error naming `command` otherwise.
inline engine::Precision parse_precision_flag(const po::variables_map& vm,
                                              const std::string& command) {
  const std::string name = vm["precision"].as<std::string>();
  try {
    return engine::parse_precision(name);
  } catch (const engine::Error&) {
    throw UsageError(command + ": --precision must be f32 or bf16, not '" + name + "'");
  }
}

// The commands that take images (tools/cli_images.cpp).
// classify, eval and explain need a classifier: a checkpoint without a head has none.
void require_head(const models::LoadedModel& loaded, const std::string& model);
// Images in batches, threads, precision, the model's resolution, the positional images.
void add_image_options(po::options_description& opts, const char* precision_help,
                       int64_t batch_size = 64);
void check_image_options(const po::variables_map& vm, const std::string& command);
// Every file named, and every image file under every folder named, in sorted order.
std::vector<std::filesystem::path> image_paths(const std::vector<std::string>& args);
// The images in batches as the model takes them: `take(ok, images, input)` gets the files
// decoded, their uint8 images after the eval transform, and the batch. A file that fails to
// decode is reported and left out; returns how many did.
using BatchFn =
    std::function<void(const std::vector<std::filesystem::path>& ok,
                       const std::vector<cv::Mat>& images, const engine::Tensor& input)>;
int for_each_batch(engine::Context& ctx, const datasets::Preprocess& p,
                   const std::vector<std::filesystem::path>& paths, int64_t batch_size,
                   const BatchFn& take);
// The whole text as an integer (std::stoll's syntax), else nothing.
std::optional<int64_t> parse_int64(const std::string& text);
// --class / ?class=: the index of a class name, else the integer the text spells (not checked
// against the classes), else nothing.
std::optional<int64_t> class_index(const std::string& text,
                                   const std::vector<std::string>& classes);
// The k most likely classes, most likely first, and as vit classify --json writes them.
std::vector<int64_t> top_classes(const float* probabilities, int64_t K, int64_t k);
nlohmann::json top_k_json(const float* probabilities, const std::vector<int64_t>& order,
                          const std::vector<std::string>& classes);

// "sneaker 97.3%  rollout": what a picture of an explanation is captioned with.
std::string explanation_caption(const models::Explanation& e,
                                const std::vector<std::string>& classes, const std::string& what);
// One image's explanation as vit explain --json prints it (without "image" and "png"), with
// the options the Explainer resolved and its note().
nlohmann::json explanation_json(const models::Explanation& e, const models::ExplainOptions& o,
                                const std::string& note, const std::vector<std::string>& classes,
                                int64_t top_k);

int run_info(const std::vector<std::string>& args);
int run_models(const std::vector<std::string>& args);
int run_folder(const std::vector<std::string>& args);
int run_train(const std::vector<std::string>& args);
int run_eval(const std::vector<std::string>& args);
int run_classify(const std::vector<std::string>& args);
int run_embed(const std::vector<std::string>& args);
int run_bench(const std::vector<std::string>& args);
int run_explain(const std::vector<std::string>& args);
int run_serve(const std::vector<std::string>& args);

}  // namespace cli
