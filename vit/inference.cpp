#include "vit/inference.hpp"

#include <algorithm>
#include <cmath>

namespace vit {

namespace {

using dnnl::memory;
using dt = memory::data_type;
using engine::Dims;
using engine::ParameterStore;

memory::desc desc(const Dims& dims, dt type, const Dims& strides = {}) {
  return memory::desc(dims, type, strides.empty() ? engine::row_major_strides(dims) : strides);
}

// A memory over `base`'s buffer, `offset` elements of md's type in: a view, no copy.
memory view(const dnnl::engine& eng, const memory::desc& md, const memory& base,
            int64_t offset = 0) {
  char* data = static_cast<char*>(base.get_data_handle());
  return memory(md, eng, data + offset * int64_t(memory::data_type_size(md.data_type())));
}

// A memory over a parameter's f32 values, read as they are.
memory over_param(const dnnl::engine& eng, const ParameterStore& store, const std::string& name,
                  const Dims& dims, int64_t offset = 0) {
  const engine::Parameter* p = store.find(name);
  engine::require(p != nullptr, "VitInference: the store has no parameter '" + name + "'");
  engine::require(offset + engine::product(dims) <= p->value.numel(),
                  "VitInference: parameter '" + name + "' is smaller than expected");
  return memory(desc(dims, dt::f32), eng, p->value.data() + offset);
}

// dst = src·Wᵀ + b, then the post-ops; the weights left for the kernel to lay out.
dnnl::matmul::primitive_desc dense(const dnnl::engine& eng, const memory::desc& src, int64_t in,
                                   int64_t out, dt weight_type, const memory::desc& dst,
                                   const dnnl::post_ops& ops = dnnl::post_ops()) {
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  const memory::desc weights({in, out}, weight_type, memory::format_tag::any);
  const memory::desc bias({1, out}, dt::f32, memory::format_tag::ab);
  return {dnnl::matmul::desc(src, weights, bias, dst), attr, eng};
}

dnnl::layer_normalization_forward layer_norm(const dnnl::engine& eng, int64_t rows, int64_t dim) {
  // timm's ViT LayerNorm: eps 1e-6, as engine::LayerNorm's default.
  return dnnl::layer_normalization_forward(
      {{dnnl::prop_kind::forward_inference, desc({rows, dim}, dt::f32), 1e-6f,
        dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift},
       eng});
}

// Images per attention group: the largest divisor of B whose f32 scores fit in about 2 MB, the
// L2 of two cores here (4 images for ViT-Ti/16 at 224: 1-2 % faster than all 32 at once).
int64_t attention_group(int64_t B, int64_t scores_bytes_per_image) {
  const int64_t limit = std::max<int64_t>(1, (int64_t(2) << 20) / scores_bytes_per_image);
  for (int64_t g = std::min(B, limit); g > 1; --g)
    if (B % g == 0) return g;
  return 1;
}

}  // namespace

VitInference::VitInference(const VitConfig& config, const engine::ParameterStore& store,
                           engine::Precision p)
    : precision(p), config_((config.validate(), config)), store_(store) {}

std::unique_ptr<VitInference::Plan> VitInference::build(Context& ctx, int64_t B) {
  const dnnl::engine& eng = ctx.eng;
  const VitConfig& c = config_;
  const int64_t L = c.num_patches(), N = c.num_tokens(), D = c.embed_dim, H = c.num_heads,
                d = c.head_dim(), F = c.mlp_hidden(), K = c.num_classes, CPP = c.patch_dim();
  const int64_t M = B * N;
  const dt low = engine::data_type(precision);
  const bool bf16 = precision == engine::Precision::bf16;
  auto p = std::make_unique<Plan>();
  p->batch = B;

  // Buffers (oneDNN allocates them, 64-byte aligned) and the views over them.
  p->input = memory(desc({B * L, CPP}, dt::f32), eng, DNNL_MEMORY_NONE);
  p->x = memory(desc({M, D}, dt::f32), eng);
  p->normed = memory(desc({M, D}, dt::f32), eng);
  if (bf16) {
    p->input_low = memory(desc({B * L, CPP}, low), eng);
    p->normed_low = memory(desc({M, D}, low), eng);
  } else {
    p->input_low = p->input;
    p->normed_low = p->normed;
  }
  p->patch_out = view(eng, desc({B * L, D}, dt::f32), p->normed);
  p->patch_tokens = view(eng, desc({B, L, D}, dt::f32), p->normed);
  p->x_patch_rows = view(eng, desc({B, L, D}, dt::f32, {N * D, D, 1}), p->x, D);
  p->x_cls_rows = view(eng, desc({B, D}, dt::f32, {N * D, 1}), p->x);
  p->qkv = memory(desc({3, M, D}, low), eng);
  for (int64_t t = 0; t < 3; ++t) p->qkv_parts[t] = view(eng, desc({M, D}, low), p->qkv, t * M * D);
  p->context = memory(desc({M, D}, low), eng);
  // Attention runs on a few images at a time so that their scores stay in the L2 cache
  // between the two matmuls and the softmax.
  const int64_t G = attention_group(B, H * N * N * int64_t(sizeof(float)));
  const Dims heads = {G, H, N, d}, heads_t = {G, H, d, N};
  // q, k and v each dense [B, N, D]: their head views are the acbd/adbc layouts that the brgemm
  // kernel accepts (1.5× faster than the generic gemm on a strided [B, N, 3·D] view in bf16).
  const memory::desc heads_md = desc(heads, low, {N * D, d, D, 1});
  const memory::desc k_t_md = desc(heads_t, low, {N * D, d, 1, D});
  const memory::desc context_md = desc(heads, low, {N * D, d, D, 1});
  for (int64_t g = 0; g < B; g += G) {
    p->q.push_back(view(eng, heads_md, p->qkv, g * N * D));
    p->k_t.push_back(view(eng, k_t_md, p->qkv, M * D + g * N * D));
    p->v.push_back(view(eng, heads_md, p->qkv, 2 * M * D + g * N * D));
    p->context_heads.push_back(view(eng, context_md, p->context, g * N * D));
  }
  p->scores = memory(desc({G, H, N, N}, dt::f32), eng);
  p->probs = bf16 ? memory(desc({G, H, N, N}, low), eng) : p->scores;
  p->hidden = memory(desc({M, F}, low), eng);
  p->cls = memory(desc({B, D}, dt::f32), eng);
  p->cls_normed = memory(desc({B, D}, dt::f32), eng);
  p->logits = Tensor(eng, {B, K});

  // Primitives.
  if (bf16) {
    p->input_to_low = dnnl::reorder(p->input, p->input_low);
    p->normed_to_low = dnnl::reorder(p->normed, p->normed_low);
  }
  const auto patch_pd = dense(eng, p->input_low.get_desc(), CPP, D, low, desc({B * L, D}, dt::f32));
  p->patch_embed = dnnl::matmul(patch_pd);
  p->add_pos = dnnl::binary({{dnnl::algorithm::binary_add, p->patch_tokens.get_desc(),
                              desc({1, L, D}, dt::f32), p->patch_tokens.get_desc()},
                             eng});
  p->place_patches = dnnl::reorder(p->patch_tokens, p->x_patch_rows);
  p->cls_table = memory(desc({B, D}, dt::f32), eng);
  p->place_cls = dnnl::reorder(p->cls_table, p->x_cls_rows);

  p->norm_tokens = layer_norm(eng, M, D);
  // One D -> D primitive run three times (q, k, v) with the thirds of the qkv weight.
  const auto qkv_pd = dense(eng, p->normed_low.get_desc(), D, D, low, desc({M, D}, low));
  p->qkv_mm = dnnl::matmul(qkv_pd);
  // No 1/√d here: pack() folds it into q's weight and bias (a scale attribute cost this
  // matmul 20 %).
  p->scores_mm = dnnl::matmul({{heads_md, k_t_md, p->scores.get_desc()}, eng});
  p->softmax = dnnl::softmax_v2_forward(
      {{dnnl::prop_kind::forward_inference, dnnl::algorithm::softmax_accurate, p->scores.get_desc(),
        p->probs.get_desc(), 3},
       eng});
  p->context_mm = dnnl::matmul({{p->probs.get_desc(), heads_md, context_md}, eng});
  // x += proj(...) and x += fc2(...) in place: the sum post-op reads the residual from dst,
  // cheaper than a binary add from a second buffer (about 10 % faster fc2 here).
  dnnl::post_ops add_residual;
  add_residual.append_sum(1.0f);
  const auto proj_pd =
      dense(eng, p->context.get_desc(), D, D, low, desc({M, D}, dt::f32), add_residual);
  p->proj_mm = dnnl::matmul(proj_pd);
  dnnl::post_ops gelu;
  gelu.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
  const auto fc1_pd = dense(eng, p->normed_low.get_desc(), D, F, low, p->hidden.get_desc(), gelu);
  p->fc1_mm = dnnl::matmul(fc1_pd);
  const auto fc2_pd =
      dense(eng, p->hidden.get_desc(), F, D, low, desc({M, D}, dt::f32), add_residual);
  p->fc2_mm = dnnl::matmul(fc2_pd);

  p->take_cls = dnnl::reorder(p->x_cls_rows, p->cls);
  p->norm_cls = layer_norm(eng, B, D);
  const auto head_pd = dense(eng, desc({B, D}, dt::f32), D, K, dt::f32, desc({B, K}, dt::f32));
  p->head_mm = dnnl::matmul(head_pd);

  // Packed weights, filled by pack(); the parameters read in place.
  p->weights =
      &packed_weights(ctx, {patch_pd.weights_desc(), qkv_pd.weights_desc(), proj_pd.weights_desc(),
                            fc1_pd.weights_desc(), fc2_pd.weights_desc(), head_pd.weights_desc()});
  p->patch_bias = over_param(eng, store_, "patch_embed.proj.bias", {1, D});
  p->pos_rows = over_param(eng, store_, "pos_embed", {1, L, D}, D);
  if (!c.qkv_bias) {  // timm's qkv_bias=False: a zero bias keeps one primitive for both cases
    p->zero_qkv_bias = memory(desc({1, D}, dt::f32), eng);
    std::fill_n(static_cast<float*>(p->zero_qkv_bias.get_data_handle()), D, 0.0f);
  }
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    const auto qkv_bias = [&](int64_t t) {
      if (t == 0) return p->weights->blocks[i].q_bias;
      return c.qkv_bias ? over_param(eng, store_, b + "attn.qkv.bias", {1, D}, t * D)
                        : p->zero_qkv_bias;
    };
    p->params.push_back({over_param(eng, store_, b + "norm1.weight", {D}),
                         over_param(eng, store_, b + "norm1.bias", {D}),
                         {qkv_bias(0), qkv_bias(1), qkv_bias(2)},
                         over_param(eng, store_, b + "attn.proj.bias", {1, D}),
                         over_param(eng, store_, b + "norm2.weight", {D}),
                         over_param(eng, store_, b + "norm2.bias", {D}),
                         over_param(eng, store_, b + "mlp.fc1.bias", {1, F}),
                         over_param(eng, store_, b + "mlp.fc2.bias", {1, D})});
  }
  p->norm_weight = over_param(eng, store_, "norm.weight", {D});
  p->norm_bias = over_param(eng, store_, "norm.bias", {D});
  p->head_bias = over_param(eng, store_, "head.bias", {1, K});
  return p;
}

VitInference::PackedWeights& VitInference::packed_weights(
    Context& ctx, const std::vector<memory::desc>& layouts) {
  for (const auto& w : packed_)
    if (w->layouts == layouts) return *w;
  auto w = std::make_unique<PackedWeights>();
  w->layouts = layouts;
  w->patch_weight = memory(layouts[0], ctx.eng);
  for (int64_t i = 0; i < config_.depth; ++i)
    w->blocks.push_back(
        {{memory(layouts[1], ctx.eng), memory(layouts[1], ctx.eng), memory(layouts[1], ctx.eng)},
         memory(desc({1, config_.embed_dim}, dt::f32), ctx.eng),
         memory(layouts[2], ctx.eng),
         memory(layouts[3], ctx.eng),
         memory(layouts[4], ctx.eng)});
  w->head_weight = memory(layouts[5], ctx.eng);
  packed_.push_back(std::move(w));
  return *packed_.back();
}

int64_t VitInference::packed_bytes() const {
  int64_t bytes = 0;
  for (const auto& w : packed_) {
    bytes += int64_t(w->patch_weight.get_desc().get_size() + w->head_weight.get_desc().get_size());
    for (const BlockWeights& b : w->blocks) {
      for (const memory& m : {b.qkv[0], b.qkv[1], b.qkv[2], b.q_bias, b.proj, b.fc1, b.fc2})
        bytes += int64_t(m.get_desc().get_size());
    }
  }
  return bytes;
}

void VitInference::pack(Context& ctx, PackedWeights& w) const {
  const VitConfig& c = config_;
  const int64_t D = c.embed_dim, F = c.mlp_hidden(), K = c.num_classes;
  // torch's Linear weight [out, in] is Wᵀ [in, out] with swapped strides; a reorder converts
  // it to the packed layout (and to bf16).
  // `rows` > 1 packs rows [row·out, (row+1)·out) of a weight with rows·out output features;
  // the values are multiplied by `scale` on the way.
  auto pack_linear = [&](const std::string& name, int64_t in, int64_t out, memory& packed,
                         int64_t row = 0, int64_t rows = 1, float scale = 1.0f) {
    const engine::Parameter* p = store_.find(name);
    engine::require(p != nullptr && p->value.numel() == rows * in * out,
                    "VitInference: no weight '" + name + "' of " + std::to_string(rows * in * out) +
                        " elements");
    memory src(desc({in, out}, dt::f32, {1, in}), ctx.eng, p->value.data() + row * out * in);
    dnnl::primitive_attr attr;
    attr.set_output_scales(0, {scale});
    dnnl::reorder(dnnl::reorder::primitive_desc(src, packed, attr)).execute(ctx.strm, src, packed);
  };
  // Attention's 1/√d, applied to q once here instead of to the scores on every call:
  // (x·W_q + b_q)/√d = x·(W_q/√d) + b_q/√d, exact when √d is a power of two (d = 64).
  const float q_scale = 1.0f / std::sqrt(float(c.head_dim()));
  pack_linear("patch_embed.proj.weight", c.patch_dim(), D, w.patch_weight);
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    BlockWeights& block = w.blocks[i];
    for (int64_t t = 0; t < 3; ++t)
      pack_linear(b + "attn.qkv.weight", D, D, block.qkv[t], t, 3, t == 0 ? q_scale : 1.0f);
    float* q_bias = static_cast<float*>(block.q_bias.get_data_handle());
    const engine::Parameter* qkv_bias = store_.find(b + "attn.qkv.bias");
    for (int64_t j = 0; j < D; ++j)
      q_bias[j] = c.qkv_bias && qkv_bias != nullptr ? qkv_bias->value[j] * q_scale : 0.0f;
    pack_linear(b + "attn.proj.weight", D, D, block.proj);
    pack_linear(b + "mlp.fc1.weight", D, F, block.fc1);
    pack_linear(b + "mlp.fc2.weight", F, D, block.fc2);
  }
  pack_linear("head.weight", D, K, w.head_weight);
  ctx.wait();
  w.version = store_.version();
}

// Row 0 of every image: timm prepends cls_token, then adds pos_embed[0].
void VitInference::fill_cls_table(Plan& p) const {
  const int64_t D = config_.embed_dim;
  const float* cls = store_.find("cls_token")->value.data();
  const float* pos = store_.find("pos_embed")->value.data();
  float* table = static_cast<float*>(p.cls_table.get_data_handle());
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t j = 0; j < D; ++j) table[b * D + j] = cls[j] + pos[j];
  p.cls_table_version = store_.version();
}

// Activations of one chunk: at most 8 MB, a quarter of the L3 here. ViT-Ti/16 at batch 32 ran
// 8-10 % faster in chunks of 4 (f32) or 8 (bf16) images than all 32 at once, whose 30-50 MB
// of activations cannot stay in the L3 from one matmul to the next; ViT-S/16, whose matmuls
// are bigger, gained 1-2 %.
int64_t VitInference::chunk_images() const {
  const VitConfig& c = config_;
  const bool bf16 = precision == engine::Precision::bf16;
  const int64_t low = bf16 ? 2 : 4, D = c.embed_dim;
  // x and normed (f32), normed_low (bf16 only), q, k, v, context and hidden (low), per token.
  const int64_t per_token = 8 * D + (bf16 ? 2 * D : 0) + low * (4 * D + c.mlp_hidden());
  const int64_t fit = (int64_t(8) << 20) / (per_token * c.num_tokens());
  int64_t chunk = 1;  // a power of two: 4 or 8 divide the usual batch sizes
  while (chunk * 2 <= fit) chunk *= 2;
  return chunk;
}

const Tensor& VitInference::forward(Context& ctx, const Tensor& patches) {
  engine::check_same_dims(patches.dims(),
                          {patches.dim(0), config_.num_patches(), config_.patch_dim()},
                          "VitInference", "patches");
  const int64_t B = patches.dim(0), K = config_.num_classes;
  engine::require(B > 0, "VitInference: an empty batch");
  const int64_t per_image = patches.numel() / B;
  if (logits_.empty() || logits_.dim(0) != B) logits_ = Tensor(ctx.eng, {B, K});
  const int64_t chunk = chunk_images();
  for (int64_t b = 0; b < B; b += chunk) {
    const int64_t n = std::min(chunk, B - b);
    Plan& p = plans_.get({n}, [&] { return build(ctx, n); });
    if (p.weights->version != store_.version()) pack(ctx, *p.weights);
    if (p.cls_table_version != store_.version()) fill_cls_table(p);
    run(ctx, p, patches.data() + b * per_image);
    ctx.wait();
    std::copy_n(p.logits.data(), n * K, logits_.data() + b * K);
  }
  return logits_;
}

void VitInference::run(Context& ctx, Plan& p, float* patches) {
  dnnl::stream& s = ctx.strm;
  const bool bf16 = precision == engine::Precision::bf16;

  p.input.set_data_handle(patches);
  if (bf16) p.input_to_low.execute(s, p.input, p.input_low);
  p.patch_embed.execute(s, {{DNNL_ARG_SRC, p.input_low},
                            {DNNL_ARG_WEIGHTS, p.weights->patch_weight},
                            {DNNL_ARG_BIAS, p.patch_bias},
                            {DNNL_ARG_DST, p.patch_out}});
  p.add_pos.execute(s, {{DNNL_ARG_SRC_0, p.patch_tokens},
                        {DNNL_ARG_SRC_1, p.pos_rows},
                        {DNNL_ARG_DST, p.patch_tokens}});
  p.place_patches.execute(s, p.patch_tokens, p.x_patch_rows);
  p.place_cls.execute(s, p.cls_table, p.x_cls_rows);

  for (size_t i = 0; i < p.params.size(); ++i) {
    const BlockWeights& w = p.weights->blocks[i];
    const BlockParams& a = p.params[i];
    // x += proj(attention(norm1(x)))
    p.norm_tokens.execute(s, {{DNNL_ARG_SRC, p.x},
                              {DNNL_ARG_DST, p.normed},
                              {DNNL_ARG_SCALE, a.norm1_weight},
                              {DNNL_ARG_SHIFT, a.norm1_bias}});
    if (bf16) p.normed_to_low.execute(s, p.normed, p.normed_low);
    for (int t = 0; t < 3; ++t)
      p.qkv_mm.execute(s, {{DNNL_ARG_SRC, p.normed_low},
                           {DNNL_ARG_WEIGHTS, w.qkv[t]},
                           {DNNL_ARG_BIAS, a.qkv_bias[t]},
                           {DNNL_ARG_DST, p.qkv_parts[t]}});
    for (size_t g = 0; g < p.q.size(); ++g) {
      p.scores_mm.execute(
          s, {{DNNL_ARG_SRC, p.q[g]}, {DNNL_ARG_WEIGHTS, p.k_t[g]}, {DNNL_ARG_DST, p.scores}});
      p.softmax.execute(s, {{DNNL_ARG_SRC, p.scores}, {DNNL_ARG_DST, p.probs}});
      p.context_mm.execute(s, {{DNNL_ARG_SRC, p.probs},
                               {DNNL_ARG_WEIGHTS, p.v[g]},
                               {DNNL_ARG_DST, p.context_heads[g]}});
    }
    p.proj_mm.execute(s, {{DNNL_ARG_SRC, p.context},
                          {DNNL_ARG_WEIGHTS, w.proj},
                          {DNNL_ARG_BIAS, a.proj_bias},
                          {DNNL_ARG_DST, p.x}});
    // x += fc2(gelu(fc1(norm2(x))))
    p.norm_tokens.execute(s, {{DNNL_ARG_SRC, p.x},
                              {DNNL_ARG_DST, p.normed},
                              {DNNL_ARG_SCALE, a.norm2_weight},
                              {DNNL_ARG_SHIFT, a.norm2_bias}});
    if (bf16) p.normed_to_low.execute(s, p.normed, p.normed_low);
    p.fc1_mm.execute(s, {{DNNL_ARG_SRC, p.normed_low},
                         {DNNL_ARG_WEIGHTS, w.fc1},
                         {DNNL_ARG_BIAS, a.fc1_bias},
                         {DNNL_ARG_DST, p.hidden}});
    p.fc2_mm.execute(s, {{DNNL_ARG_SRC, p.hidden},
                         {DNNL_ARG_WEIGHTS, w.fc2},
                         {DNNL_ARG_BIAS, a.fc2_bias},
                         {DNNL_ARG_DST, p.x}});
  }
  // Only the cls rows reach the head, so only they are normalized (LayerNorm is per row).
  p.take_cls.execute(s, p.x_cls_rows, p.cls);
  p.norm_cls.execute(s, {{DNNL_ARG_SRC, p.cls},
                         {DNNL_ARG_DST, p.cls_normed},
                         {DNNL_ARG_SCALE, p.norm_weight},
                         {DNNL_ARG_SHIFT, p.norm_bias}});
  p.head_mm.execute(s, {{DNNL_ARG_SRC, p.cls_normed},
                        {DNNL_ARG_WEIGHTS, p.weights->head_weight},
                        {DNNL_ARG_BIAS, p.head_bias},
                        {DNNL_ARG_DST, p.logits.mem()}});
}

}  // namespace vit
