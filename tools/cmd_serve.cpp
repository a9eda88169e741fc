// vit serve: models behind an HTTP API (cpp-httplib) and a page to try them, with dynamic
// batching (models/serving.hpp). Binds 127.0.0.1 unless told otherwise, serves nothing from
// the file system but its own embedded page, and stops cleanly on SIGTERM or SIGINT.
#include <httplib.h>
#include <signal.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "datasets/overlay.hpp"
#include "engine/error.hpp"
#include "models/serving.hpp"
#include "tools/cli.hpp"

namespace cli {

extern const char* const kServePage;  // serve_page.html, compiled in (serve_page.cpp.in)

namespace {

using Clock = std::chrono::steady_clock;

// Prometheus' text format: requests by route and status, latency and batch-size histograms,
// the queue's depth. Routes outside the API are counted as "other", so that no client can
// grow the label set.
class Metrics {
 public:
  static constexpr std::array<double, 12> kLatency{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                   0.1,   0.25,   0.5,   1,    2.5,   10};

  void record(const std::string& route, int status, double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    requests_[{route, status}]++;
    Histogram& h = latency_[route];
    for (size_t i = 0; i < kLatency.size(); ++i)
      if (seconds <= kLatency[i]) h.buckets[i]++;
    h.count++;
    h.sum += seconds;
  }

  std::string render(const models::Batcher& batcher) const {
    std::ostringstream out;
    std::lock_guard<std::mutex> lock(mutex_);
    out << "# HELP vit_requests_total HTTP requests answered, by route and status.\n"
           "# TYPE vit_requests_total counter\n";
    for (const auto& [key, n] : requests_)
      out << "vit_requests_total{route=\"" << key.first << "\",status=\"" << key.second << "\"} "
          << n << "\n";
    out << "# HELP vit_request_duration_seconds Time from the request's headers to its answer.\n"
           "# TYPE vit_request_duration_seconds histogram\n";
    for (const auto& [route, h] : latency_) {
      for (size_t i = 0; i < kLatency.size(); ++i)
        out << "vit_request_duration_seconds_bucket{route=\"" << route << "\",le=\"" << kLatency[i]
            << "\"} " << h.buckets[i] << "\n";
      out << "vit_request_duration_seconds_bucket{route=\"" << route << "\",le=\"+Inf\"} "
          << h.count << "\n"
          << "vit_request_duration_seconds_sum{route=\"" << route << "\"} " << h.sum << "\n"
          << "vit_request_duration_seconds_count{route=\"" << route << "\"} " << h.count << "\n";
    }
    // Batch sizes: the batcher counts each size; the buckets are powers of two.
    const std::vector<uint64_t> sizes = batcher.batch_sizes();
    out << "# HELP vit_batch_size Images per forward pass.\n# TYPE vit_batch_size histogram\n";
    uint64_t count = 0, sum = 0;
    for (size_t s = 0; s < sizes.size(); ++s) count += sizes[s], sum += (s + 1) * sizes[s];
    for (size_t le = 1; le < sizes.size() * 2; le *= 2) {
      uint64_t below = 0;
      for (size_t s = 0; s < sizes.size() && s + 1 <= le; ++s) below += sizes[s];
      out << "vit_batch_size_bucket{le=\"" << le << "\"} " << below << "\n";
    }
    out << "vit_batch_size_bucket{le=\"+Inf\"} " << count << "\nvit_batch_size_sum " << sum
        << "\nvit_batch_size_count " << count << "\n";
    const std::array<uint64_t, 3> closed = batcher.batches_closed();
    out << "# HELP vit_batches_total Forward passes, by why their batch closed: full, its "
           "oldest request had waited --max-delay-ms, or no request was on its way.\n"
           "# TYPE vit_batches_total counter\n";
    for (auto [reason, i] : {std::pair{"full", models::Batcher::Closed::full},
                             {"max_delay", models::Batcher::Closed::max_delay},
                             {"nothing_on_the_way", models::Batcher::Closed::nothing_on_the_way}})
      out << "vit_batches_total{closed=\"" << reason << "\"} " << closed[size_t(i)] << "\n";
    out << "# HELP vit_compute_seconds_total Time the model spent computing batches.\n"
           "# TYPE vit_compute_seconds_total counter\n"
        << "vit_compute_seconds_total " << batcher.compute_seconds() << "\n";
    out << "# HELP vit_queue_depth Images waiting for the model.\n# TYPE vit_queue_depth gauge\n"
        << "vit_queue_depth " << batcher.queue_depth() << "\n";
    out << "# HELP vit_requests_on_the_way Requests whose headers are in, not yet queued.\n"
           "# TYPE vit_requests_on_the_way gauge\n"
        << "vit_requests_on_the_way " << batcher.on_the_way() << "\n";
    return out.str();
  }

 private:
  struct Histogram {
    std::array<uint64_t, kLatency.size()> buckets{};
    uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, Histogram> latency_;
};

// The request this thread is reading, announced to the batcher from its headers on (the
// pre-routing handler) until it is submitted. Withdrawn when it fails first (the logger), and
// when its connection ends, whatever happened (the pool).
thread_local models::Batcher::OnTheWay on_the_way;

// At most `threads` connections served at once and `waiting` more accepted and queued; past
// that the accepting thread waits, and new clients wait in the kernel's backlog.
class BoundedPool : public httplib::TaskQueue {
 public:
  BoundedPool(size_t threads, size_t waiting) : waiting_(waiting) {
    for (size_t i = 0; i < threads; ++i)
      threads_.emplace_back([this] {
        std::unique_lock<std::mutex> lock(mutex_);
        while (true) {
          ++idle_;
          room_.notify_one();  // an idle thread is room for one more connection
          ready_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
          --idle_;
          if (jobs_.empty()) return;
          std::function<void()> fn = std::move(jobs_.front());
          jobs_.pop_front();
          lock.unlock();
          fn();
          on_the_way.withdraw();
          lock.lock();
        }
      });
  }
  // Served plus queued stays within threads + waiting: a connection is queued only while fewer
  // than waiting + (idle threads) are queued already.
  void enqueue(std::function<void()> fn) override {
    std::unique_lock<std::mutex> lock(mutex_);
    room_.wait(lock, [&] { return stop_ || jobs_.size() < waiting_ + idle_; });
    jobs_.push_back(std::move(fn));
    lock.unlock();
    ready_.notify_one();
  }
  void shutdown() override {  // the jobs queued still run: each closes its connection
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    ready_.notify_all();
    room_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

 private:
  const size_t waiting_;
  std::vector<std::thread> threads_;
  std::deque<std::function<void()>> jobs_;
  size_t idle_ = 0;
  std::mutex mutex_;
  std::condition_variable ready_, room_;
  bool stop_ = false;
};

// An answer the client caused (or the server's state), with its status.
struct HttpError : std::runtime_error {
  HttpError(int status, const std::string& what) : std::runtime_error(what), status(status) {}
  int status;
};

void send_json(httplib::Response& res, int status, const nlohmann::json& j) {
  res.status = status;
  res.set_content(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n",
                  "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& what) {
  send_json(res, status, {{"error", what}});
}

// The images of a request: the body itself, or every multipart field named "image".
struct Upload {
  std::string name;
  cv::Mat image;  // after the model's eval transform
  std::vector<float> input;
};

std::vector<Upload> read_images(const httplib::Request& req, const models::ServedModel& m,
                                int64_t max_images) {
  std::vector<std::pair<std::string, const std::string*>> parts;
  if (req.is_multipart_form_data()) {
    const auto range = req.files.equal_range("image");
    for (auto it = range.first; it != range.second; ++it)
      parts.emplace_back(it->second.filename.empty() ? "image" : it->second.filename,
                         &it->second.content);
    if (parts.empty()) throw HttpError(400, "the multipart form has no field named 'image'");
  } else {
    if (req.body.empty())
      throw HttpError(400,
                      "the request has no body: send the image's bytes, or a multipart "
                      "form with a field 'image'");
    parts.emplace_back("body", &req.body);
  }
  if (int64_t(parts.size()) > max_images)
    throw HttpError(413, std::to_string(parts.size()) + " images in one request; at most " +
                             std::to_string(max_images) + " (--max-batch)");
  const datasets::Preprocess& p = m.loaded.preprocess;
  std::vector<Upload> uploads;
  for (const auto& [name, bytes] : parts) {
    Upload u;
    u.name = name;
    try {
      const std::vector<unsigned char> data(bytes->begin(), bytes->end());
      u.image = datasets::eval_transform(datasets::decode_image(data, p.in_chans, name), p);
    } catch (const engine::Error& e) {
      throw HttpError(400, e.what());
    }
    u.input.resize(size_t(p.sample_size()));
    datasets::to_model_input(u.image, p, u.input.data());
    uploads.push_back(std::move(u));
  }
  return uploads;
}

int64_t int_param(const httplib::Request& req, const std::string& key, int64_t fallback) {
  if (!req.has_param(key.c_str())) return fallback;
  const std::string v = req.get_param_value(key.c_str());
  const std::optional<int64_t> x = parse_int64(v);
  if (!x) throw HttpError(400, "'" + key + "' must be an integer, not '" + v + "'");
  return *x;
}

struct Server {
  models::Batcher& batcher;
  Metrics metrics;
  std::chrono::milliseconds timeout;

  size_t model_index(const httplib::Request& req) const {
    if (!req.has_param("model")) return 0;
    const std::string name = req.get_param_value("model");
    const auto& ms = batcher.models();
    for (size_t i = 0; i < ms.size(); ++i)
      if (ms[i].name == name) return i;
    std::string names;
    for (const auto& m : ms) names += (names.empty() ? "" : ", ") + m.name;
    throw HttpError(404, "no model '" + name + "' (served: " + names + ")");
  }

  models::BatchResult run(size_t model, std::vector<Upload>& uploads,
                          std::optional<models::ExplainOptions> explain) {
    std::vector<std::vector<float>> inputs;
    for (Upload& u : uploads) inputs.push_back(std::move(u.input));
    std::future<models::BatchResult> f;
    try {
      f = batcher.submit(model, std::move(inputs), std::move(explain), &on_the_way);
    } catch (const models::QueueFull& e) {
      throw HttpError(503, e.what());
    }
    if (f.wait_for(timeout) != std::future_status::ready)
      throw HttpError(503, "no answer within " + std::to_string(timeout.count()) +
                               " ms (--timeout-ms): the server is overloaded");
    return f.get();
  }

  void classify(const httplib::Request& req, httplib::Response& res) {
    const size_t m = model_index(req);
    const models::ServedModel& served = batcher.models()[m];
    const int64_t K = int64_t(served.loaded.classes.size());
    const int64_t top_k = int_param(req, "top_k", 5);
    if (top_k < 1) throw HttpError(400, "'top_k' must be positive");
    std::vector<Upload> uploads = read_images(req, served, batcher.options().max_batch);
    const models::BatchResult r = run(m, uploads, std::nullopt);
    nlohmann::json out = nlohmann::json::array();
    for (size_t i = 0; i < uploads.size(); ++i) {
      const float* row = r.probabilities[i].data();
      out.push_back(
          {{"image", uploads[i].name},
           {"top_k", top_k_json(row, top_classes(row, K, top_k), served.loaded.classes)}});
    }
    res.set_header("X-Vit-Batch-Size", std::to_string(r.batch_size));
    send_json(res, 200, out);
  }

  void explain(const httplib::Request& req, httplib::Response& res) {
    const size_t m = model_index(req);
    const models::ServedModel& served = batcher.models()[m];
    const std::vector<std::string>& classes = served.loaded.classes;
    models::ExplainOptions o;
    if (req.has_param("method")) o.method = req.get_param_value("method");
    if (req.has_param("head_fusion")) o.rollout.head_fusion = req.get_param_value("head_fusion");
    if (req.has_param("discard_ratio")) {
      const std::string v = req.get_param_value("discard_ratio");
      char* end = nullptr;
      o.rollout.discard_ratio = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0')
        throw HttpError(400, "'discard_ratio' must be a number, not '" + v + "'");
    }
    o.layer = int_param(req, "layer", -1);
    o.heads = req.has_param("heads") && req.get_param_value("heads") != "0";
    if (req.has_param("class")) {
      const std::string c = req.get_param_value("class");
      const std::optional<int64_t> index = class_index(c, classes);
      if (!index) throw HttpError(400, "'class' must be an integer, not '" + c + "'");
      o.target_class = *index;
      if (o.target_class < 0 || o.target_class >= int64_t(classes.size()))
        throw HttpError(400, "'class' " + c + " is not one of the model's classes");
    }
    const std::string format = req.has_param("format") ? req.get_param_value("format") : "png";
    if (format != "png" && format != "json")
      throw HttpError(400, "'format' must be png or json, not '" + format + "'");
    try {
      o = models::Explainer::resolve(*served.loaded.model, o);
    } catch (const engine::Error& e) {
      std::string what = e.what();  // the CLI's flags, as the query's keys
      for (auto [flag, key] : {std::pair{"--method", "method"},
                               {"--head-fusion", "head_fusion"},
                               {"--discard-ratio", "discard_ratio"},
                               {"--layer", "layer"},
                               {"--class", "class"},
                               {"--heads", "heads"}})
        for (size_t at; (at = what.find(flag)) != std::string::npos;)
          what.replace(at, std::string(flag).size(), std::string("'") + key + "'");
      throw HttpError(400, what);
    }
    std::vector<Upload> uploads = read_images(req, served, batcher.options().max_batch);
    if (format == "png" && uploads.size() > 1)
      throw HttpError(400, "format=png explains one image; send several with format=json");
    const models::BatchResult r = run(m, uploads, o);
    res.set_header("X-Vit-Batch-Size", std::to_string(r.batch_size));
    res.set_header("X-Vit-Method", o.method);
    if (format == "png") {
      const models::Explanation& e = r.explanations[0];
      const std::vector<unsigned char> png = datasets::encode_png(datasets::heatmap_overlay(
          uploads[0].image, e.map, e.grid_h, e.grid_w, explanation_caption(e, classes, o.method)));
      res.status = 200;
      res.set_content(std::string(png.begin(), png.end()), "image/png");
      return;
    }
    // The same JSON as vit explain --json; the note and options come from an Explainer's view.
    nlohmann::json out = nlohmann::json::array();
    const int64_t top_k = int_param(req, "top_k", 5);
    if (top_k < 1) throw HttpError(400, "'top_k' must be positive");
    for (size_t i = 0; i < uploads.size(); ++i) {
      nlohmann::json j = {{"image", uploads[i].name}};
      j.update(explanation_json(r.explanations[i], o,
                                models::Explainer::pooling_note(*served.loaded.model), classes,
                                top_k));
      out.push_back(j);
    }
    send_json(res, 200, out);
  }

  nlohmann::json models_json() const {
    nlohmann::json out = nlohmann::json::array();
    for (const models::ServedModel& m : batcher.models()) {
      const engine::Model& model = *m.loaded.model;
      out.push_back({{"name", m.name},
                     {"file", m.path},
                     {"arch", model.arch()},
                     {"classes", m.loaded.classes},
                     {"config", model.config()},
                     {"preprocess", m.loaded.preprocess},
                     {"parameters", model.store.num_trainable()},
                     {"flops_per_image", model.flops_per_image()}});
    }
    return out;
  }
};

// A handler that answers its own failures: HttpError with its status, anything else 500.
template <typename F>
httplib::Server::Handler guarded(F f) {
  return [f](const httplib::Request& req, httplib::Response& res) {
    try {
      f(req, res);
    } catch (const HttpError& e) {
      if (e.status == 503) res.set_header("Retry-After", "1");
      send_error(res, e.status, e.what());
    } catch (const std::exception& e) {
      send_error(res, 500, e.what());
    }
  };
}

// The method as logged: a client's bytes only when they look like a method (the rest of a body
// refused with 413 can arrive as a "request line").
std::string method_label(const std::string& method) {
  const bool word =
      !method.empty() && method.size() <= 10 &&
      std::all_of(method.begin(), method.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
  return word ? method : "-";
}

std::string route_label(const std::string& path) {
  static const std::set<std::string> routes{"/",          "/healthz",     "/metrics",
                                            "/v1/models", "/v1/classify", "/v1/explain"};
  return routes.count(path) ? path : "other";
}

// The request's start, set by the pre-routing handler on the thread that then answers it.
thread_local std::optional<Clock::time_point> request_start;

}  // namespace

int run_serve(const std::vector<std::string>& args) {
  po::options_description opts(
      "vit serve: models behind an HTTP API, with dynamic batching, and a page to try them");
  auto add = opts.add_options();
  add("model", po::value<std::vector<std::string>>(),
      "a model file to serve, named by its file's stem; repeat for more (default: the bundled "
      "ViT and CNN)");
  add("host", po::value<std::string>()->default_value("127.0.0.1"),
      "the address to listen on (0.0.0.0: every interface)");
  add("port", po::value<int>()->default_value(8080), "the port (0: any free one, printed)");
  add("max-batch", po::value<int64_t>()->default_value(16), "images per forward pass, at most");
  add("max-delay-ms", po::value<double>()->default_value(2.0),
      "how long a request waits at most for others to batch with, while more are on their way");
  add("max-queue", po::value<int64_t>()->default_value(256),
      "images waiting, beyond which requests get 503 with Retry-After");
  add("max-body-mb", po::value<double>()->default_value(16.0),
      "the largest request body (413 beyond)");
  add("timeout-ms", po::value<int64_t>()->default_value(30000),
      "a request not answered in this time gets 503");
  add("http-threads", po::value<int>()->default_value(64),
      "connections served at once (decoding and preprocessing run on these threads)");
  add("max-connections", po::value<int>()->default_value(256),
      "connections open at most: served and waiting; past it new ones wait in the backlog");
  add("threads", po::value<int>()->default_value(0), "compute threads (0: all cores)");
  add("precision", po::value<std::string>()->default_value("f32"),
      "f32 or bf16 (matmul operands in bf16 on AVX-512 CPUs; ViT models)");
  add("help,h", "show this help");
  const po::variables_map vm = parse(args, opts);
  if (vm.count("help")) {
    std::cout << "usage: vit serve [--model FILE]... [--host 127.0.0.1] [--port 8080]\n\n" << opts;
    return 0;
  }
  const int port = vm["port"].as<int>();
  if (port < 0 || port > 65535) throw UsageError("vit serve: --port must be in 0 to 65535");
  const int http_threads = vm["http-threads"].as<int>();
  const int max_connections = vm["max-connections"].as<int>();
  if (http_threads < 1) throw UsageError("vit serve: --http-threads must be positive");
  if (max_connections < http_threads)
    throw UsageError("vit serve: --max-connections must be at least --http-threads");
  const double body_mb = vm["max-body-mb"].as<double>();
  if (!(body_mb > 0)) throw UsageError("vit serve: --max-body-mb must be positive");
  const double delay_ms = vm["max-delay-ms"].as<double>();
  if (!(delay_ms >= 0 && delay_ms <= 60000))
    throw UsageError("vit serve: --max-delay-ms must be in 0 to 60000");
  if (vm["timeout-ms"].as<int64_t>() < 1)
    throw UsageError("vit serve: --timeout-ms must be positive");
  models::BatchOptions batch;
  batch.max_batch = vm["max-batch"].as<int64_t>();
  batch.max_queue = vm["max-queue"].as<int64_t>();
  batch.max_delay = std::chrono::microseconds(int64_t(std::llround(delay_ms * 1000)));
  if (batch.max_batch < 1) throw UsageError("vit serve: --max-batch must be positive");
  if (batch.max_queue < batch.max_batch)
    throw UsageError("vit serve: --max-queue must be at least --max-batch");
  const engine::Precision precision = parse_precision_flag(vm, "vit serve");

  // SIGTERM and SIGINT are taken by one thread (sigtimedwait below): blocked here, before any
  // thread starts, so that every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  std::vector<std::string> paths =
      vm.count("model") ? vm["model"].as<std::vector<std::string>>()
                        : std::vector<std::string>{VIT_DEFAULT_MODEL, VIT_DEFAULT_CNN};
  engine::Context ctx(0, vm["threads"].as<int>());
  std::vector<models::ServedModel> served;
  for (const std::string& path : paths) {
    models::ServedModel m;
    m.path = path;
    m.name = std::filesystem::path(path).stem().string();
    if (m.name.empty() || m.name == "model")  // a hub folder or its model.safetensors
      m.name = std::filesystem::path(path).lexically_normal().parent_path().filename().string();
    for (const models::ServedModel& other : served)
      if (other.name == m.name)
        throw UsageError("vit serve: two models named '" + m.name + "' (" + other.path + ", " +
                         path + ")");
    m.loaded = models::load_model(path, ctx, {"optimizer."});
    require_head(m.loaded, path);
    m.loaded.model->set_precision(precision);
    std::fprintf(stderr, "vit serve: model '%s' (%s, %zu classes) from %s\n", m.name.c_str(),
                 m.loaded.model->arch().c_str(), m.loaded.classes.size(), path.c_str());
    served.push_back(std::move(m));
  }
  models::Batcher batcher(ctx, std::move(served), batch);
  Server state{batcher, {}, std::chrono::milliseconds(vm["timeout-ms"].as<int64_t>())};

  httplib::Server http;
  http.new_task_queue = [&] {
    return new BoundedPool(size_t(http_threads), size_t(max_connections - http_threads));
  };
  // SO_REUSEADDR, so that a restart need not wait out TIME_WAIT; not httplib's SO_REUSEPORT,
  // under which a second server would share the port instead of being refused it.
  socket_t listening = INVALID_SOCKET;
  http.set_socket_options([&listening](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listening = sock;
  });
  http.set_payload_max_length(size_t(body_mb * 1024 * 1024));
  http.set_read_timeout(5, 0);
  http.set_write_timeout(5, 0);
  // Without TCP_NODELAY a response written in two pieces waits out the client's delayed ACK:
  // 40 ms per request on Linux (measured: 23 req/s on one connection, 44 ms each).
  http.set_tcp_nodelay(true);
  // A connection holds a thread while it lives: closed after 10 requests or 2 s idle, so that
  // connections waiting for a thread (past --http-threads) get their turn.
  http.set_keep_alive_timeout(2);
  http.set_keep_alive_max_count(10);
  http.set_pre_routing_handler([&](const httplib::Request& req, httplib::Response& res) {
    request_start = Clock::now();
    on_the_way.withdraw();
    // Before the body is read: a form-urlencoded body (curl's default for --data-binary) would
    // be parsed as a form and cut at httplib's 8 KB, and any other type is not an image.
    if (req.method == "POST") {
      const std::string type = req.get_header_value("Content-Type");
      const std::string base = type.substr(0, type.find(';'));
      if (!(base.empty() || base.rfind("image/", 0) == 0 || base == "application/octet-stream" ||
            base == "multipart/form-data")) {
        send_error(res, 415,
                   "Content-Type '" + base.substr(0, 100) +
                       "': send the image's bytes as application/octet-stream or image/* "
                       "(curl: -H 'Content-Type: application/octet-stream'), or a "
                       "multipart/form-data field 'image'");
        return httplib::Server::HandlerResponse::Handled;
      }
      if (req.path == "/v1/classify" || req.path == "/v1/explain") on_the_way = batcher.announce();
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  http.set_logger([&](const httplib::Request& req, const httplib::Response& res) {
    const double seconds =
        request_start ? std::chrono::duration<double>(Clock::now() - *request_start).count() : 0.0;
    request_start.reset();
    on_the_way.withdraw();
    const std::string route = route_label(req.path);
    state.metrics.record(route, res.status, seconds);
    const std::string batch_size = res.get_header_value("X-Vit-Batch-Size");
    std::fprintf(stderr, "vit serve: %s %s %d %.1f ms%s%s\n", method_label(req.method).c_str(),
                 route.c_str(), res.status, 1000 * seconds, batch_size.empty() ? "" : " batch ",
                 batch_size.c_str());
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a handler's own error
    if (res.status == 404)
      send_error(res, 404, "no route " + method_label(req.method) + " " + req.path.substr(0, 200));
    else if (res.status == 413)
      send_error(res, 413, "the request body is larger than --max-body-mb");
    else if (res.status == 400 && req.is_multipart_form_data())
      send_error(res, 400, "a malformed multipart/form-data body");
    else if (res.status == 400)
      send_error(res, 400, "a malformed HTTP request");
    else
      send_error(res, res.status, "HTTP status " + std::to_string(res.status));
  });

  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(kServePage, "text/html; charset=utf-8");
  });
  http.Get("/healthz", [&](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, {{"status", "ok"}, {"models", batcher.models().size()}});
  });
  http.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(state.metrics.render(batcher), "text/plain; version=0.0.4");
  });
  http.Get("/v1/models", guarded([&](const httplib::Request&, httplib::Response& res) {
             send_json(res, 200, state.models_json());
           }));
  http.Post("/v1/classify", guarded([&](const httplib::Request& req, httplib::Response& res) {
              state.classify(req, res);
            }));
  http.Post("/v1/explain", guarded([&](const httplib::Request& req, httplib::Response& res) {
              state.explain(req, res);
            }));

  const std::string host = vm["host"].as<std::string>();
  const int bound =
      port == 0 ? http.bind_to_any_port(host) : (http.bind_to_port(host, port) ? port : -1);
  if (bound < 0)
    throw engine::Error("cannot listen on " + host + ":" + std::to_string(port) + ": " +
                        std::strerror(errno));
  // Debian's httplib 0.11 listens with a backlog of 5: clients that reconnect together (64 of
  // them, every keep-alive cycle) overflow it, and each dropped SYN costs its client a 1 s
  // retransmission (measured: p99 1.2 s at 64 connections). Listening again raises it.
  if (listening == INVALID_SOCKET || ::listen(listening, SOMAXCONN) != 0)
    throw engine::Error("cannot listen on " + host + ":" + std::to_string(bound) +
                        " with a backlog of " + std::to_string(SOMAXCONN) + ": " +
                        std::strerror(errno));
  std::fprintf(stderr,
               "vit serve: listening on http://%s:%d/ (max batch %lld, max delay %.1f ms)\n",
               host.c_str(), bound, (long long)batch.max_batch, delay_ms);

  std::atomic<bool> done{false};
  std::thread signals([&] {
    const timespec tick{0, 100'000'000};
    while (!done) {
      const int sig = sigtimedwait(&stop_signals, nullptr, &tick);
      if (sig == SIGTERM || sig == SIGINT) {
        std::fprintf(stderr, "vit serve: %s: finishing the requests in flight\n",
                     sig == SIGTERM ? "SIGTERM" : "SIGINT");
        http.stop();
        return;
      }
    }
  });
  const bool listened = http.listen_after_bind();  // returns once stopped and drained
  done = true;
  signals.join();
  batcher.stop();  // a second signal stays blocked and pending: the drain is not cut short
  if (!listened) throw engine::Error("the server stopped on an error");
  std::fprintf(stderr, "vit serve: stopped\n");
  return 0;
}

}  // namespace cli
