#include "models/training.hpp"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <sstream>

#include "engine/error.hpp"
#include "engine/json_read.hpp"
#include "engine/safetensors.hpp"
#include "engine/schedule.hpp"
#include "models/registry.hpp"

namespace models {

using engine::Error;
using engine::require;
using Clock = std::chrono::steady_clock;

void TrainConfig::validate() const {
  require(epochs > 0, "--epochs must be positive");
  require(batch_size > 0, "--batch-size must be positive");
  require(lr > 0 && std::isfinite(lr), "--lr must be positive");
  require(min_lr >= 0 && warmup_lr >= 0, "--min-lr and --warmup-lr must not be negative");
  require(warmup_epochs >= 0, "--warmup-epochs must not be negative");
  require(weight_decay >= 0, "--weight-decay must not be negative");
  require(label_smoothing >= 0 && label_smoothing < 1, "--smoothing must be in [0, 1)");
  require(clip_grad >= 0, "--clip-grad must not be negative");
  require(opt == "adamw" || opt == "sgd", "--opt must be adamw or sgd, got '" + opt + "'");
  require(precision == "f32" || precision == "bf16",
          "--precision must be f32 or bf16, got '" + precision + "'");
  require(subset >= 0, "--subset must not be negative");
  require(val_split >= 0 && val_split < 1, "--val-split must be in [0, 1)");
  require(layer_decay >= 0 && layer_decay <= 1,
          "--layer-decay must be in (0, 1] (0: off), got " + std::to_string(layer_decay));
  require(model_ema_decay >= 0 && model_ema_decay < 1,
          "--model-ema-decay must be in [0, 1) (0: off), got " + std::to_string(model_ema_decay));
  augment.validate();
}

void to_json(nlohmann::json& j, const TrainConfig& c) {
  j = {{"epochs", c.epochs},
       {"batch_size", c.batch_size},
       {"lr", c.lr},
       {"min_lr", c.min_lr},
       {"warmup_lr", c.warmup_lr},
       {"warmup_epochs", c.warmup_epochs},
       {"weight_decay", c.weight_decay},
       {"label_smoothing", c.label_smoothing},
       {"clip_grad", c.clip_grad},
       {"momentum", c.momentum},
       {"opt", c.opt},
       {"precision", c.precision},
       {"seed", c.seed},
       {"subset", c.subset},
       {"val_split", c.val_split},
       {"layer_decay", c.layer_decay},
       {"freeze_backbone", c.freeze_backbone},
       {"model_ema_decay", c.model_ema_decay},
       {"augment",
        {{"crop", c.augment.crop},
         {"pad", c.augment.pad},
         {"rrc_scale_min", c.augment.rrc_scale_min},
         {"hflip", c.augment.hflip},
         {"auto_augment", c.augment.auto_augment},
         {"random_erase", c.augment.random_erase},
         {"mixup_alpha", c.augment.mixup_alpha},
         {"cutmix_alpha", c.augment.cutmix_alpha},
         {"mix_prob", c.augment.mix_prob},
         {"switch_prob", c.augment.switch_prob}}}};
}

void from_json(const nlohmann::json& j, TrainConfig& c) {
  using engine::field_int, engine::json_field;
  const auto number = engine::field_double;
  c.epochs = field_int(j, "epochs");
  c.batch_size = field_int(j, "batch_size");
  c.lr = number(j, "lr");
  c.min_lr = number(j, "min_lr");
  c.warmup_lr = number(j, "warmup_lr");
  c.warmup_epochs = number(j, "warmup_epochs");
  c.weight_decay = number(j, "weight_decay");
  c.label_smoothing = number(j, "label_smoothing");
  c.clip_grad = number(j, "clip_grad");
  c.momentum = number(j, "momentum");
  j.at("opt").get_to(c.opt);
  c.precision = j.value("precision", std::string("f32"));  // absent in older checkpoints
  const nlohmann::json& seed = json_field(j, "seed");
  if (!seed.is_number_unsigned()) throw Error("'seed' must be a non-negative integer");
  c.seed = seed.get<uint64_t>();
  c.subset = field_int(j, "subset");
  c.val_split = number(j, "val_split");
  c.layer_decay = engine::json_double(j, "layer_decay", 0.0);  // absent in older checkpoints
  c.freeze_backbone = engine::json_bool(j, "freeze_backbone", false);
  c.model_ema_decay = engine::json_double(j, "model_ema_decay", 0.0);  // absent before the EMA
  const nlohmann::json& a = json_field(j, "augment");
  a.at("crop").get_to(c.augment.crop);
  c.augment.pad = field_int(a, "pad");
  c.augment.rrc_scale_min = number(a, "rrc_scale_min");
  c.augment.hflip = number(a, "hflip");
  c.augment.auto_augment = engine::json_string(a, "auto_augment", "none");  // absent before it
  c.augment.random_erase = number(a, "random_erase");
  c.augment.mixup_alpha = number(a, "mixup_alpha");
  c.augment.cutmix_alpha = number(a, "cutmix_alpha");
  c.augment.mix_prob = number(a, "mix_prob");
  c.augment.switch_prob = number(a, "switch_prob");
}

void apply_fine_tuning(engine::Model& model, const TrainConfig& config) {
  if (config.freeze_backbone)
    require(model.freeze_backbone(),
            "--freeze-backbone: the " + model.arch() + " has no frozen-backbone mode");
  if (config.layer_decay <= 0) return;
  const int64_t L = model.num_layers();
  require(L > 0, "--layer-decay: the " + model.arch() + " defines no layers");
  for (engine::Parameter& p : model.store.parameters())
    p.lr_scale = static_cast<float>(
        std::pow(config.layer_decay, static_cast<double>(L - 1 - model.layer_id(p.name))));
}

engine::Metrics evaluate(Context& ctx, engine::Model& model, datasets::DataLoader& loader) {
  model.train(false);
  engine::SoftmaxCrossEntropy loss_fn;
  engine::Metrics metrics(model.num_classes());
  loader.start_epoch(0);
  while (auto batch = loader.next()) {
    const engine::Tensor& logits = model.forward(ctx, batch->input);
    const float loss = loss_fn.forward(ctx, logits, batch->labels);
    metrics.add(logits, batch->labels, loss);
  }
  return metrics;
}

Trainer::Trainer(Context& ctx, engine::Model& model, datasets::Preprocess preprocess,
                 std::vector<std::string> classes, TrainConfig config, TrainOutputs outputs)
    : ctx_(ctx),
      model_(model),
      preprocess_(std::move(preprocess)),
      classes_(std::move(classes)),
      config_(std::move(config)),
      outputs_(std::move(outputs)),
      loss_fn_(static_cast<float>(config_.label_smoothing)) {
  config_.validate();
  model_.store.allocate_training(ctx_.eng);
  apply_fine_tuning(model_, config_);
  optimizer_.name = config_.opt;
  optimizer_.adamw.weight_decay = static_cast<float>(config_.weight_decay);
  optimizer_.sgd.weight_decay = static_cast<float>(config_.weight_decay);
  optimizer_.sgd.momentum = static_cast<float>(config_.momentum);
  optimizer_.clip_grad = static_cast<float>(config_.clip_grad);
  if (config_.model_ema_decay > 0)
    ema_.emplace(ctx_.eng, model_.store, static_cast<float>(config_.model_ema_decay));
}

std::map<std::string, std::string> Trainer::file_metadata() const {
  std::map<std::string, std::string> meta = outputs_.metadata;
  meta["train_config"] = nlohmann::json(config_).dump();
  meta["history"] = nlohmann::json(history_).dump();
  return meta;
}

void Trainer::save_checkpoint(const engine::Metrics* partial) {
  if (outputs_.checkpoint.empty()) return;
  std::ostringstream rng;
  rng << ctx_.rng;
  nlohmann::json state = {{"epoch", epoch_},
                          {"batch", batch_},
                          {"step", optimizer_.steps()},
                          {"batches_per_epoch", data_.batches_per_epoch},
                          {"data",
                           {{"images", data_.images},
                            {"batches_per_epoch", data_.batches_per_epoch},
                            {"fingerprint", data_.fingerprint}}},
                          {"rng", rng.str()}};
  if (partial)  // doubles are written with 17 digits: the sums resume bit for bit
    state["epoch_metrics"] = {{"count", partial->count},
                              {"loss_sum", partial->loss_sum},
                              {"top1", partial->top1},
                              {"top5", partial->top5},
                              {"confusion", partial->confusion}};
  const engine::Dims flat{model_.store.size()};
  std::map<std::string, std::string> meta = file_metadata();
  meta["train_state"] = state.dump();
  // Training state beyond the model goes under "optimizer.", which every reader of a model
  // file skips: a checkpoint stays a model that vit eval and vit classify accept.
  std::vector<engine::TensorToWrite> extra{
      {"optimizer.exp_avg", "F32", flat, model_.store.adam_m()},
      {"optimizer.exp_avg_sq", "F32", flat, model_.store.adam_v()}};
  if (ema_) extra.push_back({"optimizer.model_ema", "F32", flat, ema_->shadow.data()});
  save_model(outputs_.checkpoint, model_, preprocess_, classes_, meta, extra);
}

void Trainer::restore(const std::filesystem::path& checkpoint) {
  const engine::SafetensorsFile file(checkpoint);
  const std::string where = "'" + checkpoint.string() + "'";
  if (!file.metadata().count("train_state") || !file.contains("optimizer.exp_avg"))
    throw Error(where + ": a model file, not a training checkpoint (no optimizer state)");
  const nlohmann::json state = nlohmann::json::parse(file.metadata().at("train_state"));
  const engine::Dims flat{model_.store.size()};
  file.read_f32("optimizer.exp_avg", flat, model_.store.adam_m());
  file.read_f32("optimizer.exp_avg_sq", flat, model_.store.adam_v());
  if (ema_) {
    require(file.contains("optimizer.model_ema"),
            where + ": its recipe has a model_ema_decay but it holds no optimizer.model_ema");
    file.read_f32("optimizer.model_ema", flat, ema_->shadow.data());
  }
  epoch_ = engine::field_int(state, "epoch");
  batch_ = engine::field_int(state, "batch");
  optimizer_.adamw.step = engine::field_int(state, "step");
  require(epoch_ >= 0 && batch_ >= 0 && optimizer_.adamw.step >= 0,
          where + ": train_state holds a negative epoch, batch or step");
  std::istringstream rng(state.at("rng").get<std::string>());
  rng >> ctx_.rng;
  if (file.metadata().count("history"))
    history_ =
        nlohmann::json::parse(file.metadata().at("history")).get<std::vector<nlohmann::json>>();
  partial_ = state.value("epoch_metrics", nlohmann::json());
  // Checkpoints before the data identity was saved hold batches_per_epoch alone.
  restored_data_ =
      state.contains("data")
          ? engine::json_field(state, "data")
          : nlohmann::json{{"batches_per_epoch", engine::field_int(state, "batches_per_epoch")}};
  restored_from_ = checkpoint.string();
}

void Trainer::check_resumed_data(const DataIdentity& data) const {
  if (restored_data_.is_null()) return;
  const std::string where = "'" + restored_from_ + "'";
  const int64_t batches = engine::field_int(restored_data_, "batches_per_epoch");
  require(batches == data.batches_per_epoch,
          where + ": the checkpoint was written at " + std::to_string(batches) +
              " batches per epoch, the data now gives " + std::to_string(data.batches_per_epoch) +
              " (did the folder change?)");
  if (!restored_data_.contains("images")) return;
  const int64_t images = engine::field_int(restored_data_, "images");
  require(images == data.images, where + ": the checkpoint was trained on " +
                                     std::to_string(images) + " images, the data now gives " +
                                     std::to_string(data.images) + " (did the folder change?)");
  const nlohmann::json& fingerprint = engine::json_field(restored_data_, "fingerprint");
  require(fingerprint.is_string() && fingerprint.get<std::string>() == data.fingerprint,
          where +
              ": the checkpoint was trained on other images than the folder now selects "
              "(data fingerprint " +
              fingerprint.dump() + ", now \"" + data.fingerprint + "\")");
}

// Makes a resumed run's log agree with its checkpoint (see TrainOutputs::log), rewritten
// through a temporary file so that a crash now cannot lose the log either.
static void reconcile_log(const std::filesystem::path& path,
                          const std::vector<nlohmann::json>& history, int64_t finished) {
  std::vector<std::string> lines;
  {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
  }
  auto epoch_of = [](const std::string& line) -> int64_t {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    return j.is_object() && j.contains("epoch") && j["epoch"].is_number_integer()
               ? j["epoch"].get<int64_t>()
               : -1;
  };
  while (!lines.empty() && epoch_of(lines.back()) > finished) lines.pop_back();
  const int64_t last = lines.empty() ? 0 : std::max<int64_t>(0, epoch_of(lines.back()));
  for (const nlohmann::json& h : history)
    if (h.value("epoch", int64_t{0}) > last) lines.push_back(h.dump());
  const std::filesystem::path tmp = path.string() + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const std::string& line : lines) out << line << '\n';
    out.flush();
    if (!out) {
      std::filesystem::remove(tmp);
      throw Error("'" + path.string() + "': cannot write the log");
    }
  }
  std::filesystem::rename(tmp, path);
}

static std::string clock_text(double seconds) {
  const int s = static_cast<int>(std::lround(std::max(0.0, seconds)));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60);
  return buf;
}

static double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Trainer::Epoch {
  engine::Metrics metrics;
  Clock::time_point start = Clock::now();
  int64_t first_batch = 0, counted_before = 0;  // where this run entered the epoch
  float lr = 0.0f;                              // of the last step taken
  int64_t last_report = -1;                     // the tenth of the epoch last reported
  bool live = false;                            // a terminal: the progress line is redrawn
};

void Trainer::open_log() {
  if (outputs_.log.empty()) return;
  if ((epoch_ > 0 || batch_ > 0) && std::filesystem::exists(outputs_.log))
    reconcile_log(outputs_.log, history_, epoch_);
  log_.open(outputs_.log, std::ios::app);
  if (!log_) throw Error("'" + outputs_.log.string() + "': cannot write the log");
}

// The epoch's metrics so far: none, or a resumed epoch's from the checkpoint.
engine::Metrics Trainer::resumed_metrics() {
  const int64_t K = model_.num_classes();
  engine::Metrics metrics(K);
  if (batch_ > 0 && partial_.is_object()) {
    metrics.count = engine::field_int(partial_, "count");
    metrics.loss_sum = engine::field_double(partial_, "loss_sum");
    metrics.top1 = engine::field_int(partial_, "top1");
    metrics.top5 = engine::field_int(partial_, "top5");
    metrics.confusion = engine::json_ints(engine::json_field(partial_, "confusion"), "confusion");
    require(metrics.confusion.size() == size_t(K * K), "checkpoint: malformed epoch_metrics");
  }
  partial_ = nlohmann::json();
  return metrics;
}

void Trainer::report_progress(Epoch& e) {
  const int64_t per_epoch = data_.batches_per_epoch;
  const int64_t tenth = batch_ * 10 / per_epoch;
  if (!outputs_.progress || !(e.live || tenth != e.last_report)) return;
  const double elapsed = seconds_since(e.start);
  const double ips = double(e.metrics.count - e.counted_before) / std::max(elapsed, 1e-9);
  const double eta = double(per_epoch - batch_) * elapsed / double(batch_ - e.first_batch);
  std::fprintf(stderr,
               "%sepoch %lld/%lld  step %lld/%lld  loss %.4f  lr %.2e  %.0f img/s  ETA %s%s",
               e.live ? "\r" : "", (long long)epoch_ + 1, (long long)config_.epochs,
               (long long)batch_, (long long)per_epoch, e.metrics.loss(), double(e.lr), ips,
               clock_text(eta).c_str(), e.live ? "  " : "\n");
  e.last_report = tenth;
}

bool Trainer::train_epoch(datasets::DataLoader& train, Epoch& e) {
  model_.train(true);
  train.start_epoch(epoch_, batch_);
  while (auto batch = train.next()) {
    e.lr = schedule_.at(optimizer_.steps());
    engine::train_step(ctx_, model_, loss_fn_, optimizer_, batch->input, batch->labels,
                       batch->targets.empty() ? nullptr : &batch->targets, e.lr, &e.metrics);
    if (ema_) ema_->update(model_.store, optimizer_.steps());
    ++batch_;
    report_progress(e);
    if (outputs_.checkpoint_every > 0 && optimizer_.steps() % outputs_.checkpoint_every == 0)
      save_checkpoint(&e.metrics);
    if (outputs_.stop && outputs_.stop->load()) {
      if (e.live) std::fputc('\n', stderr);
      save_checkpoint(&e.metrics);
      return false;
    }
  }
  if (e.live) std::fputc('\n', stderr);
  return true;
}

EpochResult Trainer::end_epoch(datasets::DataLoader* val, const Epoch& e) {
  EpochResult r;
  r.epoch = epoch_ + 1;
  r.steps = optimizer_.steps();
  r.train_loss = e.metrics.loss();
  r.train_acc = e.metrics.accuracy();
  r.lr = e.lr;
  r.seconds = seconds_since(e.start);
  r.images_per_second = double(e.metrics.count - e.counted_before) / std::max(r.seconds, 1e-9);
  if (val) {
    const engine::Metrics v = evaluate(ctx_, model_, *val);
    r.validated = true;
    r.val_loss = v.loss();
    r.val_acc = v.accuracy();
    r.val_top5 = v.top5_accuracy();
    if (ema_) {
      ema_->swap(model_.store);
      const engine::Metrics m = evaluate(ctx_, model_, *val);
      ema_->swap(model_.store);
      r.ema_val_loss = m.loss();
      r.ema_val_acc = m.accuracy();
      r.ema_val_top5 = m.top5_accuracy();
    }
  }
  return r;
}

void Trainer::log_epoch(const EpochResult& r) {
  std::printf("epoch %lld/%lld  train loss %.4f  train acc %.2f%%", (long long)r.epoch,
              (long long)config_.epochs, r.train_loss, 100 * r.train_acc);
  if (r.validated) std::printf("  val loss %.4f  val acc %.2f%%", r.val_loss, 100 * r.val_acc);
  if (r.validated && ema_) std::printf("  ema val acc %.2f%%", 100 * r.ema_val_acc);
  std::printf("  %.1fs  %.0f img/s\n", r.seconds, r.images_per_second);
  std::fflush(stdout);
  nlohmann::json line = {{"epoch", r.epoch},
                         {"step", r.steps},
                         {"train_loss", r.train_loss},
                         {"train_acc", r.train_acc},
                         {"lr", r.lr},
                         {"seconds", r.seconds},
                         {"images_per_second", r.images_per_second}};
  if (r.validated) {
    line["val_loss"] = r.val_loss;
    line["val_acc"] = r.val_acc;
    line["val_top5"] = r.val_top5;
    if (ema_) {
      line["ema_val_loss"] = r.ema_val_loss;
      line["ema_val_acc"] = r.ema_val_acc;
      line["ema_val_top5"] = r.ema_val_top5;
    }
  }
  history_.push_back(line);
  if (log_) log_ << line.dump() << std::endl;
}

TrainResult Trainer::fit(datasets::DataLoader& train, datasets::DataLoader* val,
                         const DataIdentity& data) {
  check_resumed_data(data);
  data_ = data;
  const int64_t per_epoch = data_.batches_per_epoch;
  schedule_.base_lr = static_cast<float>(config_.lr);
  schedule_.min_lr = static_cast<float>(config_.min_lr);
  schedule_.warmup_lr = static_cast<float>(config_.warmup_lr);
  schedule_.warmup_steps =
      static_cast<int64_t>(std::lround(config_.warmup_epochs * double(per_epoch)));
  schedule_.total_steps = config_.epochs * per_epoch;
  open_log();
  const int64_t first_epoch = epoch_;
  const auto run_start = Clock::now();
  TrainResult result;

  for (; epoch_ < config_.epochs; ++epoch_, batch_ = 0) {
    Epoch e{resumed_metrics()};
    e.first_batch = batch_;
    e.counted_before = e.metrics.count;
    e.live = outputs_.progress && ::isatty(2);
    // The lr of the epoch's last step, also when a resumed epoch has no steps left.
    e.lr = batch_ > 0 ? schedule_.at(std::max<int64_t>(0, optimizer_.steps() - 1)) : 0.0f;
    if (!train_epoch(train, e)) {
      result.interrupted = true;
      break;
    }
    const EpochResult r = end_epoch(val, e);
    log_epoch(r);
    result.epochs.push_back(r);
    ++epoch_, batch_ = 0;  // the checkpoint resumes at the next epoch
    save_checkpoint(nullptr);
    --epoch_;
    const bool more = epoch_ + 1 < config_.epochs;
    if (outputs_.stop_after_epochs > 0 && more &&
        epoch_ + 1 - first_epoch >= outputs_.stop_after_epochs) {
      ++epoch_;
      result.interrupted = true;
      break;
    }
  }
  result.seconds = seconds_since(run_start);
  if (!outputs_.out.empty() && !result.interrupted) {
    std::map<std::string, std::string> meta = file_metadata();
    if (ema_) {  // the average is the model trained for; the checkpoint keeps both
      meta["weights"] = "model_ema";
      ema_->swap(model_.store);
    }
    save_model(outputs_.out, model_, preprocess_, classes_, meta);
    if (ema_) ema_->swap(model_.store);
  }
  return result;
}

namespace {

void print_skipped(const datasets::ImageSource& source, const char* what) {
  if (source.skipped().empty()) return;
  for (size_t i = 0; i < std::min<size_t>(source.skipped().size(), 10); ++i)
    std::fprintf(stderr, "vit: warning: skipped %s\n", source.skipped()[i].c_str());
  std::fprintf(stderr,
               "vit: warning: %zu unreadable %s images skipped (--strict makes this an error)\n",
               source.skipped().size(), what);
}

// FNV-1a over "path under the folder, tab, label, newline" of every image, in order.
std::string fingerprint(const datasets::ImageSource& source, const std::filesystem::path& root) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](const std::string& text) {
    for (unsigned char ch : text) h = (h ^ ch) * 0x100000001b3ull;
  };
  for (size_t i = 0; i < source.size(); ++i)
    mix(source.path(i).lexically_relative(root).generic_string() + "\t" +
        std::to_string(source.label(i)) + "\n");
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)h);
  return buf;
}

}  // namespace

TrainResult train_on_folder(Context& ctx, engine::Model& model,
                            const datasets::Preprocess& preprocess,
                            const datasets::ImageFolder& folder, const TrainData& data,
                            const TrainConfig& recipe, const TrainOutputs& outputs,
                            const std::filesystem::path& resume) {
  recipe.validate();
  require(data.val.empty() || recipe.val_split == 0, "--val-data and a val_split of " +
                                                         std::to_string(recipe.val_split) +
                                                         " contradict each other; give one");
  // The selection: the recipe's subset, then its validation split, both seeded by its seed.
  const std::vector<size_t> indices = datasets::stratified_subset(
      folder.samples(), recipe.subset > 0 ? size_t(recipe.subset) : folder.samples().size(),
      recipe.seed);
  std::vector<size_t> train_idx = indices, val_idx;
  if (recipe.val_split > 0)
    datasets::stratified_split(folder.samples(), indices, recipe.val_split, recipe.seed, train_idx,
                               val_idx);

  datasets::SourceOptions source_opts = data.source;
  source_opts.training = true;
  datasets::ImageSource train_source(folder, train_idx, preprocess, source_opts);
  print_skipped(train_source, "training");
  std::unique_ptr<datasets::ImageFolder> val_folder;
  std::unique_ptr<datasets::ImageSource> val_source;
  source_opts.training = false;
  if (!data.val.empty()) {
    val_folder = std::make_unique<datasets::ImageFolder>(data.val, folder.classes());
    std::vector<size_t> every(val_folder->samples().size());
    std::iota(every.begin(), every.end(), size_t{0});
    val_source =
        std::make_unique<datasets::ImageSource>(*val_folder, every, preprocess, source_opts);
  } else if (!val_idx.empty()) {
    val_source = std::make_unique<datasets::ImageSource>(folder, val_idx, preprocess, source_opts);
  }
  if (val_source) print_skipped(*val_source, "validation");

  datasets::LoaderOptions train_opts;
  train_opts.batch_size = recipe.batch_size;
  train_opts.shuffle = true;
  train_opts.drop_last = true;
  train_opts.augment = true;
  // The recipe keeps "auto"; a resumed run, whose epochs are the checkpoint's, resolves it alike.
  train_opts.augmentation = recipe.augment.for_run(recipe.epochs);
  train_opts.num_classes = static_cast<int64_t>(folder.classes().size());
  train_opts.seed = recipe.seed;
  train_opts.workers = std::max(1, data.workers);
  datasets::DataLoader train_loader(ctx.eng, train_source, train_opts);
  std::unique_ptr<datasets::DataLoader> val_loader;
  if (val_source) {
    datasets::LoaderOptions val_opts;
    val_opts.batch_size = std::max<int64_t>(recipe.batch_size, 256);
    val_opts.workers = train_opts.workers;
    val_loader = std::make_unique<datasets::DataLoader>(ctx.eng, *val_source, val_opts);
  }
  const DataIdentity identity{int64_t(train_source.size()), train_loader.num_batches(),
                              fingerprint(train_source, folder.root())};

  std::printf("data: %zu training images%s, %zu classes (%s)\n", train_source.size(),
              train_source.cached() ? " decoded in memory" : " streamed", folder.classes().size(),
              data.train.c_str());
  if (val_source) std::printf("validation: %zu images\n", val_source->size());
  std::printf("model: %s %s, %.3fM parameters, %.1f MFLOP per image\n", model.arch().c_str(),
              model.config().dump().c_str(), double(model.store.num_trainable()) / 1e6,
              model.flops_per_image() / 1e6);
  std::printf("recipe: %s, %d threads\n", nlohmann::json(recipe).dump().c_str(), ctx.threads);
  if (recipe.augment.crop == "auto") {
    const datasets::Augment& a = train_opts.augmentation;
    std::printf("augmentation: --crop auto for %lld epochs: %s\n", (long long)recipe.epochs,
                a.crop == "pad" ? ("pad by " + std::to_string(a.pad)).c_str() : "no crop");
  }
  std::fflush(stdout);

  Trainer trainer(ctx, model, preprocess, folder.classes(), recipe, outputs);
  if (!resume.empty()) {
    trainer.restore(resume);
    std::printf("resumed from %s\n", resume.c_str());
  }
  TrainResult result = trainer.fit(train_loader, val_loader.get(), identity);
  result.skipped = train_source.skipped().size() + (val_source ? val_source->skipped().size() : 0);
  return result;
}

Resumed load_checkpoint(const std::filesystem::path& path, Context& ctx,
                        const std::vector<std::string>& classes) {
  const std::string where = "'" + path.string() + "'";
  Resumed r{load_model(path, ctx, {"optimizer."}), {}};
  if (r.loaded.classes != classes) throw Error(where + ": its classes differ from those of --data");
  if (!r.loaded.metadata.count("train_config"))
    throw Error(where + ": a model file, not a training checkpoint");
  try {
    r.recipe = nlohmann::json::parse(r.loaded.metadata.at("train_config")).get<TrainConfig>();
    r.recipe.validate();
  } catch (const std::exception& e) {  // nlohmann's or ours: either way a bad checkpoint
    throw Error(where + ": malformed train_config: " + e.what());
  }
  return r;
}

}  // namespace models
