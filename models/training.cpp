#include "models/training.hpp"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
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
       {"augment",
        {{"crop", c.augment.crop},
         {"pad", c.augment.pad},
         {"rrc_scale_min", c.augment.rrc_scale_min},
         {"hflip", c.augment.hflip},
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
  const nlohmann::json& a = json_field(j, "augment");
  a.at("crop").get_to(c.augment.crop);
  c.augment.pad = field_int(a, "pad");
  c.augment.rrc_scale_min = number(a, "rrc_scale_min");
  c.augment.hflip = number(a, "hflip");
  c.augment.random_erase = number(a, "random_erase");
  c.augment.mixup_alpha = number(a, "mixup_alpha");
  c.augment.cutmix_alpha = number(a, "cutmix_alpha");
  c.augment.mix_prob = number(a, "mix_prob");
  c.augment.switch_prob = number(a, "switch_prob");
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
      outputs_(std::move(outputs)) {
  config_.validate();
  optimizer_.name = config_.opt;
  optimizer_.adamw.weight_decay = static_cast<float>(config_.weight_decay);
  optimizer_.sgd.weight_decay = static_cast<float>(config_.weight_decay);
  optimizer_.sgd.momentum = static_cast<float>(config_.momentum);
  optimizer_.clip_grad = static_cast<float>(config_.clip_grad);
}

void Trainer::save_checkpoint(int64_t batches_per_epoch, const engine::Metrics* partial) {
  if (outputs_.checkpoint.empty()) return;
  std::ostringstream rng;
  rng << ctx_.rng;
  nlohmann::json state = {{"epoch", epoch_},
                          {"batch", batch_},
                          {"step", optimizer_.steps()},
                          {"batches_per_epoch", batches_per_epoch},
                          {"rng", rng.str()}};
  if (partial)  // doubles are written with 17 digits: the sums resume bit for bit
    state["epoch_metrics"] = {{"count", partial->count},
                              {"loss_sum", partial->loss_sum},
                              {"top1", partial->top1},
                              {"top5", partial->top5},
                              {"confusion", partial->confusion}};
  const engine::Dims flat{model_.store.size()};
  save_model(outputs_.checkpoint, model_, preprocess_, classes_,
             {{"train_config", nlohmann::json(config_).dump()},
              {"train_state", state.dump()},
              {"history", nlohmann::json(history_).dump()}},
             {{"optimizer.exp_avg", "F32", flat, model_.store.adam_m()},
              {"optimizer.exp_avg_sq", "F32", flat, model_.store.adam_v()}});
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

TrainResult Trainer::fit(datasets::DataLoader& train, datasets::DataLoader* val) {
  const int64_t per_epoch = train.num_batches(), K = model_.num_classes();
  engine::WarmupCosineSchedule schedule;
  schedule.base_lr = static_cast<float>(config_.lr);
  schedule.min_lr = static_cast<float>(config_.min_lr);
  schedule.warmup_lr = static_cast<float>(config_.warmup_lr);
  schedule.warmup_steps =
      static_cast<int64_t>(std::lround(config_.warmup_epochs * double(per_epoch)));
  schedule.total_steps = config_.epochs * per_epoch;
  engine::SoftmaxCrossEntropy loss_fn(static_cast<float>(config_.label_smoothing));
  std::ofstream log;
  if (!outputs_.log.empty()) {
    if ((epoch_ > 0 || batch_ > 0) && std::filesystem::exists(outputs_.log))
      reconcile_log(outputs_.log, history_, epoch_);
    log.open(outputs_.log, std::ios::app);
    if (!log) throw Error("'" + outputs_.log.string() + "': cannot write the log");
  }
  const bool live = outputs_.progress && ::isatty(2);
  const int64_t first_epoch = epoch_;
  TrainResult result;
  const auto run_start = Clock::now();

  for (; epoch_ < config_.epochs; ++epoch_, batch_ = 0) {
    model_.train(true);
    train.start_epoch(epoch_, batch_);
    engine::Metrics metrics(K);
    if (batch_ > 0 && partial_.is_object()) {  // resumed mid-epoch: its metrics so far
      metrics.count = engine::field_int(partial_, "count");
      metrics.loss_sum = engine::field_double(partial_, "loss_sum");
      metrics.top1 = engine::field_int(partial_, "top1");
      metrics.top5 = engine::field_int(partial_, "top5");
      metrics.confusion = engine::json_ints(engine::json_field(partial_, "confusion"), "confusion");
      require(metrics.confusion.size() == size_t(K * K), "checkpoint: malformed epoch_metrics");
    }
    partial_ = nlohmann::json();
    const auto start = Clock::now();
    const int64_t first = batch_, counted_before = metrics.count;
    // The lr of the epoch's last step, also when a resumed epoch has no steps left.
    float lr = batch_ > 0 ? schedule.at(std::max<int64_t>(0, optimizer_.steps() - 1)) : 0.0f;
    int64_t last_report = -1;
    while (auto batch = train.next()) {
      lr = schedule.at(optimizer_.steps());
      engine::train_step(ctx_, model_, loss_fn, optimizer_, batch->input, batch->labels,
                         batch->targets.empty() ? nullptr : &batch->targets, lr, &metrics);
      ++batch_;
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      const double ips = double(metrics.count - counted_before) / std::max(elapsed, 1e-9);
      const double eta = double(per_epoch - batch_) * elapsed / double(batch_ - first);
      const int64_t tenth = batch_ * 10 / per_epoch;
      if (outputs_.progress && (live || tenth != last_report)) {
        std::fprintf(stderr,
                     "%sepoch %lld/%lld  step %lld/%lld  loss %.4f  lr %.2e  %.0f img/s  ETA %s%s",
                     live ? "\r" : "", (long long)epoch_ + 1, (long long)config_.epochs,
                     (long long)batch_, (long long)per_epoch, metrics.loss(), double(lr), ips,
                     clock_text(eta).c_str(), live ? "  " : "\n");
        last_report = tenth;
      }
      if (outputs_.checkpoint_every > 0 && optimizer_.steps() % outputs_.checkpoint_every == 0)
        save_checkpoint(per_epoch, &metrics);
      if (outputs_.stop && outputs_.stop->load()) {
        if (live) std::fputc('\n', stderr);
        save_checkpoint(per_epoch, &metrics);
        result.interrupted = true;
        result.seconds = std::chrono::duration<double>(Clock::now() - run_start).count();
        return result;
      }
    }
    if (live) std::fputc('\n', stderr);
    EpochResult r;
    r.epoch = epoch_ + 1;
    r.steps = optimizer_.steps();
    r.train_loss = metrics.loss();
    r.train_acc = metrics.accuracy();
    r.lr = lr;
    r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    r.images_per_second = double(metrics.count - counted_before) / std::max(r.seconds, 1e-9);
    if (val) {
      const engine::Metrics v = evaluate(ctx_, model_, *val);
      r.validated = true;
      r.val_loss = v.loss();
      r.val_acc = v.accuracy();
      r.val_top5 = v.top5_accuracy();
    }
    std::printf("epoch %lld/%lld  train loss %.4f  train acc %.2f%%", (long long)r.epoch,
                (long long)config_.epochs, r.train_loss, 100 * r.train_acc);
    if (r.validated) std::printf("  val loss %.4f  val acc %.2f%%", r.val_loss, 100 * r.val_acc);
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
    }
    history_.push_back(line);
    if (log) log << line.dump() << std::endl;
    result.epochs.push_back(r);
    const int64_t done = epoch_;
    ++epoch_, batch_ = 0;  // the checkpoint resumes at the next epoch
    save_checkpoint(per_epoch, nullptr);
    epoch_ = done;
    if (outputs_.stop_after_epochs > 0 && epoch_ + 1 - first_epoch >= outputs_.stop_after_epochs &&
        epoch_ + 1 < config_.epochs) {
      ++epoch_;
      result.interrupted = true;
      break;
    }
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - run_start).count();
  if (!outputs_.out.empty() && !result.interrupted)
    save_model(outputs_.out, model_, preprocess_, classes_,
               {{"train_config", nlohmann::json(config_).dump()},
                {"history", nlohmann::json(history_).dump()}});
  return result;
}

}  // namespace models
