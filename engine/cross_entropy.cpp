#include "engine/cross_entropy.hpp"

#include <cmath>

namespace engine {

SoftmaxCrossEntropy::SoftmaxCrossEntropy(float eps) : label_smoothing(eps) {
  require(eps >= 0.0f && eps < 1.0f,
          "SoftmaxCrossEntropy: label smoothing must be in [0, 1), got " + std::to_string(eps));
}

SoftmaxCrossEntropy::Plan& SoftmaxCrossEntropy::prepare(Context& ctx, const Tensor& logits) {
  require(logits.dims().size() == 2, "SoftmaxCrossEntropy: logits have shape " +
                                         to_string(logits.dims()) + ", expected [B, K]");
  Plan& p = plans_.get(logits.dims(), [&] {
    auto plan = std::make_unique<Plan>();
    const dnnl::memory::desc md = plain_desc(logits.dims());
    dnnl::logsoftmax_forward::primitive_desc fwd_pd({dnnl::prop_kind::forward_training, md, 1},
                                                    ctx.eng);
    plan->fwd = dnnl::logsoftmax_forward(fwd_pd);
    plan->bwd = dnnl::logsoftmax_backward({{md, md, 1}, ctx.eng, fwd_pd});
    for (Tensor* t : {&plan->log_probs, &plan->targets, &plan->diff_log_probs, &plan->diff_logits})
      *t = Tensor(ctx.eng, logits.dims());
    plan->logits = memory_over(ctx, md);
    plan->log_probs_mem = memory_over(ctx, md, plan->log_probs.data());
    plan->diff_log_probs_mem = memory_over(ctx, md, plan->diff_log_probs.data());
    plan->diff_logits_mem = memory_over(ctx, md, plan->diff_logits.data());
    return plan;
  });
  p.logits.set_data_handle(logits.data());
  p.fwd.execute(ctx.strm, {{DNNL_ARG_SRC, p.logits}, {DNNL_ARG_DST, p.log_probs_mem}});
  return p;
}

float SoftmaxCrossEntropy::forward(Context& ctx, const Tensor& logits,
                                   const std::vector<int>& labels) {
  Plan& p = prepare(ctx, logits);
  const int64_t B = logits.dim(0), K = logits.dim(1);
  require(static_cast<int64_t>(labels.size()) == B,
          "SoftmaxCrossEntropy: " + std::to_string(labels.size()) + " labels for a batch of " +
              std::to_string(B));
  p.targets.zero();
  for (int64_t b = 0; b < B; ++b) {
    require(labels[b] >= 0 && labels[b] < K, "SoftmaxCrossEntropy: label " +
                                                 std::to_string(labels[b]) + " outside [0, " +
                                                 std::to_string(K) + ")");
    p.targets[b * K + labels[b]] = 1.0f;
  }
  return finish(ctx, p);
}

float SoftmaxCrossEntropy::forward(Context& ctx, const Tensor& logits, const Tensor& targets) {
  check_same_dims(targets.dims(), logits.dims(), "SoftmaxCrossEntropy", "targets");
  Plan& p = prepare(ctx, logits);
  p.targets.copy_from(targets);
  return finish(ctx, p);
}

float SoftmaxCrossEntropy::finish(Context& ctx, Plan& p) {
  ctx.wait();
  const int64_t B = p.targets.dim(0), K = p.targets.dim(1);
  const float smooth = label_smoothing / static_cast<float>(K);
  double loss = 0.0;
  for (int64_t i = 0; i < B * K; ++i) {
    const float t = (1.0f - label_smoothing) * p.targets[i] + smooth;
    p.targets[i] = t;
    // d loss / d log_probs: what the logsoftmax backward turns into (softmax - t) / B.
    p.diff_log_probs[i] = -t / static_cast<float>(B);
    if (t != 0.0f) loss -= static_cast<double>(t) * p.log_probs[i];
  }
  return static_cast<float>(loss / static_cast<double>(B));
}

const Tensor& SoftmaxCrossEntropy::backward(Context& ctx) {
  Plan& p = plans_.current("SoftmaxCrossEntropy");
  p.bwd.execute(ctx.strm, {{DNNL_ARG_DST, p.log_probs_mem},
                           {DNNL_ARG_DIFF_DST, p.diff_log_probs_mem},
                           {DNNL_ARG_DIFF_SRC, p.diff_logits_mem}});
  return p.diff_logits;
}

}  // namespace engine
