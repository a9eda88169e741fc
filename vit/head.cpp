#include "vit/head.hpp"

namespace vit {

using dnnl::memory;
using dt = memory::data_type;
using engine::fused_desc;
using engine::fused_view;

// Parameters in timm's state-dict order: fc_norm, head, head_dist; CCT's attention_pool first.
Head::Head(ParameterStore& store, const VitConfig& c)
    : avg(c.global_pool == "avg"),
      seq(c.global_pool == "seq"),
      num_prefix(c.num_prefix_tokens()),
      embed_dim(c.embed_dim),
      head_drop(static_cast<float>(c.drop_rate)) {
  // CCT's Linear has a bias, but a softmax ignores a shift of all its inputs: its gradient is
  // always zero, so it is left out.
  if (seq) attention_pool.emplace(store, "attention_pool", c.embed_dim, 1, /*bias=*/false);
  if (c.fc_norm) fc_norm.emplace(store, "fc_norm", c.embed_dim, static_cast<float>(c.norm_eps));
  if (c.num_classes > 0) head.emplace(store, "head", c.embed_dim, c.num_classes);
  if (c.num_classes > 0 && c.distilled)
    head_dist.emplace(store, "head_dist", c.embed_dim, c.num_classes);
}

void Head::init_weights(Context& ctx) {
  if (attention_pool) init_linear(ctx, *attention_pool);  // CCT's: trunc_normal(0.02)
  if (fc_norm) fc_norm->reset_parameters();
  if (head) init_linear(ctx, *head);
  if (head_dist) init_linear(ctx, *head_dist);
}

const Tensor& Head::forward(Context& ctx, const Tensor& features) {
  const int64_t B = features.dim(0), N = features.dim(1), D = embed_dim, P = num_prefix, L = N - P;
  Buffers& buf = buffers_.get(features.dims(), [&] {
    auto b = std::make_unique<Buffers>();
    b->pooled = Tensor(ctx.eng, {B, D});
    b->diff_features = Tensor(ctx.eng, {B, N, D});  // rows not pooled stay zero
    if (avg || seq) b->patch_rows = Tensor(ctx.eng, {B, 1, L, D});
    if (seq) {
      b->diff_weights = Tensor(ctx.eng, {B, L});
      b->diff_rows = Tensor(ctx.eng, {B, L, D});
    }
    if (head_dist) b->pooled_dist = Tensor(ctx.eng, {B, D});
    return b;
  });
  if (head_dist) {  // timm's VisionTransformerDistilled: (head(x[:, 0]) + head_dist(x[:, 1])) / 2
    copy_(ctx, View{features.data(), {B, D}, {N * D, 1}}, buf.pooled.as_view());
    copy_(ctx, View{features.data() + D, {B, D}, {N * D, 1}}, buf.pooled_dist.as_view());
    const Tensor& sum = sum_heads_.forward(ctx, head->forward(ctx, buf.pooled),
                                           head_dist->forward(ctx, buf.pooled_dist));
    return halve_.forward(ctx, sum);
  }
  const Tensor* pooled = &buf.pooled;
  if (avg || seq)
    copy_(ctx, View{features.data() + P * D, {B, L, D}, {N * D, D, 1}},
          View{buf.patch_rows.data(), {B, L, D}, {L * D, D, 1}});
  if (avg) {                                       // timm's x[:, num_prefix_tokens:].mean(1)
    pooled = &pool_.forward(ctx, buf.patch_rows);  // [B, 1, 1, D]
  } else if (seq) {  // CCT's softmax(attention_pool(x), dim=1)ᵀ · x over the patch rows
    const Tensor& scores = attention_pool->forward(ctx, buf.patch_rows.reshaped({B * L, D}));
    const Tensor& weights = seq_softmax_.forward(ctx, scores.reshaped({B, L}));
    pooled = &seq_sum_.forward(ctx, View{weights.data(), {B, 1, L}, {L, L, 1}},
                               View{buf.patch_rows.data(), {B, L, D}, {L * D, D, 1}});
  } else {  // timm's x[:, 0]
    copy_(ctx, View{features.data(), {B, D}, {N * D, 1}}, buf.pooled.as_view());
  }
  buf.flat = pooled->reshaped({B, D});
  const Tensor& normed = fc_norm ? fc_norm->forward(ctx, buf.flat) : buf.flat;
  if (!head) return normed;
  return head->forward(ctx, head_drop.forward(ctx, normed));
}

const Tensor& Head::backward(Context& ctx, const Tensor& diff_logits) {
  Buffers& buf = buffers_.current("Head");
  const int64_t B = diff_logits.dim(0), N = buf.diff_features.dim(1), D = embed_dim, P = num_prefix,
                L = N - P;
  if (head_dist) {
    const Tensor& d_each = halve_.backward(ctx, diff_logits);
    copy_(ctx, head->backward(ctx, d_each).as_view(),
          View{buf.diff_features.data(), {B, D}, {N * D, 1}});
    copy_(ctx, head_dist->backward(ctx, d_each).as_view(),
          View{buf.diff_features.data() + D, {B, D}, {N * D, 1}});
    return buf.diff_features;
  }
  const Tensor* d =
      head ? &head_drop.backward(ctx, head->backward(ctx, diff_logits)) : &diff_logits;
  if (fc_norm) d = &fc_norm->backward(ctx, *d);
  const Tensor* d_rows = nullptr;  // [B, L, D] of the patch rows
  if (avg) {
    d_rows = &pool_.backward(ctx, d->reshaped({B, 1, 1, D}));
  } else if (seq) {
    // The rows reach pooled twice: weighted directly, and through their scores.
    seq_sum_.backward(ctx, d->reshaped({B, 1, D}),
                      View{buf.diff_weights.data(), {B, 1, L}, {L, L, 1}},
                      View{buf.diff_rows.data(), {B, L, D}, {L * D, D, 1}});
    const Tensor& d_scores = seq_softmax_.backward(ctx, buf.diff_weights);
    const Tensor& d_scored = attention_pool->backward(ctx, d_scores.reshaped({B * L, 1}));
    d_rows = &seq_diff_sum_.forward(ctx, buf.diff_rows, d_scored.reshaped({B, L, D}));
  }
  if (d_rows) {
    copy_(ctx, View{d_rows->data(), {B, L, D}, {L * D, D, 1}},
          View{buf.diff_features.data() + P * D, {B, L, D}, {N * D, D, 1}});
  } else {
    copy_(ctx, d->as_view(), View{buf.diff_features.data(), {B, D}, {N * D, 1}});
  }
  return buf.diff_features;
}

std::unique_ptr<Head::Fused> Head::fused(FusedBuild& f, const memory& x, int64_t tokens,
                                         const engine::LayerNorm* norm) const {
  const dnnl::engine& eng = f.ctx.eng;
  const int64_t B = f.images, N = tokens, D = embed_dim, P = num_prefix, L = N - P;
  const int64_t rows = head_dist ? 2 : 1;  // pooled rows per image
  auto p = std::make_unique<Fused>();
  p->x = x;
  p->pooled = f.buffer("head.pooled", fused_desc({B * rows, D}, dt::f32));
  if (avg || seq) {
    // Normalize every row, make the patch rows dense, average them (or weigh them).
    memory src = x;
    if (norm) {
      p->normed = f.buffer("tokens.normed", fused_desc({B * N, D}, dt::f32));
      p->norm_all = norm->fused(f, B * N);
      src = p->normed;
    }
    p->rows_src = fused_view(eng, fused_desc({B, L, D}, dt::f32, {N * D, D, 1}), src, P * D);
    p->rows = f.buffer("head.patch_rows", fused_desc({B, L, D}, dt::f32));
  }
  if (seq) {
    p->scores = f.buffer("head.seq_scores", fused_desc({B, L}, dt::f32));
    p->weights = f.buffer("head.seq_weights", fused_desc({B, L}, dt::f32));
    // Views of the same buffers under the shapes each primitive sees.
    p->rows_flat = fused_view(eng, fused_desc({B * L, D}, dt::f32), p->rows);
    p->scores_flat = fused_view(eng, fused_desc({B * L, 1}, dt::f32), p->scores);
    p->weights_rows = fused_view(eng, fused_desc({B, 1, L}, dt::f32), p->weights);
    p->pooled_rows = fused_view(eng, fused_desc({B, 1, D}, dt::f32), p->pooled);
    p->score = attention_pool->fused(f, p->rows_flat.get_desc(), p->scores_flat.get_desc());
    p->softmax = dnnl::softmax_v2_forward(
        {{dnnl::prop_kind::forward_inference, dnnl::algorithm::softmax_accurate,
          p->scores.get_desc(), p->weights.get_desc(), 1},
         eng});
    p->weighted_sum = f.matmul(
        {{p->weights_rows.get_desc(), p->rows.get_desc(), p->pooled_rows.get_desc()}, eng});
  } else if (avg) {
    const memory::desc rows_md({B, D, 1, L}, dt::f32, memory::format_tag::nhwc);
    const memory::desc pooled_md({B, D, 1, 1}, dt::f32, memory::format_tag::nhwc);
    // The dense patch rows read as an NHWC image of 1 × L pixels with D channels.
    p->pool_src = memory(rows_md, eng, p->rows.get_data_handle());
    p->pool_dst = memory(pooled_md, eng, p->pooled.get_data_handle());
    p->pool = dnnl::pooling_forward({{dnnl::prop_kind::forward_inference,
                                      dnnl::algorithm::pooling_avg_exclude_padding,
                                      rows_md,
                                      pooled_md,
                                      {1, 1},
                                      {1, L},
                                      {0, 0},
                                      {0, 0}},
                                     eng});
  } else {
    // Take the cls rows (and the dist rows after them), then normalize only those.
    p->rows_src = fused_view(eng, fused_desc({B, rows, D}, dt::f32, {N * D, D, 1}), x);
    p->rows = memory(fused_desc({B, rows, D}, dt::f32), eng, p->pooled.get_data_handle());
    if (norm) p->norm_pooled = norm->fused(f, B * rows);
  }
  p->take = dnnl::reorder(p->rows_src, p->rows);
  if (fc_norm) p->norm_pooled = fc_norm->fused(f, B);
  p->pooled_normed = p->norm_pooled
                         ? f.buffer("head.pooled_normed", fused_desc({B * rows, D}, dt::f32))
                         : p->pooled;
  if (!head) {
    p->logits = p->pooled_normed;
    return p;
  }
  const int64_t K = head->out_features;
  p->logits = f.buffer("head.logits", fused_desc({B, K}, dt::f32));
  const memory::desc head_src_md = fused_desc({B, D}, dt::f32, {rows * D, 1});
  p->head_src = fused_view(eng, head_src_md, p->pooled_normed);
  if (head_dist) {
    // logits = head/2 + head_dist/2, each half folded into its packed weights.
    p->dist_src = fused_view(eng, head_src_md, p->pooled_normed, D);
    dnnl::post_ops add;
    add.append_sum(1.0f);
    p->classifier = head->fused(f, head_src_md, p->logits.get_desc(), {}, 0, -1, 0.5f);
    p->classifier_dist = head_dist->fused(f, head_src_md, p->logits.get_desc(), add, 0, -1, 0.5f);
  } else {
    p->classifier = head->fused(f, head_src_md, p->logits.get_desc());
  }
  return p;
}

void Head::Fused::run(dnnl::stream& s) {
  if (norm_all) norm_all->run(s, x, normed);
  take.execute(s, rows_src, rows);
  if (pool) pool.execute(s, {{DNNL_ARG_SRC, pool_src}, {DNNL_ARG_DST, pool_dst}});
  if (score) {
    score->run(s, rows_flat, scores_flat);
    softmax.execute(s, {{DNNL_ARG_SRC, scores}, {DNNL_ARG_DST, weights}});
    weighted_sum.execute(
        s, {{DNNL_ARG_SRC, weights_rows}, {DNNL_ARG_WEIGHTS, rows}, {DNNL_ARG_DST, pooled_rows}});
  }
  if (norm_pooled) norm_pooled->run(s, pooled, pooled_normed);
  if (classifier) classifier->run(s, head_src, logits);
  if (classifier_dist) classifier_dist->run(s, dist_src, logits);
}

}  // namespace vit
