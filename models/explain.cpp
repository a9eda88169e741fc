#include "models/explain.hpp"

#include <algorithm>

#include "engine/error.hpp"
#include "models/resnet.hpp"
#include "models/vit_model.hpp"
#include "vit/halo_attention.hpp"

namespace models {

using engine::Error;

namespace {

VitModel* as_vit(engine::Model& model) {
  return dynamic_cast<VitModel*>(&model);
}

}  // namespace

ExplainOptions Explainer::resolve(const engine::Model& model, ExplainOptions o) {
  if (model.num_classes() == 0)
    throw Error("explain: the model has no classification head (num_classes 0)");
  const vit::RolloutOptions defaults;
  if (const VitModel* vm = dynamic_cast<const VitModel*>(&model)) {
    const vit::VitConfig& c = vm->net.config;
    if (o.method.empty()) o.method = "rollout";
    if (o.method == "gradcam")
      throw Error("--method gradcam explains the CNN (resnet); a ViT takes rollout or attention");
    if (o.method != "rollout" && o.method != "attention")
      throw Error("--method must be rollout, attention or gradcam, not '" + o.method + "'");
    if (c.attn_features > 0)
      throw Error("--method " + o.method +
                  " needs attention probabilities, which Performer (attn_features " +
                  std::to_string(c.attn_features) + ") never forms");
    if (c.attn_lowrank > 0)
      throw Error("--method " + o.method +
                  " needs token-to-token attention; Linformer (attn_lowrank " +
                  std::to_string(c.attn_lowrank) + ") attends to projections of the tokens");
    if (o.target_class >= 0)
      throw Error(
          "--class needs --method gradcam (the CNN): attention maps and their rollout "
          "do not depend on the class");
    if (o.method == "rollout" && o.layer != -1)
      throw Error("--layer is for --method attention; rollout runs through every block");
    if (o.method == "attention" && o.rollout.discard_ratio != defaults.discard_ratio)
      throw Error("--discard-ratio is for --method rollout");
    if (o.method == "rollout" && o.heads)
      throw Error("--heads is for --method attention (rollout fuses the heads of every block)");
    const int64_t depth = vm->net.depth();
    if (o.layer < -depth || o.layer >= depth)
      throw Error("--layer " + std::to_string(o.layer) + ": the model has " +
                  std::to_string(depth) + " blocks (0 to " + std::to_string(depth - 1) +
                  ", or -1 for the last)");
    if (o.method == "attention" && o.layer < 0) o.layer += depth;  // resolve() twice: the same
  } else if (dynamic_cast<const ResNet*>(&model)) {
    if (o.method.empty()) o.method = "gradcam";
    if (o.method == "rollout" || o.method == "attention")
      throw Error("--method " + o.method + " explains a ViT; the CNN (resnet) takes gradcam");
    if (o.method != "gradcam")
      throw Error("--method must be rollout, attention or gradcam, not '" + o.method + "'");
    if (o.heads) throw Error("--heads is for a ViT's --method attention");
    if (o.layer != -1) throw Error("--layer is for a ViT's --method attention");
    if (o.rollout.head_fusion != defaults.head_fusion ||
        o.rollout.discard_ratio != defaults.discard_ratio)
      throw Error("--head-fusion and --discard-ratio are for a ViT's attention");
    if (o.target_class >= model.num_classes())
      throw Error("--class " + std::to_string(o.target_class) + ": the model has " +
                  std::to_string(model.num_classes()) + " classes");
  } else {
    throw Error("explain: no method for a '" + model.arch() + "' model");
  }
  const std::string& fusion = o.rollout.head_fusion;
  if (fusion != "mean" && fusion != "max" && fusion != "min")
    throw Error("--head-fusion must be mean, max or min, not '" + fusion + "'");
  if (!(o.rollout.discard_ratio >= 0.0 && o.rollout.discard_ratio < 1.0))
    throw Error("--discard-ratio must be in [0, 1), not " +
                std::to_string(o.rollout.discard_ratio));
  return o;
}

bool Explainer::needs_training_store(const engine::Model& model) {
  if (const VitModel* vm = dynamic_cast<const VitModel*>(&model))
    return vm->net.config.attn_window > 0 && vit::HaloAttention::used(vm->net.config);
  return dynamic_cast<const ResNet*>(&model) != nullptr;
}

std::string Explainer::pooling_note(const engine::Model& model) {
  const VitModel* vm = dynamic_cast<const VitModel*>(&model);
  if (!vm || vm->net.config.global_pool == "token") return "";
  return std::string("the model pools the patch tokens by ") +
         (vm->net.config.global_pool == "seq" ? "learned weights (SeqPool)" : "their mean") +
         " (no cls token read): the map is the mean over the patch queries";
}

Explainer::Explainer(Context& ctx, engine::Model& model, ExplainOptions options)
    : model_(model), options_(resolve(model, std::move(options))), note_(pooling_note(model)) {
  const ExplainOptions& o = options_;
  // Grad-CAM's head backward writes its gradients; the halo blocks' probabilities come
  // densified from the layers, whose plans bind the gradient buffers.
  if (needs_training_store(model)) model.store.allocate_training(ctx.eng);
  if (VitModel* vm = as_vit(model)) {
    std::vector<int64_t> blocks;
    if (o.method == "rollout")
      for (int64_t b = 0; b < vm->net.depth(); ++b) blocks.push_back(b);
    else
      blocks.push_back(o.layer);
    if (!needs_training_store(model)) {
      tapped_ = std::make_unique<vit::VitInference>(vm->net, model.store, vm->inference->precision);
      tapped_->tap_attention(blocks);
    }
  }
  model.train(false);
}

std::vector<const Tensor*> Explainer::probabilities(Context& ctx,
                                                    const std::vector<int64_t>& blocks) {
  std::vector<const Tensor*> probs;
  VitModel& vm = *as_vit(model_);
  for (int64_t b : blocks)
    probs.push_back(tapped_ ? &tapped_->attention_probabilities(b)
                            : &vm.net.attention_probabilities(ctx, b));
  return probs;
}

std::vector<Explanation> Explainer::explain(Context& ctx, const Tensor& input) {
  const ExplainOptions& o = options_;
  VitModel* vm = as_vit(model_);
  const Tensor& logits = !vm       ? model_.forward(ctx, input)
                         : tapped_ ? tapped_->forward(ctx, input)
                                   : vm->net.forward(ctx, input);
  const Tensor& probs = softmax_.forward(ctx, logits);
  ctx.wait();
  const int64_t B = logits.dim(0), K = logits.dim(1);
  std::vector<Explanation> out(static_cast<size_t>(B));
  std::vector<int64_t> classes(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    Explanation& e = out[size_t(b)];
    e.probabilities.assign(probs.data() + b * K, probs.data() + (b + 1) * K);
    e.explained_class = o.target_class >= 0
                            ? o.target_class
                            : std::max_element(e.probabilities.begin(), e.probabilities.end()) -
                                  e.probabilities.begin();
    classes[size_t(b)] = e.explained_class;
  }

  if (!vm) {  // Grad-CAM
    ResNet& net = dynamic_cast<ResNet&>(model_);
    const Tensor map = net.grad_cam(ctx, classes);
    const int64_t h = net.features().dim(1), w = net.features().dim(2);
    for (int64_t b = 0; b < B; ++b) {
      Explanation& e = out[size_t(b)];
      e.grid_h = h;
      e.grid_w = w;
      e.map.assign(map.data() + b * h * w, map.data() + (b + 1) * h * w);
    }
    return out;
  }

  const vit::VitConfig& c = vm->net.config;
  const int64_t P = c.num_prefix_tokens(), L = c.num_patches(), G = c.grid();
  const bool cls = c.global_pool == "token";
  for (Explanation& e : out) e.grid_h = e.grid_w = G;
  if (o.method == "rollout") {
    std::vector<int64_t> blocks(static_cast<size_t>(vm->net.depth()));
    for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = int64_t(i);
    const Tensor map = vit::attention_rollout(ctx, probabilities(ctx, blocks), P, cls, o.rollout);
    for (int64_t b = 0; b < B; ++b)
      out[size_t(b)].map.assign(map.data() + b * L, map.data() + (b + 1) * L);
    return out;
  }

  // One block's attention from the cls token to the patches (or from the patches, averaged),
  // per head, and the heads fused element by element as rollout fuses them.
  const Tensor& a = *probabilities(ctx, {o.layer})[0];
  const int64_t H = a.dim(1), N = a.dim(2);
  const std::string& fusion = o.rollout.head_fusion;
  for (int64_t b = 0; b < B; ++b) {
    Explanation& e = out[size_t(b)];
    e.map.assign(size_t(L), 0.0f);
    std::vector<std::vector<float>> heads(size_t(H), std::vector<float>(size_t(L), 0.0f));
    const int64_t q_begin = cls ? 0 : P, q_end = cls ? 1 : N;
    for (int64_t i = q_begin; i < q_end; ++i)
      for (int64_t j = 0; j < L; ++j) {
        float fused = fusion == "mean" ? 0.0f : a[((b * H) * N + i) * N + P + j];
        for (int64_t h = 0; h < H; ++h) {
          const float x = a[((b * H + h) * N + i) * N + P + j];
          heads[size_t(h)][size_t(j)] += x;
          fused = fusion == "mean"  ? fused + x / float(H)
                  : fusion == "max" ? std::max(fused, x)
                                    : std::min(fused, x);
        }
        e.map[size_t(j)] += fused;
      }
    const float queries = float(q_end - q_begin);
    for (float& x : e.map) x /= queries;
    for (auto& head : heads)
      for (float& x : head) x /= queries;
    if (o.heads) e.heads = std::move(heads);
  }
  return out;
}

}  // namespace models
