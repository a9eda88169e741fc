// vit bench: images/s of a model preset (or any sizes) in inference or training, against the
// machine's own limit measured in the same run (a large oneDNN matmul), as JSON lines.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>

#include "engine/error.hpp"
#include "engine/trainer.hpp"
#include "models/registry.hpp"
#include "tools/cli.hpp"
#include "vit/halo_attention.hpp"

namespace cli {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Spread {
  double median, min, max;
};

Spread spread(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  const double median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return {median, v.front(), v.back()};
}

nlohmann::json to_json(const Spread& s) {
  return {{"median", s.median}, {"min", s.min}, {"max", s.max}};
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;  // Linux reports kilobytes
}

// The machine's limit for this precision: a large plain-layout matmul, the best case for the
// very kernels our layers use. Median GFLOP/s over `repeats` runs.
double measure_matmul_gflops(engine::Context& ctx, int64_t n, int repeats,
                             engine::Precision precision) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  // bf16 operands and an f32 result, as our bf16 matmuls run.
  const dnnl::memory::desc md({n, n}, engine::data_type(precision), tag::ab);
  const dnnl::memory::desc dst_md({n, n}, dt::f32, tag::ab);
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(md, md, dst_md), ctx.eng);
  dnnl::memory a(md, ctx.eng), b(md, ctx.eng), c(dst_md, ctx.eng);
  dnnl::memory values({{n, n}, dt::f32, tag::ab}, ctx.eng);
  float* v = static_cast<float*>(values.get_data_handle());
  for (int64_t i = 0; i < n * n; ++i) v[i] = float(i % 7) * 0.25f - 0.75f;
  for (dnnl::memory* m : {&a, &b}) dnnl::reorder(values, *m).execute(ctx.strm, values, *m);
  ctx.wait();
  const dnnl::matmul mm(pd);
  const auto run = [&] {
    mm.execute(ctx.strm, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    ctx.wait();
  };
  run();
  run();
  std::vector<double> gflops;
  for (int r = 0; r < repeats; ++r) {
    const auto start = Clock::now();
    run();
    gflops.push_back(2.0 * double(n) * double(n) * double(n) / seconds_since(start) / 1e9);
  }
  return spread(gflops).median;
}

// Runs `body` with oneDNN's verbose mode on and its stdout captured; returns the time each
// primitive execution reported, summed per (kind, propagation, implementation, shapes).
struct ProfileEntry {
  std::string kind, prop, impl, shapes;
  double ms = 0.0;
  int64_t calls = 0;
};

// Points stdout at `file` and oneDNN's verbose mode on while alive; restores both when it
// ends, also when the profiled body throws.
class CaptureVerbose {
 public:
  explicit CaptureVerbose(FILE* file) : saved_(dup(STDOUT_FILENO)) {
    std::fflush(stdout);
    dup2(fileno(file), STDOUT_FILENO);
    dnnl::set_verbose(1);
  }
  ~CaptureVerbose() {
    dnnl::set_verbose(0);
    std::fflush(stdout);
    dup2(saved_, STDOUT_FILENO);
    close(saved_);
  }
  CaptureVerbose(const CaptureVerbose&) = delete;
  CaptureVerbose& operator=(const CaptureVerbose&) = delete;

 private:
  int saved_;
};

template <class Body>
std::vector<ProfileEntry> profile_primitives(const Body& body) {
  const std::unique_ptr<FILE, int (*)(FILE*)> capture(std::tmpfile(), &std::fclose);
  if (!capture) throw engine::Error("vit bench --profile: cannot create a temporary file");
  {
    const CaptureVerbose on(capture.get());
    body();
  }

  std::map<std::string, ProfileEntry> entries;
  std::rewind(capture.get());
  char line[8192];
  while (std::fgets(line, sizeof line, capture.get())) {
    // onednn_verbose,exec,cpu,KIND,IMPL,PROP,MEMORY,ATTRS,AUX,SHAPES,MS
    std::vector<std::string> fields;
    std::stringstream in(line);
    for (std::string f; std::getline(in, f, ',');) fields.push_back(f);
    // oneDNN 2.6 prints "onednn_verbose", older versions "dnnl_verbose".
    if (fields.size() < 11 || (fields[0] != "onednn_verbose" && fields[0] != "dnnl_verbose") ||
        fields[1] != "exec")
      continue;
    const std::string& shapes = fields[fields.size() - 2];
    const std::string key = fields[3] + "," + fields[5] + "," + fields[4] + "," + shapes;
    ProfileEntry& e = entries[key];
    e.kind = fields[3];
    e.prop = fields[5];
    e.impl = fields[4];
    e.shapes = shapes;
    e.ms += std::stod(fields.back());
    ++e.calls;
  }
  std::vector<ProfileEntry> sorted;
  for (auto& [key, e] : entries) sorted.push_back(e);
  std::sort(sorted.begin(), sorted.end(),
            [](const ProfileEntry& a, const ProfileEntry& b) { return a.ms > b.ms; });
  return sorted;
}

}  // namespace

int run_bench(const std::vector<std::string>& args) {
  po::options_description model_opts = model_options("vit_tiny_patch16_224");
  model_opts.add_options()("num-classes", po::value<int64_t>(), "classes (default: the preset's)");
  // --model also takes a model file or checkpoint folder: its load time and memory are reported.
  po::options_description run_opts("measurement");
  auto add = run_opts.add_options();
  add("mode", po::value<std::string>()->default_value("infer"),
      "infer (forward only, evaluation mode) or train (forward, loss, backward, AdamW step)");
  add("batch-size", po::value<int64_t>()->default_value(32), "");
  add("warmup", po::value<int>()->default_value(3), "untimed iterations first");
  add("iters", po::value<int>()->default_value(10), "timed iterations per repeat");
  add("repeats", po::value<int>()->default_value(5), "repeats: median, min and max over them");
  add("threads", po::value<int>()->default_value(0), "compute threads (0: all cores)");
  add("precision", po::value<std::string>()->default_value("f32"),
      "f32 or bf16 (bf16 matmul operands, f32 results; AVX-512 CPUs)");
  add("attn-window-impl", po::value<std::string>(),
      "with --attn-window: auto (default), mask (N × N scores, masked) or blocks (query blocks "
      "against their halo of keys)");
  add("no-peak", "skip measuring the machine's matmul peak");
  add("profile",
      "also time every oneDNN primitive (its verbose mode) over one more repeat: a table on "
      "stderr, the same in the JSON");
  add("help,h", "show this help");
  po::options_description all(
      "vit bench: images/s, GFLOP/s and the fraction of the machine's peak");
  all.add(model_opts).add(run_opts);
  const po::variables_map vm = parse(args, all);
  if (vm.count("help")) {
    std::cout << "usage: vit bench [--model PRESET] [--mode infer|train] [--batch-size B] "
                 "[options]\n\nPrints one JSON line. FLOPs count 2 × multiply-adds of the "
                 "convolutions, linear layers and attention matmuls; training counts 3 × the "
                 "forward.\n\n"
              << all;
    return 0;
  }
  const std::string mode = vm["mode"].as<std::string>();
  if (mode != "infer" && mode != "train")
    throw UsageError("vit bench: --mode must be infer or train, not '" + mode + "'");
  const int64_t batch = vm["batch-size"].as<int64_t>();
  const int warmup = vm["warmup"].as<int>(), iters = vm["iters"].as<int>(),
            repeats = vm["repeats"].as<int>();
  if (batch <= 0 || warmup < 0 || iters <= 0 || repeats <= 0)
    throw UsageError("vit bench: --batch-size, --iters and --repeats must be positive");

  const engine::Precision precision = parse_precision_flag(vm, "vit bench");
  engine::Context ctx(0, vm["threads"].as<int>());
  // A preset (random weights), or a model file or checkpoint folder, whose loading is timed.
  const std::string model_name = vm["model"].as<std::string>();
  std::unique_ptr<engine::Model> net;
  datasets::Preprocess preprocess;
  nlohmann::json load_report;
  std::string window_impl;  // how a ViT's attn_window runs: "mask" or "blocks"
  auto window_impl_of = [](const nlohmann::json& config) -> std::string {
    const vit::VitConfig c = config.get<vit::VitConfig>();
    if (c.attn_window == 0) return "";
    return vit::HaloAttention::used(c) ? "blocks" : "mask";
  };
  std::error_code ec;
  if (std::filesystem::exists(model_name, ec)) {
    if (vm.count("attn-window-impl"))
      throw UsageError("vit bench: --attn-window-impl applies to a preset, not a model file");
    models::LoadOptions load;
    if (vm.count("img-size")) load.img_size = vm["img-size"].as<int64_t>();
    const double rss_before = peak_rss_mb();
    const auto start = Clock::now();
    models::LoadedModel loaded = models::load_model(model_name, ctx, {"optimizer."}, load);
    load_report = {{"seconds", seconds_since(start)},
                   {"peak_rss_mb_before", rss_before},
                   {"peak_rss_mb_after", peak_rss_mb()},
                   {"weights_mb", double(loaded.model->store.size()) * 4 / 1048576.0}};
    net = std::move(loaded.model);
    preprocess = loaded.preprocess;
    if (net->arch() == "vit") window_impl = window_impl_of(net->config());
  } else {
    const models::Preset& preset = models::preset(model_name);
    nlohmann::json config = model_config(vm, preset, "vit bench");
    if (vm.count("num-classes")) config["num_classes"] = vm["num-classes"].as<int64_t>();
    if (vm.count("attn-window-impl")) {
      if (preset.arch != "vit")
        throw UsageError("vit bench: --attn-window-impl applies to a ViT, not " + preset.name);
      config["attn_window_impl"] = vm["attn-window-impl"].as<std::string>();
    }
    // The config asked for, which (unlike net->config()) carries attn_window_impl.
    if (preset.arch == "vit") window_impl = window_impl_of(config);
    // Inference needs no gradients or optimizer moments (three copies of the weights: 1 GB
    // for ViT-B); --mode train allocates them below.
    net = models::make_model(preset.arch, config, ctx, /*inference_only=*/true);
    net->init_weights(ctx);
    preprocess = model_preprocess(*net);
  }
  net->set_precision(precision);
  if (mode == "train") net->store.allocate_training(ctx.eng);
  if (mode == "train" && net->num_classes() == 0)
    throw engine::Error("'" + model_name + "' has no head: vit bench --mode train needs one");

  // Random inputs and labels: speed does not depend on the values.
  engine::Tensor input(ctx.eng, preprocess.input_dims(batch));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < input.numel(); ++i) input[i] = normal(ctx.rng);
  std::vector<int> labels(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) labels[b] = int(b % std::max<int64_t>(1, net->num_classes()));

  const bool training = mode == "train";
  net->train(training);
  engine::SoftmaxCrossEntropy loss(0.1f);
  engine::Optimizer optimizer;
  const auto step = [&] {
    if (training) {
      engine::train_step(ctx, *net, loss, optimizer, input, labels, nullptr, 1e-4f, nullptr);
    } else {
      net->forward(ctx, input);
      ctx.wait();
    }
  };
  for (int i = 0; i < warmup; ++i) step();
  std::vector<double> images_per_second, latency_ms;
  for (int r = 0; r < repeats; ++r) {
    const auto start = Clock::now();
    for (int i = 0; i < iters; ++i) step();
    const double s = seconds_since(start);
    images_per_second.push_back(double(batch) * iters / s);
    latency_ms.push_back(1e3 * s / iters);
  }
  const double rss_mb = peak_rss_mb();  // before the peak matmul's buffers

  std::vector<ProfileEntry> profile;
  double profiled_ms = 0.0;
  if (vm.count("profile")) {
    const auto start = Clock::now();
    profile = profile_primitives([&] {
      for (int i = 0; i < iters; ++i) step();
    });
    profiled_ms = 1e3 * seconds_since(start) / iters;
  }

  const Spread ips = spread(images_per_second);
  const double flops = net->flops_per_image() * (training ? 3.0 : 1.0);
  const double achieved = flops * ips.median / 1e9;
  nlohmann::json out = {{"model", model_name},
                        {"arch", net->arch()},
                        {"config", net->config()},
                        {"mode", mode},
                        {"precision", engine::precision_name(precision)},
                        {"batch", batch},
                        {"threads", ctx.threads},
                        {"iters", iters},
                        {"repeats", repeats},
                        {"images_per_second", to_json(ips)},
                        {"latency_ms", to_json(spread(latency_ms))},
                        {"parameters", net->store.num_trainable()},
                        {"gflop_per_image", flops / 1e9},
                        {"achieved_gflops", achieved},
                        {"peak_rss_mb", rss_mb},
                        {"isa", engine::onednn_isa()},
                        {"onednn", engine::onednn_version()}};
  if (!load_report.is_null()) out["load"] = load_report;
  if (!window_impl.empty()) out["attn_window_impl"] = window_impl;
  if (!vm.count("no-peak")) {
    const double peak = measure_matmul_gflops(ctx, 2048, 5, precision);
    out["peak_gflops"] = peak;
    out["peak_fraction"] = achieved / peak;
  }
  if (!profile.empty()) {
    double in_primitives = 0.0;
    for (const ProfileEntry& e : profile) in_primitives += e.ms / iters;
    std::fprintf(stderr, "per step: %.2f ms, of which %.2f ms in oneDNN primitives\n", profiled_ms,
                 in_primitives);
    std::fprintf(stderr, "%9s %6s %6s  %-20s %-18s %-28s %s\n", "ms/step", "share", "calls",
                 "primitive", "propagation", "implementation", "shapes");
    nlohmann::json rows = nlohmann::json::array();
    for (const ProfileEntry& e : profile) {
      const double ms = e.ms / iters;
      std::fprintf(stderr, "%9.3f %5.1f%% %6lld  %-20s %-18s %-28s %s\n", ms,
                   100.0 * ms / profiled_ms, static_cast<long long>(e.calls / iters),
                   e.kind.c_str(), e.prop.c_str(), e.impl.c_str(), e.shapes.c_str());
      rows.push_back({{"primitive", e.kind},
                      {"propagation", e.prop},
                      {"implementation", e.impl},
                      {"shapes", e.shapes},
                      {"ms_per_step", ms},
                      {"calls_per_step", e.calls / iters}});
    }
    out["profile"] = {
        {"ms_per_step", profiled_ms}, {"ms_in_primitives", in_primitives}, {"primitives", rows}};
  }
  std::cout << out.dump() << std::endl;
  return 0;
}

}  // namespace cli
