// VitConfig: timm's VisionTransformer arguments, the named presets, and their JSON form (the
// "config" entry of a model file's __metadata__).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace vit {

struct VitConfig {
  int64_t img_size = 224;
  int64_t patch_size = 16;
  int64_t in_chans = 3;
  int64_t num_classes = 1000;  // 0: no head, the model gives its pooled features [B, D]
  int64_t embed_dim = 768;
  int64_t depth = 12;
  int64_t num_heads = 12;
  double mlp_ratio = 4.0;
  bool qkv_bias = true;
  double drop_rate = 0.0;       // after the positional embedding, in the MLP and projections
  double attn_drop_rate = 0.0;  // on the attention probabilities
  double drop_path_rate = 0.0;  // stochastic depth, rising linearly to this over the blocks
  // The prefix tokens before the patches: timm's class_token and reg_tokens (registers,
  // Darcet et al. 2023); pos_embed covers them too unless no_embed_class.
  bool class_token = true;
  int64_t reg_tokens = 0;
  bool no_embed_class = false;
  // What the head reads: "token" (the cls token's row) or "avg" (the mean of the patch rows).
  // fc_norm: the final LayerNorm after pooling (named fc_norm) instead of before (norm);
  // timm's default, and ours when a file says null, is fc_norm exactly for "avg".
  std::string global_pool = "token";
  bool fc_norm = false;
  // The Block's attention, by its registered name (vit/attention.hpp).
  std::string attn_layer = "attention";
  // LayerScale (timm's init_values; CaiT, DeiT III, DINOv2): each residual branch is multiplied
  // by a learned per-channel γ (blocks.i.ls1.gamma, ls2.gamma) that starts at this value;
  // 0 is timm's None, no LayerScale.
  double init_values = 0.0;
  bool qk_norm = false;    // a LayerNorm over each head's q and k (attn.q_norm, attn.k_norm)
  bool pre_norm = false;   // norm_pre after the token embedding; patch_embed has no bias (CLIP)
  bool distilled = false;  // DeiT's dist_token after cls_token, and head_dist; heads averaged
  double norm_eps = 1e-6;  // every LayerNorm's (timm 1e-6, Hugging Face's ViT 1e-12, CLIP 1e-5)
  std::string act_layer = "gelu";  // the MLP's: gelu (erf), gelu_tanh, quick_gelu (x·σ(1.702x))

  // The self-attention lab. Every default is timm's ViT; a file names only what differs.
  // pos_embed: "learn" (timm's learned table), "sincos" (MAE's fixed 2-D sine-cosine table, a
  // buffer that is saved but never trained) or "none" (no positional embedding at all).
  std::string pos_embed = "learn";
  // attn_score: "dot", q·kᵀ/√d, or "additive" (Bahdanau), wᵀ tanh(W_q q_i + W_k k_j) per head
  // with W_q, W_k [d_a, d] and w [d_a]; attn_additive_dim is d_a (0: the head dimension d).
  std::string attn_score = "dot";
  int64_t attn_additive_dim = 0;
  // attn_norm: over each query's scores s, "softmax"; "relu", relu(s)/n (Wortsman et al. 2023);
  // "sigmoid", σ(s − log n) (Ramapuram et al. 2024); n the number of keys a query attends to.
  std::string attn_norm = "softmax";
  // attn_window R > 0: a patch attends to the patches within Chebyshev distance R on the grid
  // and to the prefix tokens, which attend to everything (truncated attention).
  int64_t attn_window = 0;
  // How, not what (read from a config, never written): "mask", the N × N scores with the mask
  // added; "blocks", HaloAttention's b × b query blocks against their halo (dot scores only);
  // "auto", blocks where they cost less (HaloAttention::cheaper). Both compute the same function.
  std::string attn_window_impl = "auto";
  int64_t attn_lowrank = 0;    // Linformer's K: keys and values projected to K rows (E, F [K, N])
  int64_t attn_features = 0;   // Performer's M random features (attn_layer "performer")
  int64_t attn_redraw = 1000;  // Performer: training steps between feature redraws; 0: never

  // A convolutional stem instead of the patch embedding (the ViT paper's hybrid; Xiao et al.
  // 2021, "Early convolutions help transformers see better"): stage i is a 3×3 convolution of
  // stem_channels[i] filters, stride stem_strides[i], padding 1, no bias, then BatchNorm and
  // ReLU; a 1×1 convolution with bias then maps the last stage's channels to embed_dim. In timm:
  // ConvStem(channels=(*stem_channels, embed_dim), stride=(*stem_strides, 1), kernel_size=(3, ..,
  // 3, 1)) inside HybridEmbed(proj=False), so its state-dict names (patch_embed.backbone.i.conv,
  // .bn). patch_size is then the stem's total stride; the model takes whole images [B, C, H, W].
  std::vector<int64_t> stem_channels;  // empty: timm's PatchEmbed
  std::vector<int64_t> stem_strides;

  int64_t grid() const { return img_size / patch_size; }
  // Per image out of the model: the logits, or the pooled features without a head.
  int64_t num_outputs() const { return num_classes > 0 ? num_classes : embed_dim; }
  int64_t num_patches() const { return grid() * grid(); }  // L
  int64_t num_prefix_tokens() const {
    return (class_token ? 1 : 0) + (distilled ? 1 : 0) + reg_tokens;
  }
  int64_t num_tokens() const { return num_patches() + num_prefix_tokens(); }  // N
  int64_t pos_embed_len() const { return no_embed_class ? num_patches() : num_tokens(); }
  int64_t patch_dim() const { return in_chans * patch_size * patch_size; }  // C·P·P
  bool conv_stem() const { return !stem_channels.empty(); }
  // What the model takes for B images: patches [B, L, C·P·P], or images [B, C, H, W] with a
  // convolutional stem; and so how the input is cut (0: whole images), datasets::Preprocess's.
  std::vector<int64_t> input_dims(int64_t batch) const;
  int64_t input_patch_size() const { return conv_stem() ? 0 : patch_size; }
  int64_t head_dim() const { return embed_dim / num_heads; }  // d
  int64_t additive_dim() const { return attn_additive_dim > 0 ? attn_additive_dim : head_dim(); }
  // The keys each patch query attends to, at most: all N, the window and the prefix, or K.
  int64_t keys_per_query() const;
  int64_t mlp_hidden() const {
    return static_cast<int64_t>(static_cast<double>(embed_dim) * mlp_ratio);
  }  // F

  // Throws engine::Error naming the flag (kebab-case, as on the command line) that is wrong.
  void validate() const;
  // Multiply-adds of one forward pass per image ×2: linear layers, patch embedding and the two
  // attention matmuls (the convention of ../shared/PEERS.md).
  double flops_per_image() const;

  bool operator==(const VitConfig&) const = default;
};

void to_json(nlohmann::json& j, const VitConfig& c);
void from_json(const nlohmann::json& j, VitConfig& c);
// The self-attention lab's settings (pos_embed, attn_score, ... attn_redraw), each with its
// value, defaults included; to_json writes only those that differ from a plain ViT's.
nlohmann::json lab_settings(const VitConfig& c);

struct VitPreset {
  const char* name;
  const char* description;
  VitConfig config;
};
const std::vector<VitPreset>& vit_presets();
// Throws engine::Error listing the known names when `name` is not one.
VitConfig vit_preset(const std::string& name);

}  // namespace vit
