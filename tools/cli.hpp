// Shared plumbing of the vit sub-commands: strict option parsing and the usage error type.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include "engine/precision.hpp"
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
// What a freshly built model takes: its image size, channels and patch size (none for a CNN),
// mean and std 0.5.
datasets::Preprocess model_preprocess(const nlohmann::json& config);

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

int run_info(const std::vector<std::string>& args);
int run_models(const std::vector<std::string>& args);
int run_folder(const std::vector<std::string>& args);
int run_train(const std::vector<std::string>& args);
int run_eval(const std::vector<std::string>& args);
int run_classify(const std::vector<std::string>& args);
int run_embed(const std::vector<std::string>& args);
int run_bench(const std::vector<std::string>& args);

}  // namespace cli
