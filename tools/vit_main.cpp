// vit: the command-line front end. Parses options with Boost.Program_options and hands each
// sub-command to the libraries; it computes nothing itself. Exit codes: 0 success, 1 a
// runtime error (bad file, bad data), 2 a usage error (unknown command or flag).
#include <csignal>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <boost/program_options.hpp>
#include <oneapi/dnnl/dnnl.hpp>

#include "engine/context.hpp"
#include "engine/error.hpp"
#include "tools/cli.hpp"

namespace po = boost::program_options;

namespace {

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;
using cli::UsageError;

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>& args);
};

constexpr Command kCommands[] = {
    {"train", "train a classifier on an image folder (one sub-folder per class)", cli::run_train},
    {"eval", "accuracy, per-class accuracy and confusion matrix on a labelled folder",
     cli::run_eval},
    {"classify", "the top-k classes of images, text or JSON", cli::run_classify},
    {"explain", "where a model looks: attention rollout or Grad-CAM over images, PNG or JSON",
     cli::run_explain},
    {"serve", "models behind an HTTP API with dynamic batching, and a page to try them",
     cli::run_serve},
    {"embed", "a ViT's pooled features of images, JSON or a .safetensors file", cli::run_embed},
    {"models", "the model presets, with parameters and FLOPs", cli::run_models},
    {"folder", "an image folder's classes and image counts as vit reads them, JSON",
     cli::run_folder},
    {"bench", "images/s of a model, and the fraction of the machine's matmul peak it reaches",
     cli::run_bench},
    {"info", "print the build, the oneDNN version and the CPU ISA it dispatches to", cli::run_info},
};

void print_help(const po::options_description& global) {
  std::cout << "usage: vit [--help] [--version] <command> [<args>]\n\n"
               "A Vision Transformer toolkit on oneDNN.\n\ncommands:\n";
  for (const Command& c : kCommands) std::printf("  %-10s %s\n", c.name, c.summary);
  std::cout << "\n" << global << "\n'vit <command> --help' describes a command.\n";
}

int run(int argc, char** argv) {
  // Flags before the first word are vit's own; the word names a command, the rest is its.
  std::vector<std::string> global_args, command_args;
  std::string command;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (command.empty() && (arg.empty() || arg[0] != '-')) {
      command = arg;
    } else {
      (command.empty() ? global_args : command_args).push_back(arg);
    }
  }

  po::options_description global("options");
  global.add_options()("help,h", "show this help")("version", "show the version of vit and oneDNN");
  const po::variables_map vm = cli::parse(global_args, global);
  if (vm.count("help")) {
    print_help(global);
    return 0;
  }
  if (vm.count("version")) {
    std::cout << "vit " << VIT_VERSION << "\n"
              << engine::onednn_version() << ", cpu isa " << engine::onednn_isa() << "\n";
    return 0;
  }
  if (command.empty()) throw UsageError("no command given");
  for (const Command& c : kCommands)
    if (command == c.name) return c.run(command_args);
  throw UsageError("unknown command '" + command + "'");
}

}  // namespace

int main(int argc, char** argv) {
  // Past a file-size limit (ulimit -f) a write then fails with EFBIG, reported like a full
  // disk, instead of the signal killing the process mid-save.
  std::signal(SIGXFSZ, SIG_IGN);
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "vit: " << e.what() << " (see 'vit --help')\n";
    return kExitUsage;
  } catch (const po::error& e) {
    std::cerr << "vit: " << e.what() << " (see 'vit --help')\n";
    return kExitUsage;
  } catch (const engine::Error& e) {
    std::cerr << "vit: " << e.what() << "\n";
    return kExitError;
  } catch (const dnnl::error& e) {
    std::cerr << "vit: oneDNN: " << e.what() << " (status " << e.status << ")\n";
    return kExitError;
  } catch (const std::exception& e) {
    std::cerr << "vit: " << e.what() << "\n";
    return kExitError;
  }
}
