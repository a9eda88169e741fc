#include "models/serving.hpp"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "engine/error.hpp"

namespace models {

namespace {

// Requests batch together only when they ask for the same work.
std::string work_key(const std::optional<ExplainOptions>& o) {
  if (!o) return "classify";
  std::ostringstream key;
  key << "explain " << o->method << ' ' << o->rollout.head_fusion << ' ' << o->rollout.discard_ratio
      << ' ' << o->layer << ' ' << o->target_class << ' ' << o->heads;
  return key.str();
}

// Images per pass for a batch of n: all of them, or, for a model whose plans each hold their
// own buffers (ResNet's layers, and the explainers), powers of two, largest first, so that at most
// log2(max_batch) + 1 sizes ever get a plan. With a plan for every size from 1 to 64, the
// bundled CNN's RSS went from 3.4 to 5.4 GB over 10 000 requests at 64 clients.
std::vector<int64_t> passes(int64_t n, bool any_size) {
  if (any_size) return {n};
  std::vector<int64_t> out;
  for (int64_t bit = int64_t(1) << 62; bit > 0; bit >>= 1)
    if (n & bit) out.push_back(bit);
  return out;
}

// Different explain options each keep an Explainer (a tapped copy of the fused plans); past
// this many the cache starts again.
constexpr size_t kMaxExplainers = 16;

}  // namespace

Batcher::Batcher(Context& ctx, std::vector<ServedModel> models, BatchOptions options)
    : ctx_(ctx), models_(std::move(models)), options_(options) {
  engine::require(!models_.empty(), "serve: no model");
  engine::require(options_.max_batch >= 1, "--max-batch must be at least 1");
  engine::require(options_.max_queue >= options_.max_batch,
                  "--max-queue must be at least --max-batch");
  engine::require(options_.max_delay.count() >= 0, "--max-delay-ms must not be negative");
  for (ServedModel& m : models_) {
    // Before any forward: the layers' plans bind the gradient buffers they find.
    if (Explainer::needs_training_store(*m.loaded.model))
      m.loaded.model->store.allocate_training(ctx_.eng);
    m.loaded.model->train(false);
  }
  batch_sizes_.assign(size_t(options_.max_batch), 0);
  // The warm-up runs on the compute thread, which then serves: OpenMP gives each thread that
  // starts a parallel region a team of its own, and with the warm-up on this (the HTTP main)
  // thread the served forwards ran slower (64 clients, --max-batch 64: 1 330-1 580 req/s in
  // alternating runs against 1 740-2 040 with the warm-up where the forwards run).
  std::promise<void> warm;
  std::future<void> warmed = warm.get_future();
  thread_ = std::thread([this, warm = std::move(warm)]() mutable {
    try {
      warm_up();
    } catch (...) {
      warm.set_exception(std::current_exception());
      return;
    }
    warm.set_value();
    run();
  });
  try {
    warmed.get();
  } catch (...) {
    thread_.join();
    throw;
  }
}

// Triton's model warm-up: before the first request, one forward of every size a classify batch
// of 1..max_batch images will run, so that its plans (primitives, JIT code, buffers) exist and
// the server's memory stays flat from the first request on (measured at --max-batch 64 and 64
// clients: 2-4 MB more over 10 000 requests when the plans were built on first use).
void Batcher::warm_up() {
  for (ServedModel& m : models_) {
    engine::Model& model = *m.loaded.model;
    const auto start = std::chrono::steady_clock::now();
    std::set<int64_t> sizes;
    if (model.any_batch_size_is_cheap()) {
      const std::vector<int64_t> plans = model.plan_sizes(options_.max_batch);
      sizes.insert(plans.begin(), plans.end());
    } else {
      for (int64_t n = 1; n <= options_.max_batch; ++n)
        for (const int64_t len : passes(n, false)) sizes.insert(len);
    }
    for (const int64_t n : sizes) {
      model.forward(ctx_, Tensor(ctx_.eng, m.loaded.preprocess.input_dims(n)));
      ctx_.wait();
    }
    std::fprintf(stderr,
                 "vit serve: model '%s' warmed up for batches of 1 to %lld: %zu sizes in %.2f s\n",
                 m.name.c_str(), (long long)options_.max_batch, sizes.size(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
}

Batcher::~Batcher() {
  stop();
}

Batcher::OnTheWay& Batcher::OnTheWay::operator=(OnTheWay&& o) noexcept {
  if (this != &o) {
    withdraw();
    batcher_ = o.batcher_;
    o.batcher_ = nullptr;
  }
  return *this;
}

void Batcher::OnTheWay::withdraw() {
  if (!batcher_) return;
  {
    std::lock_guard<std::mutex> lock(batcher_->mutex_);
    batcher_->on_the_way_--;
  }
  batcher_->wake_.notify_one();  // a batch waiting for this request need wait no longer
  batcher_ = nullptr;
}

Batcher::OnTheWay Batcher::announce() {
  std::lock_guard<std::mutex> lock(mutex_);
  on_the_way_++;
  return OnTheWay(this);
}

std::future<BatchResult> Batcher::submit(size_t model, std::vector<std::vector<float>> inputs,
                                         std::optional<ExplainOptions> explain,
                                         OnTheWay* announced) {
  if (announced && announced->batcher_ != this) announced = nullptr;
  engine::require(model < models_.size(), "serve: no model " + std::to_string(model));
  const int64_t n = int64_t(inputs.size());
  engine::require(n >= 1, "serve: a request without images");
  if (n > options_.max_batch)
    throw engine::Error("a request holds at most " + std::to_string(options_.max_batch) +
                        " images (--max-batch), this one " + std::to_string(n));
  const int64_t per_image = models_[model].loaded.preprocess.sample_size();
  for (const auto& x : inputs)
    engine::require(int64_t(x.size()) == per_image, "serve: an input of the wrong size");
  Job job{model,
          work_key(explain),
          std::move(explain),
          std::move(inputs),
          {},
          std::chrono::steady_clock::now()};
  std::future<BatchResult> result = job.done.get_future();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (announced) {  // from on its way to queued in one step: the batcher sees no gap
      on_the_way_--;
      announced->batcher_ = nullptr;
    }
    if (stopping_) throw QueueFull("the server is shutting down");
    if (queued_images_ + n > options_.max_queue)
      throw QueueFull("the queue is full (" + std::to_string(queued_images_) +
                      " images waiting, --max-queue " + std::to_string(options_.max_queue) + ")");
    queued_images_ += n;
    queue_.push_back(std::move(job));
  }
  wake_.notify_one();
  return result;
}

int64_t Batcher::queue_depth() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return queued_images_;
}

int64_t Batcher::on_the_way() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return on_the_way_;
}

std::vector<uint64_t> Batcher::batch_sizes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return batch_sizes_;
}

std::array<uint64_t, 3> Batcher::batches_closed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return closed_;
}

void Batcher::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void Batcher::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left
    // Wait for company while more requests are on their way, until a batch is full or the
    // oldest request has waited max_delay.
    const Job& first = queue_.front();
    const auto deadline = first.queued + options_.max_delay;
    auto companions = [&] {
      int64_t n = 0;
      for (const Job& j : queue_)
        if (j.model == queue_.front().model && j.key == queue_.front().key)
          n += int64_t(j.inputs.size());
      return n;
    };
    Closed closed = Closed::nothing_on_the_way;
    while (!stopping_) {
      if (companions() >= options_.max_batch) {
        closed = Closed::full;
        break;
      }
      if (on_the_way_ == 0) {
        closed = Closed::nothing_on_the_way;
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        closed = Closed::max_delay;
        break;
      }
      wake_.wait_until(lock, deadline);
    }
    closed_[size_t(closed)]++;
    // The oldest request and, in order, every later one for the same work that still fits.
    std::vector<Job> batch;
    int64_t n = 0;
    const size_t model = queue_.front().model;
    const std::string key = queue_.front().key;
    for (auto it = queue_.begin(); it != queue_.end();) {
      const int64_t size = int64_t(it->inputs.size());
      if (it->model == model && it->key == key && n + size <= options_.max_batch) {
        n += size;
        batch.push_back(std::move(*it));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    queued_images_ -= n;
    batch_sizes_[size_t(n - 1)]++;
    lock.unlock();
    const auto start = std::chrono::steady_clock::now();
    compute(batch);
    compute_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::steady_clock::now() - start)
                       .count();
    lock.lock();
  }
}

Explainer& Batcher::explainer(size_t model, const std::string& key, const ExplainOptions& o) {
  auto& slot = explainers_[{model, key}];
  if (!slot) {
    if (explainers_.size() > kMaxExplainers) {
      explainers_.clear();
      return explainer(model, key, o);
    }
    slot = std::make_unique<Explainer>(ctx_, *models_[model].loaded.model, o);
  }
  return *slot;
}

void Batcher::compute(std::vector<Job>& batch) {
  try {
    const ServedModel& served = models_[batch[0].model];
    engine::Model& model = *served.loaded.model;
    const datasets::Preprocess& p = served.loaded.preprocess;
    std::vector<const std::vector<float>*> images;
    for (const Job& j : batch)
      for (const auto& x : j.inputs) images.push_back(&x);
    const int64_t n = int64_t(images.size());
    std::vector<std::vector<float>> probabilities(static_cast<size_t>(n));
    std::vector<Explanation> explanations;
    int64_t at = 0;
    // An explainer may run the layers (Grad-CAM, a window run as blocks): split its batches.
    const bool any_size = model.any_batch_size_is_cheap() && !batch[0].explain;
    for (const int64_t len : passes(n, any_size)) {
      Tensor input(ctx_.eng, p.input_dims(len));
      for (int64_t i = 0; i < len; ++i)
        std::copy(images[size_t(at + i)]->begin(), images[size_t(at + i)]->end(),
                  input.data() + i * p.sample_size());
      if (batch[0].explain) {
        for (Explanation& e :
             explainer(batch[0].model, batch[0].key, *batch[0].explain).explain(ctx_, input)) {
          probabilities[size_t(at)] = e.probabilities;
          explanations.push_back(std::move(e));
          ++at;
        }
      } else {
        const Tensor& logits = model.forward(ctx_, input);
        const int64_t K = logits.dim(1);
        // Through one [max_batch, K] plan whatever the pass's size (rows are independent): a
        // softmax plan per size would be one more thing that grows with the sizes served.
        Tensor& rows = logits_[batch[0].model];
        if (rows.empty()) rows = Tensor(ctx_.eng, {options_.max_batch, K});
        std::copy_n(logits.data(), len * K, rows.data());
        const Tensor& probs = softmax_.forward(ctx_, rows);
        ctx_.wait();
        for (int64_t i = 0; i < len; ++i, ++at)
          probabilities[size_t(at)].assign(probs.data() + i * K, probs.data() + (i + 1) * K);
      }
    }
    at = 0;
    for (Job& j : batch) {
      BatchResult r;
      r.batch_size = n;
      for (size_t i = 0; i < j.inputs.size(); ++i, ++at) {
        r.probabilities.push_back(std::move(probabilities[size_t(at)]));
        if (!explanations.empty()) r.explanations.push_back(std::move(explanations[size_t(at)]));
      }
      j.done.set_value(std::move(r));
    }
  } catch (...) {
    for (Job& j : batch) {
      try {
        j.done.set_exception(std::current_exception());
      } catch (const std::future_error&) {  // already satisfied before the failure
      }
    }
  }
}

}  // namespace models
