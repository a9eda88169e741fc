// vit: the command-line front end. Parses options with Boost.Program_options and hands each
// sub-command to the libraries; it computes nothing itself. Exit codes: 0 success, 1 a
// runtime error (bad file, bad data), 2 a usage error (unknown command or flag).
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <boost/program_options.hpp>
#include <oneapi/dnnl/dnnl.hpp>

#include "engine/context.hpp"
#include "engine/error.hpp"

namespace po = boost::program_options;

namespace {

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Parses a sub-command's arguments strictly: every flag must be declared.
po::variables_map parse(const std::vector<std::string>& args, const po::options_description& opts,
                        const po::positional_options_description& positional = {}) {
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).positional(positional).run(), vm);
  po::notify(vm);
  return vm;
}

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

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>& args);
};

constexpr Command kCommands[] = {
    {"info", "print the build, the oneDNN version and the CPU ISA it dispatches to", run_info},
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
  const po::variables_map vm = parse(global_args, global);
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
