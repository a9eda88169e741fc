#include "datasets/loader.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>

#include <opencv2/imgcodecs.hpp>

#include "engine/error.hpp"

namespace datasets {

namespace {

// splitmix64: independent, well-mixed seeds for each (seed, epoch, position).
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

ImageSource::ImageSource(const ImageFolder& folder, const std::vector<size_t>& indices,
                         const Preprocess& p, const SourceOptions& options)
    : preprocess_(p), crop_pct_(options.training ? 1.0 : p.crop_pct) {
  p.validate();
  const size_t n = indices.size();
  std::vector<cv::Mat> decoded(n);
  std::vector<std::string> errors(n);
  const size_t per_image = static_cast<size_t>(p.sample_size());
  const bool keep = n * per_image <= options.cache_bytes;
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < n; i = next++) {
      try {
        cv::Mat img = decode(folder.samples()[indices[i]].path);
        if (keep) decoded[i] = std::move(img);
      } catch (const engine::Error& e) {
        errors[i] = e.what();
      }
    }
  };
  std::vector<std::thread> threads;
  const int count = options.threads > 0
                        ? options.threads
                        : static_cast<int>(std::max(2u, std::thread::hardware_concurrency()));
  for (int t = 1; t < count; ++t) threads.emplace_back(worker);
  worker();
  for (std::thread& t : threads) t.join();

  for (size_t i = 0; i < n; ++i) {
    if (!errors[i].empty()) {
      if (options.strict) throw engine::Error(errors[i]);
      skipped_.push_back(errors[i]);
      continue;
    }
    samples_.push_back(folder.samples()[indices[i]]);
    if (keep) cache_.push_back(std::move(decoded[i]));
  }
  if (samples_.empty())
    throw engine::Error("'" + folder.root().string() + "': no readable images (" +
                        std::to_string(skipped_.size()) + " skipped)");
}

cv::Mat ImageSource::decode(const std::filesystem::path& path) const {
  Preprocess p = preprocess_;
  p.crop_pct = crop_pct_;
  return eval_transform(load_image(path, p.in_chans), p);
}

cv::Mat ImageSource::image(size_t i) const {
  return cached() ? cache_[i] : decode(samples_[i].path);
}

DataLoader::DataLoader(const dnnl::engine& eng, const ImageSource& source, LoaderOptions options)
    : eng_(eng), source_(source), options_(std::move(options)) {
  engine::require(options_.batch_size > 0, "--batch-size must be positive");
  engine::require(!options_.augment || !options_.augmentation.mixes() || options_.num_classes > 0,
                  "DataLoader: mixup and cutmix need num_classes");
  options_.augmentation.validate();
  engine::require(options_.augmentation.crop != "auto",
                  "DataLoader: crop 'auto' depends on the run; resolve it with Augment::for_run");
}

DataLoader::~DataLoader() {
  stop();
}

int64_t DataLoader::num_batches() const {
  const int64_t n = static_cast<int64_t>(source_.size()), b = options_.batch_size;
  return options_.drop_last ? std::max<int64_t>(n / b, n > 0 ? 1 : 0) : (n + b - 1) / b;
}

void DataLoader::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  for (std::thread& t : workers_) t.join();
  workers_.clear();
}

void DataLoader::start_epoch(int64_t epoch, int64_t first_batch) {
  stop();
  epoch_ = epoch;
  order_.resize(source_.size());
  std::iota(order_.begin(), order_.end(), size_t{0});
  if (options_.shuffle) {
    std::mt19937_64 rng(mix(options_.seed ^ mix(static_cast<uint64_t>(epoch) + 1)));
    std::shuffle(order_.begin(), order_.end(), rng);
  }
  ready_.clear();
  error_ = nullptr;
  stopping_ = false;
  next_to_build_ = next_to_return_ = first_batch;
  for (int w = 0; w < std::max(1, options_.workers); ++w) workers_.emplace_back([this] { work(); });
}

std::shared_ptr<Batch> DataLoader::next() {
  std::unique_lock lock(mutex_);
  if (next_to_return_ >= num_batches()) return nullptr;
  changed_.wait(lock, [&] { return error_ || ready_.count(next_to_return_); });
  if (error_) std::rethrow_exception(error_);
  auto batch = std::move(ready_[next_to_return_]);
  ready_.erase(next_to_return_++);
  changed_.notify_all();
  return batch;
}

void DataLoader::work() {
  for (;;) {
    int64_t b;
    {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] {
        return stopping_ || error_ || next_to_build_ < next_to_return_ + options_.prefetch;
      });
      if (stopping_ || error_ || next_to_build_ >= num_batches()) return;
      b = next_to_build_++;
    }
    try {
      auto batch = build(b);
      std::lock_guard lock(mutex_);
      ready_[b] = std::move(batch);
    } catch (...) {
      std::lock_guard lock(mutex_);
      error_ = std::current_exception();
    }
    changed_.notify_all();
  }
}

std::shared_ptr<Batch> DataLoader::build(int64_t b) const {
  const Preprocess& p = source_.preprocess();
  const int64_t begin = b * options_.batch_size;
  const int64_t B =
      std::min<int64_t>(options_.batch_size, static_cast<int64_t>(order_.size()) - begin);
  const uint64_t base =
      mix(options_.seed ^ mix(static_cast<uint64_t>(epoch_) * 0x100000001ULL + 7));
  auto batch = std::make_shared<Batch>();
  batch->index = b;
  batch->labels.resize(B);
  const int64_t S = p.img_size, sample = p.sample_size();
  batch->input = engine::Tensor(eng_, p.input_dims(B));
  std::vector<cv::Mat> images(B);
  const Augment& aug = options_.augmentation;
  for (int64_t i = 0; i < B; ++i) {
    const size_t idx = order_[static_cast<size_t>(begin + i)];
    batch->labels[i] = source_.label(idx);
    std::mt19937_64 rng(mix(base + static_cast<uint64_t>(begin + i)));
    cv::Mat img = source_.image(idx);
    if (options_.augment) img = augment_image(img, aug, rng);
    images[i] = normalize(img, p);
    if (options_.augment) random_erase(images[i], aug.random_erase, rng);
  }
  // Mixup and cutmix (timm's Mixup, batch mode): each image mixed with the batch reversed.
  std::mt19937_64 rng(mix(base ^ 0xa5a5a5a5ULL ^ static_cast<uint64_t>(b)));
  std::uniform_real_distribution<double> u(0.0, 1.0);
  if (options_.augment && aug.mixes() && B > 1 && u(rng) < aug.mix_prob) {
    const bool cutmix =
        aug.cutmix_alpha > 0.0 && (aug.mixup_alpha <= 0.0 || u(rng) < aug.switch_prob);
    double lam = sample_beta(cutmix ? aug.cutmix_alpha : aug.mixup_alpha, rng);
    std::vector<cv::Mat> mixed(B);
    if (cutmix) {
      const double cut = std::sqrt(1.0 - lam);
      const int ch = static_cast<int>(static_cast<double>(S) * cut), cw = ch;
      std::uniform_int_distribution<int> cy(0, static_cast<int>(S) - 1),
          cx(0, static_cast<int>(S) - 1);
      const int yc = cy(rng), xc = cx(rng);
      const int y0 = std::clamp(yc - ch / 2, 0, int(S)), y1 = std::clamp(yc + ch / 2, 0, int(S));
      const int x0 = std::clamp(xc - cw / 2, 0, int(S)), x1 = std::clamp(xc + cw / 2, 0, int(S));
      for (int64_t i = 0; i < B; ++i) {
        mixed[i] = images[i].clone();
        if (y1 > y0 && x1 > x0)
          images[B - 1 - i](cv::Rect(x0, y0, x1 - x0, y1 - y0))
              .copyTo(mixed[i](cv::Rect(x0, y0, x1 - x0, y1 - y0)));
      }
      lam = 1.0 - double((y1 - y0) * (x1 - x0)) / double(S * S);  // the area actually kept
    } else {
      for (int64_t i = 0; i < B; ++i)
        cv::addWeighted(images[i], lam, images[B - 1 - i], 1.0 - lam, 0.0, mixed[i]);
    }
    images.swap(mixed);
    const int64_t K = options_.num_classes;
    batch->targets = engine::Tensor(eng_, {B, K});
    for (int64_t i = 0; i < B; ++i) {
      batch->targets[i * K + batch->labels[i]] += static_cast<float>(lam);
      batch->targets[i * K + batch->labels[B - 1 - i]] += static_cast<float>(1.0 - lam);
    }
  }
  for (int64_t i = 0; i < B; ++i) write_model_input(images[i], p, batch->input.data() + i * sample);
  return batch;
}

}  // namespace datasets
