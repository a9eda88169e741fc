// What `vit explain` and the server's /v1/explain compute: a map over the image of where the
// model looked. ViT: attention rollout (vit/rollout.hpp) or one block's raw attention, read
// from the fused inference path's attention taps (the layers' probabilities for windowed
// attention run as blocks, which the fused path cannot hand out); CNN: Grad-CAM on the last
// stage (ResNet::grad_cam).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/model.hpp"
#include "engine/softmax.hpp"
#include "vit/inference.hpp"
#include "vit/rollout.hpp"

namespace models {

using engine::Context;
using engine::Tensor;

struct ExplainOptions {
  std::string method;           // rollout, attention (ViT) or gradcam (CNN); "": the model's
  vit::RolloutOptions rollout;  // head fusion (rollout and attention), discard ratio (rollout)
  int64_t layer = -1;           // attention: the block; negative counts from the last (-1)
  int64_t target_class = -1;    // gradcam: the class explained; -1: each image's top class
  bool heads = false;           // attention: also one map per head
};

// One image's map, row-major over grid_h × grid_w (the patch grid, or the CNN's last stage).
struct Explanation {
  int64_t grid_h = 0, grid_w = 0;
  std::vector<float> map;
  std::vector<std::vector<float>> heads;  // options.heads: each head's map, as `map`
  std::vector<float> probabilities;       // the model's softmax over its classes
  int64_t explained_class = 0;            // the top class, or the one asked for (gradcam)
};

class Explainer {
 public:
  // `model` must outlive this object. Fills in the method's default and refuses what the model
  // or the method cannot do, in one line naming the flag (--method, --layer, --class, ...).
  Explainer(Context& ctx, engine::Model& model, ExplainOptions options);
  // The same checks and defaults, without building anything: `options` as the Explainer would
  // hold them, or an engine::Error naming the flag.
  static ExplainOptions resolve(const engine::Model& model, ExplainOptions options);
  // Whether explaining this model needs its store allocated for training (Grad-CAM's head
  // backward; the layers of a windowed ViT run as blocks). A server allocates it up front.
  static bool needs_training_store(const engine::Model& model);
  // What note() says for this model.
  static std::string pooling_note(const engine::Model& model);

  // input: a batch as the model takes it -> one explanation per image.
  std::vector<Explanation> explain(Context& ctx, const Tensor& input);

  const ExplainOptions& options() const { return options_; }
  // How the map reads the attention when no cls token is pooled (empty otherwise), for the
  // user to be told: "the mean over the patch queries".
  const std::string& note() const { return note_; }

 private:
  std::vector<const Tensor*> probabilities(Context& ctx, const std::vector<int64_t>& blocks);

  engine::Model& model_;
  ExplainOptions options_;
  std::string note_;
  std::unique_ptr<vit::VitInference> tapped_;  // ViT, exact attention: its own taps
  engine::Softmax softmax_;
};

}  // namespace models
