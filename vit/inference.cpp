#include "vit/inference.hpp"

#include <algorithm>

namespace vit {

VitInference::VitInference(const VisionTransformer& model, const engine::ParameterStore& store,
                           engine::Precision p)
    : precision(p), model_(model), packed_(store) {}

// Activations of one chunk: at most 8 MB, a quarter of the L3 here. ViT-Ti/16 at batch 32 ran
// 8-10 % faster in chunks of 4 (f32) or 8 (bf16) images than all 32 at once, whose 30-50 MB
// of activations cannot stay in the L3 from one matmul to the next; ViT-S/16, whose matmuls
// are bigger, gained 1-2 %.
int64_t VitInference::chunk_images() const {
  const VitConfig& c = model_.config;
  const bool bf16 = precision == engine::Precision::bf16;
  const int64_t low = bf16 ? 2 : 4, D = c.embed_dim;
  // x and normed (f32), normed_low (bf16 only), q, k, v, context and hidden (low), per token.
  const int64_t per_token = 8 * D + (bf16 ? 2 * D : 0) + low * (4 * D + c.mlp_hidden());
  const int64_t fit = (int64_t(8) << 20) / (per_token * c.num_tokens());
  int64_t chunk = 1;  // a power of two: 4 or 8 divide the usual batch sizes
  while (chunk * 2 <= fit) chunk *= 2;
  return chunk;
}

int64_t VitInference::plan_images(int64_t n) {
  if (n <= 8) return n;
  int64_t octave = 8;  // octave < n <= 2 · octave
  while (2 * octave < n) octave *= 2;
  const int64_t step = octave / 4;
  return (n + step - 1) / step * step;
}

const Tensor& VitInference::forward(Context& ctx, const Tensor& patches) {
  const VitConfig& c = model_.config;
  engine::check_same_dims(patches.dims(), c.input_dims(patches.dims().empty() ? 0 : patches.dim(0)),
                          "VitInference", c.conv_stem() ? "images" : "patches");
  const int64_t B = patches.dim(0), K = c.num_outputs();
  engine::require(B > 0, "VitInference: an empty batch");
  const int64_t per_image = patches.numel() / B;
  if (logits_.empty() || logits_.dim(0) != B) logits_ = Tensor(ctx.eng, {B, K});
  const int64_t chunk = chunk_images();
  for (int64_t b = 0; b < B; b += chunk) {
    const int64_t n = std::min(chunk, B - b), rows = plan_images(n);
    Plan& p = plans_.get({rows}, [&] {
      auto plan = std::make_unique<Plan>();
      engine::FusedBuild f{ctx,           packed_,       precision,     rows,
                           plan->buffers, plan->matmuls, &activations_, chunk};
      plan->net = model_.fused(f, taps_);
      return plan;
    });
    packed_.refresh(ctx);
    float* input = patches.data() + b * per_image;
    if (rows > n) {  // the images, then zeros: the padding rows' logits are never read
      if (staged_.empty() || staged_.numel() < rows * per_image)
        staged_ = Tensor(ctx.eng, c.input_dims(rows));
      std::copy_n(input, n * per_image, staged_.data());
      std::fill_n(staged_.data() + n * per_image, (rows - n) * per_image, 0.0f);
      input = staged_.data();
    }
    p.net->set_input(input);
    p.net->run(ctx.strm);
    ctx.wait();
    std::copy_n(p.net->logits(), n * K, logits_.data() + b * K);
    for (const auto& [block, tap] : p.net->probs_taps) {
      const int64_t probs_per_image = c.num_heads * c.num_tokens() * c.num_tokens();
      Tensor& all = probs_[block];
      if (all.empty() || all.dim(0) != B)
        all = Tensor(ctx.eng, {B, c.num_heads, c.num_tokens(), c.num_tokens()});
      std::copy_n(static_cast<const float*>(tap.get_data_handle()), n * probs_per_image,
                  all.data() + b * probs_per_image);
    }
  }
  return logits_;
}

void VitInference::tap_attention(std::vector<int64_t> blocks) {
  std::sort(blocks.begin(), blocks.end());
  blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  if (blocks == taps_) return;
  taps_ = std::move(blocks);
  plans_.clear();  // rebuilt with (or without) the copies
  probs_.clear();
}

const Tensor& VitInference::attention_probabilities(int64_t block) const {
  const auto it = probs_.find(block);
  engine::require(
      it != probs_.end(),
      "VitInference: block " + std::to_string(block) +
          "'s attention probabilities were not tapped (tap_attention) before this forward");
  return it->second;
}

}  // namespace vit
