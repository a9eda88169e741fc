// The Vision Transformer (Dosovitskiy et al., 2020) with timm's structure and state-dict names.
// Input is the image already cut into patches by datasets/ ([B, L, C·P·P], each patch
// flattened in (channel, row, column) order), so PatchEmbed is a matmul with timm's
// [D, C, P, P] convolution weight: the same function as its stride-P convolution.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/batched_matmul.hpp"
#include "engine/binary.hpp"
#include "engine/eltwise.hpp"
#include "engine/layer_norm.hpp"
#include "engine/linear.hpp"
#include "engine/reorder.hpp"
#include "engine/softmax.hpp"
#include "vit/config.hpp"

namespace vit {

using engine::Context;
using engine::Dims;
using engine::ParameterStore;
using engine::Tensor;

// patches [B, L, C·P·P] -> [B, L, D].
struct PatchEmbed {
  PatchEmbed(ParameterStore& store, const VitConfig& c);
  const Tensor& forward(Context& ctx, const Tensor& patches) { return proj.forward(ctx, patches); }
  void backward(Context& ctx, const Tensor& diff_dst) { proj.backward(ctx, diff_dst); }

  engine::Linear proj;  // patch_embed.proj, weight [D, C, P, P]
};

// timm's _pos_embed: prepend cls_token, add the learned pos_embed. [B, L, D] -> [B, N, D].
// Computed as tokens + table where tokens has a zero row 0 and table = pos_embed with cls_token
// added to its row 0: the same sums as timm's cat-then-add.
struct PosEmbed {
  PosEmbed(ParameterStore& store, const VitConfig& c);
  const Tensor& forward(Context& ctx, const Tensor& patch_tokens);
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);  // -> diff of patch_tokens

  int64_t num_patches, embed_dim;
  engine::Parameter* cls_token;  // [1, 1, D]
  engine::Parameter* pos_embed;  // [1, N, D]

 private:
  struct Buffers {
    Tensor tokens, diff_patch_tokens;  // [B, N, D] with row 0 zero, [B, L, D]
  };
  Tensor table_;  // [1, N, D]
  engine::Binary add_cls_{dnnl::algorithm::binary_add};
  engine::Reorder copy_;
  engine::BroadcastAdd add_pos_;
  engine::PlanCache<Buffers> buffers_;
};

// Multi-head self-attention with a fused qkv projection; heads are strided views of its output.
struct Attention {
  Attention(ParameterStore& store, const std::string& name, const VitConfig& c);
  const Tensor& forward(Context& ctx, const Tensor& x);  // [B, N, D] -> [B, N, D]
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);
  void train(bool on) { attn_drop.training = proj_drop.training = on; }
  // Takes every gradient buffer of its backward from Context::shared_buffer under `slot`.
  void share_gradients(const std::string& slot);

  int64_t num_heads, head_dim;
  std::string grad_slot;            // non-empty: see share_gradients
  engine::Linear qkv;               // [B, N, 3·D], laid out [B, N, 3, H, d]
  engine::BatchedMatmul scores_mm;  // q·kᵀ/√d  [B, H, N, N]
  engine::Softmax softmax;
  engine::Dropout attn_drop;
  engine::BatchedMatmul context_mm;  // probs·v  [B, H, N, d]
  engine::Reorder merge;             // [B, H, N, d] -> [B, N, H·d]
  engine::Linear proj;
  engine::Dropout proj_drop;

 private:
  engine::View head(const Tensor& qkv_out, int which) const;  // 0 q, 1 k, 2 v: [B, H, N, d]
  struct Buffers {
    Tensor merged, diff_heads, diff_probs, diff_qkv;
  };
  engine::PlanCache<Buffers> buffers_;
};

struct Mlp {
  Mlp(ParameterStore& store, const std::string& name, const VitConfig& c);
  const Tensor& forward(Context& ctx, const Tensor& x);
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);
  void train(bool on) { drop1.training = drop2.training = on; }

  engine::Linear fc1;  // D -> F
  engine::Gelu act;
  engine::Dropout drop1;
  engine::Linear fc2;  // F -> D
  engine::Dropout drop2;
};

// Pre-norm block: x = x + drop_path(attn(norm1(x))); x = x + drop_path(mlp(norm2(x))).
struct Block {
  Block(ParameterStore& store, const std::string& name, const VitConfig& c, float drop_path);
  const Tensor& forward(Context& ctx, const Tensor& x);
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);
  void train(bool on);

  engine::LayerNorm norm1;
  Attention attn;
  engine::DropPath drop_path1;
  engine::Add residual1;
  engine::LayerNorm norm2;
  Mlp mlp;
  engine::DropPath drop_path2;
  engine::Add residual2;
  engine::Add grad_sum1, grad_sum2;  // where x and x1 fan out, their gradients add
};

class VisionTransformer {
 public:
  VisionTransformer(ParameterStore& store, const VitConfig& config);

  // patches [B, L, C·P·P] -> logits [B, K].
  const Tensor& forward(Context& ctx, const Tensor& patches);
  // From diff_logits [B, K] writes the gradient of every parameter.
  void backward(Context& ctx, const Tensor& diff_logits);
  void train(bool on);
  // bf16: the matmuls of the patch embedding and of every block's Linears take bf16 operands
  // (engine::Linear); the attention matmuls, the head and everything else stay f32.
  void set_precision(engine::Precision p);
  // timm's init: trunc_normal(0.02) on Linear weights and pos_embed, zero biases, cls_token
  // normal(1e-6), LayerNorm 1 and 0, patch_embed torch's default (kaiming uniform).
  void init_weights(Context& ctx);

  const VitConfig config;

 private:
  PosEmbed pos_;  // cls_token and pos_embed first, as in timm's state dict
  PatchEmbed patch_embed_;
  engine::Dropout pos_drop_;
  std::vector<std::unique_ptr<Block>> blocks_;
  engine::LayerNorm norm_;
  engine::Dropout head_drop_;
  engine::Linear head_;
  engine::Reorder copy_;
  struct Buffers {
    Tensor cls, diff_features;  // [B, D], [B, N, D] with only row 0 written
  };
  engine::PlanCache<Buffers> buffers_;
};

}  // namespace vit
