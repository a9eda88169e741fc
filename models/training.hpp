// The training loop over image folders: epochs of DataLoader batches, the warmup + cosine
// schedule per step, validation after every epoch, a live progress line, JSON-lines metrics,
// checkpoints that resume exactly (weights, optimizer moments, step, position in the epoch,
// random state), and the final model file.
#pragma once

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "datasets/loader.hpp"
#include "engine/optim.hpp"
#include "engine/schedule.hpp"
#include "engine/trainer.hpp"
#include "models/registry.hpp"

namespace models {

using engine::Context;

// The recipe; saved in every checkpoint as "train_config" so a resumed run continues it.
struct TrainConfig {
  int64_t epochs = 10;
  int64_t batch_size = 128;
  double lr = 1e-3, min_lr = 1e-5, warmup_lr = 1e-6, warmup_epochs = 1.0;
  double weight_decay = 0.05, label_smoothing = 0.1, clip_grad = 0.0, momentum = 0.9;
  std::string opt = "adamw";
  std::string precision = "f32";  // of the matmuls: f32 or bf16 (engine/precision.hpp)
  uint64_t seed = 0;
  int64_t subset = 0;      // stratified training subset; 0: the whole folder
  double val_split = 0.0;  // fraction of the folder held out for validation
  // Fine-tuning (BEiT, MAE, timm): layer-wise lr decay R (0: off) and a linear probe.
  double layer_decay = 0.0;
  bool freeze_backbone = false;
  // timm's ModelEmaV2 decay (0: off): an average of the weights, validated beside them every
  // epoch and saved as the final model (engine::ModelEma).
  double model_ema_decay = 0.0;
  datasets::Augment augment;

  void validate() const;
};
void to_json(nlohmann::json& j, const TrainConfig& c);
void from_json(const nlohmann::json& j, TrainConfig& c);

struct TrainOutputs {
  std::map<std::string, std::string> metadata;  // added to every file written (e.g. "init")
  std::filesystem::path out;                    // the final model
  std::filesystem::path checkpoint;             // resumable state, rewritten every epoch
  int64_t checkpoint_every = 0;                 // also every N optimizer steps; 0: epochs only
  // JSON lines, one per epoch; empty: none. On resume it is first made to agree with the
  // checkpoint: lines of epochs the checkpoint had not finished are dropped from its end, and
  // finished epochs it lacks are added from the checkpoint's history.
  std::filesystem::path log;
  bool progress = true;                    // the live progress line on stderr
  const std::atomic<int>* stop = nullptr;  // non-zero (SIGINT/SIGTERM): checkpoint and return
  int64_t stop_after_epochs = 0;           // train this many epochs in this run, checkpoint, return
};

// The image folders of a run and how they are read. Which images train and which validate is
// the recipe's (subset, val_split, seed), never this struct's: a resumed run takes its recipe
// from the checkpoint, so it selects exactly the images the interrupted run did.
struct TrainData {
  std::filesystem::path train;  // one sub-folder per class
  std::filesystem::path val;    // a validation folder of the same classes; empty: none, or the
                                // recipe's val_split of `train`
  datasets::SourceOptions source;
  int workers = 1;  // loader threads
};

// What identifies the training data a checkpoint was written on; a resumed run must see the
// same, or its epochs and schedule would silently cover other images.
struct DataIdentity {
  int64_t images = 0, batches_per_epoch = 0;
  std::string fingerprint;  // FNV-1a of every selected image's path (under the folder) and label
};

struct EpochResult {
  int64_t epoch = 0, steps = 0;
  double train_loss = 0, train_acc = 0, val_loss = 0, val_acc = 0, val_top5 = 0, lr = 0;
  double seconds = 0, images_per_second = 0;
  bool validated = false;
  double ema_val_loss = 0, ema_val_acc = 0, ema_val_top5 = 0;  // with --model-ema-decay
};

struct TrainResult {
  std::vector<EpochResult> epochs;
  bool interrupted = false;
  double seconds = 0;
  size_t skipped = 0;  // unreadable images skipped (train_on_folder)
};

// --layer-decay and --freeze-backbone on the model's parameters: with R, parameter p trains at
// lr · R^(L - 1 - layer(p)) over the architecture's L layers (the head at lr, ViT block i at
// lr · R^(depth - i), the embeddings at lr · R^(depth + 1)). Throws naming the flag for an
// architecture without layers or a frozen-backbone mode. The Trainer applies it, to a fresh
// and a resumed run alike.
void apply_fine_tuning(engine::Model& model, const TrainConfig& config);

// Evaluates without dropout; the model is left in evaluation mode.
engine::Metrics evaluate(Context& ctx, engine::Model& model, datasets::DataLoader& loader);

class Trainer {
 public:
  Trainer(Context& ctx, engine::Model& model, datasets::Preprocess preprocess,
          std::vector<std::string> classes, TrainConfig config, TrainOutputs outputs);

  // Continues from a checkpoint written by this class (weights already loaded into the model):
  // the optimizer moments, step, epoch, batch and random state.
  void restore(const std::filesystem::path& checkpoint);
  const TrainConfig& config() const { return config_; }

  // `data` is saved in every checkpoint; after restore() it must equal the checkpoint's.
  TrainResult fit(datasets::DataLoader& train, datasets::DataLoader* val, const DataIdentity& data);

 private:
  struct Epoch;  // the running sums and timer of the epoch in progress
  void check_resumed_data(const DataIdentity& data) const;
  void open_log();
  engine::Metrics resumed_metrics();
  // Trains the rest of the epoch; false when a stop was asked for (checkpoint already saved).
  bool train_epoch(datasets::DataLoader& train, Epoch& e);
  void report_progress(Epoch& e);
  EpochResult end_epoch(datasets::DataLoader* val, const Epoch& e);
  void log_epoch(const EpochResult& r);
  // `partial`: the metrics of the epoch in progress, so that a resumed epoch reports the same
  // loss and accuracy as one never interrupted; null at the end of an epoch.
  void save_checkpoint(const engine::Metrics* partial);
  // What every file it writes carries: outputs' metadata, the recipe and the history.
  std::map<std::string, std::string> file_metadata() const;

  Context& ctx_;
  engine::Model& model_;
  datasets::Preprocess preprocess_;
  std::vector<std::string> classes_;
  TrainConfig config_;
  TrainOutputs outputs_;
  engine::Optimizer optimizer_;
  std::optional<engine::ModelEma> ema_;  // with a model_ema_decay
  engine::WarmupCosineSchedule schedule_;
  engine::SoftmaxCrossEntropy loss_fn_;
  std::ofstream log_;
  DataIdentity data_;
  int64_t epoch_ = 0, batch_ = 0;  // where training continues
  std::vector<nlohmann::json> history_;
  nlohmann::json partial_;        // restored metrics of the epoch in progress, if any
  nlohmann::json restored_data_;  // the checkpoint's DataIdentity, if any
  std::string restored_from_;
};

// Everything `vit train` does once its flags are parsed: selects the recipe's images from the
// folder (subset, split), decodes them, trains `model` (resuming from `resume` when not empty,
// whose weights are already in the model), and saves. Prints what it does on stdout, warnings
// on stderr.
TrainResult train_on_folder(Context& ctx, engine::Model& model,
                            const datasets::Preprocess& preprocess,
                            const datasets::ImageFolder& folder, const TrainData& data,
                            const TrainConfig& recipe, const TrainOutputs& outputs,
                            const std::filesystem::path& resume);

// The checkpoint's model and recipe, for `vit train --resume`: its classes must be `classes`.
struct Resumed {
  LoadedModel loaded;
  TrainConfig recipe;
};
Resumed load_checkpoint(const std::filesystem::path& path, Context& ctx,
                        const std::vector<std::string>& classes);

}  // namespace models
