// ImageSource: the decoded images of an ImageFolder selection, kept in memory when they fit.
// DataLoader: worker threads that augment, mix, normalize and patchify batches ahead of the
// model; a fixed seed gives the same batches whatever the thread timing.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <opencv2/core.hpp>

#include "datasets/image_folder.hpp"
#include "datasets/preprocess.hpp"
#include "datasets/transforms.hpp"
#include "engine/tensor.hpp"

namespace datasets {

struct SourceOptions {
  bool training = false;  // training images keep the whole frame (crop_pct 1): augmentation crops
  bool strict = false;    // an unreadable image is an error instead of a skipped file
  size_t cache_bytes = size_t(4) << 30;  // decoded images are cached when they fit in this
  int threads = 0;  // decoding threads at start-up; 0: one per core, at least 2
};

class ImageSource {
 public:
  // Decodes every selected file once, in parallel: unreadable ones are skipped and listed
  // (or, with strict, the first is an error). The rest are kept decoded when they fit.
  ImageSource(const ImageFolder& folder, const std::vector<size_t>& indices, const Preprocess& p,
              const SourceOptions& options);

  size_t size() const { return samples_.size(); }
  int label(size_t i) const { return samples_[i].label; }
  const std::filesystem::path& path(size_t i) const { return samples_[i].path; }
  // A square img_size uint8 image, ready for augmentation or direct use.
  cv::Mat image(size_t i) const;
  bool cached() const { return !cache_.empty(); }
  const std::vector<std::string>& skipped() const { return skipped_; }  // "file: reason"
  const Preprocess& preprocess() const { return preprocess_; }

 private:
  cv::Mat decode(const std::filesystem::path& path) const;
  std::vector<Sample> samples_;
  std::vector<cv::Mat> cache_;
  std::vector<std::string> skipped_;
  Preprocess preprocess_;
  double crop_pct_;
};

struct LoaderOptions {
  int64_t batch_size = 128;
  bool shuffle = false;
  bool drop_last = false;
  bool augment = false;  // apply `augmentation` (training)
  Augment augmentation;
  int64_t num_classes = 0;  // for the soft targets of mixup and cutmix
  uint64_t seed = 0;
  int workers = 1;
  int prefetch = 4;  // batches built ahead of the consumer
};

struct Batch {
  engine::Tensor input;     // [B, L, C·P·P] patches, or [B, C, S, S] images
  std::vector<int> labels;  // B
  engine::Tensor targets;   // [B, K] soft targets when the batch was mixed, else empty
  int64_t index = 0;
};

class DataLoader {
 public:
  DataLoader(const dnnl::engine& eng, const ImageSource& source, LoaderOptions options);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  int64_t num_batches() const;
  // Starts building the batches of `epoch` (its order comes from seed and epoch alone).
  // `first_batch` skips ahead, for resuming in the middle of an epoch.
  void start_epoch(int64_t epoch, int64_t first_batch = 0);
  // The next batch of the epoch in order, or nullptr after the last. Rethrows a worker's error.
  std::shared_ptr<Batch> next();

 private:
  void stop();
  void work();
  std::shared_ptr<Batch> build(int64_t b) const;

  dnnl::engine eng_;
  const ImageSource& source_;
  LoaderOptions options_;
  int64_t epoch_ = 0;
  std::vector<size_t> order_;

  std::mutex mutex_;
  std::condition_variable changed_;
  int64_t next_to_build_ = 0, next_to_return_ = 0;
  bool stopping_ = false;
  std::map<int64_t, std::shared_ptr<Batch>> ready_;
  std::exception_ptr error_;
  std::vector<std::thread> workers_;
};

}  // namespace datasets
