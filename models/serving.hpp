// The batching inference session behind `vit serve`, after Triton's dynamic batcher: requests
// (each one or more images, already decoded and preprocessed by the caller's thread) wait in
// one bounded queue; one compute thread takes the oldest request and every later one for the
// same model and the same work, up to max_batch images, and runs them as one forward pass (the
// fused path for a ViT). It waits for company only while more requests are on their way (their
// headers in, their bodies or decoding not done) and at most until the oldest has waited
// max_delay: a request that cannot have company is not kept waiting. One model computes at a
// time, with all of oneDNN's threads.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/context.hpp"
#include "models/explain.hpp"
#include "models/registry.hpp"

namespace models {

struct ServedModel {
  std::string name;  // what requests call it (?model=NAME)
  std::string path;  // the file it came from
  LoadedModel loaded;
};

struct BatchOptions {
  int64_t max_batch = 16;                     // images per forward pass
  std::chrono::microseconds max_delay{2000};  // how long the oldest request waits for company
  int64_t max_queue = 256;                    // images waiting, beyond which submit refuses
};

// What one request gets back: per image the softmax over the classes, and for an explain
// request its explanation; batch_size is how many images shared the forward pass.
struct BatchResult {
  std::vector<std::vector<float>> probabilities;
  std::vector<Explanation> explanations;
  int64_t batch_size = 0;
};

// submit() when the queue already holds max_queue images.
struct QueueFull : engine::Error {
  using engine::Error::Error;
};

class Batcher {
 public:
  // A request on its way to submit(), announced by announce(): while any are, the batch being
  // formed waits for them (up to max_delay). Withdrawn when destroyed, or taken by submit().
  class OnTheWay {
   public:
    OnTheWay() = default;
    OnTheWay(OnTheWay&& o) noexcept : batcher_(o.batcher_) { o.batcher_ = nullptr; }
    OnTheWay& operator=(OnTheWay&& o) noexcept;
    OnTheWay(const OnTheWay&) = delete;
    OnTheWay& operator=(const OnTheWay&) = delete;
    ~OnTheWay() { withdraw(); }
    void withdraw();

   private:
    friend class Batcher;
    explicit OnTheWay(Batcher* b) : batcher_(b) {}
    Batcher* batcher_ = nullptr;
  };

  // Why a batch closed: it was full; its oldest request had waited max_delay; or no request
  // was on its way to join it.
  enum class Closed { full, max_delay, nothing_on_the_way };

  // Allocates what explaining needs up front (Explainer::needs_training_store), then starts
  // the compute thread. `ctx` is used by that thread only, from here to stop().
  Batcher(Context& ctx, std::vector<ServedModel> models, BatchOptions options);
  ~Batcher();  // stop()
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  const std::vector<ServedModel>& models() const { return models_; }
  const BatchOptions& options() const { return options_; }

  // Queues `inputs` (each the model's sample_size() floats) for model `model`: classified, or,
  // with `explain` (already resolved by Explainer::resolve), explained. Throws QueueFull.
  // The future holds the result, or the exception the compute thread met.
  // `announced`, if given, is this request's announcement, taken in the same step.
  std::future<BatchResult> submit(size_t model, std::vector<std::vector<float>> inputs,
                                  std::optional<ExplainOptions> explain = std::nullopt,
                                  OnTheWay* announced = nullptr);
  OnTheWay announce();

  int64_t queue_depth() const;  // images waiting
  int64_t on_the_way() const;   // requests announced, not yet queued
  // How many forward passes ran with 1, 2, ..., max_batch images (index = size − 1).
  std::vector<uint64_t> batch_sizes() const;
  // How many batches closed for each reason (indexed by Closed).
  std::array<uint64_t, 3> batches_closed() const;
  // Seconds the compute thread has spent computing batches, from taking one to answering it:
  // against the wall clock, how busy the model is (idle time is time spent waiting for work).
  double compute_seconds() const { return double(compute_ns_.load()) * 1e-9; }

  // Runs what is queued, then joins the compute thread; submit() refuses from then on.
  void stop();

 private:
  struct Job {
    size_t model;
    std::string key;  // the work: "classify", or the explain options
    std::optional<ExplainOptions> explain;
    std::vector<std::vector<float>> inputs;
    std::promise<BatchResult> done;
    std::chrono::steady_clock::time_point queued;
  };
  void run();
  void compute(std::vector<Job>& batch);
  Explainer& explainer(size_t model, const std::string& key, const ExplainOptions& o);

  Context& ctx_;
  std::vector<ServedModel> models_;
  const BatchOptions options_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Job> queue_;
  int64_t queued_images_ = 0;
  bool stopping_ = false;
  std::vector<uint64_t> batch_sizes_;
  std::array<uint64_t, 3> closed_{};
  int64_t on_the_way_ = 0;  // announced, not yet submitted or withdrawn
  std::atomic<int64_t> compute_ns_{0};

  // Compute thread only.
  engine::Softmax softmax_;
  std::map<size_t, Tensor> logits_;  // by model: [max_batch, K], the softmax's input
  void warm_up();
  std::map<std::pair<size_t, std::string>, std::unique_ptr<Explainer>> explainers_;
  std::thread thread_;
};

}  // namespace models
