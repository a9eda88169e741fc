#include "vit/multi_head_attention.hpp"

#include <cmath>
#include <cstring>

namespace vit {

using dnnl::memory;
using dt = memory::data_type;
using engine::fused_desc;
using engine::fused_view;

MultiHeadAttention::MultiHeadAttention(ParameterStore& store, const std::string& prefix,
                                       const VitConfig& c)
    : config(c),
      num_heads(c.num_heads),
      head_dim(c.head_dim()),
      qkv(store, prefix + ".qkv", c.embed_dim, 3 * c.embed_dim, c.qkv_bias),
      q_norm(c.qk_norm ? std::optional<engine::LayerNorm>(std::in_place, store, prefix + ".q_norm",
                                                          c.head_dim(), float(c.norm_eps))
                       : std::nullopt),
      k_norm(c.qk_norm ? std::optional<engine::LayerNorm>(std::in_place, store, prefix + ".k_norm",
                                                          c.head_dim(), float(c.norm_eps))
                       : std::nullopt),
      scores_mm(score_scale(c)),
      additive(c.attn_score == "additive"
                   ? std::optional<AdditiveScores>(std::in_place, store, prefix, c, score_scale(c))
                   : std::nullopt),
      lowrank_k(c.attn_lowrank > 0
                    ? std::optional<engine::Linear>(std::in_place, store, prefix + ".lowrank_k",
                                                    c.num_tokens(), c.attn_lowrank, /*bias=*/false)
                    : std::nullopt),
      lowrank_v(c.attn_lowrank > 0
                    ? std::optional<engine::Linear>(std::in_place, store, prefix + ".lowrank_v",
                                                    c.num_tokens(), c.attn_lowrank, /*bias=*/false)
                    : std::nullopt),
      keys(c.attn_lowrank > 0 ? c.attn_lowrank : c.num_tokens()),
      favor(c.attn_features > 0 ? std::optional<FavorAttention>(std::in_place, store, prefix, c)
                                : std::nullopt),
      halo(HaloAttention::used(c) ? std::optional<HaloAttention>(std::in_place, c) : std::nullopt),
      bias(halo ? std::vector<float>() : score_bias(c)),
      norm(c.attn_norm),
      attn_drop(static_cast<float>(c.attn_drop_rate)),
      proj(store, prefix + ".proj", c.embed_dim, c.embed_dim),
      proj_drop(static_cast<float>(c.drop_rate)) {}

AttentionTraits MultiHeadAttention::traits() {
  AttentionTraits t;
  t.flops = [](const VitConfig& c) {
    // qkv and proj, then q·kᵀ (or additive's W_q q, W_k k and wᵀ tanh) and probs·v over every
    // key (the masked window computes all N of them).
    const double N = double(c.num_tokens()), D = double(c.embed_dim), A = double(c.additive_dim());
    const double H = double(c.num_heads), d = double(c.head_dim());
    // Linformer: E·k and F·v, then scores and probs·v over its K keys.
    const double Nk = double(c.attn_lowrank > 0 ? c.attn_lowrank : c.num_tokens());
    const double projections = c.attn_lowrank > 0 ? 2 * Nk * N * D : 0.0;
    // Blocks: the padded grid's queries against their halo and the prefix, the prefix
    // queries against all N.
    if (HaloAttention::used(c))
      return 2.0 * (N * 4 * D * D + 2 * HaloAttention::scored_pairs(c) * D);
    const double scores =
        c.attn_score == "additive" ? 2 * N * H * A * d + N * Nk * H * A : N * Nk * D;
    return 2.0 * (N * 4 * D * D + projections + scores + N * Nk * D);
  };
  return t;
}

void MultiHeadAttention::begin_step(int64_t step) {
  if (!favor || config.attn_redraw == 0 || step == 0 || step % config.attn_redraw != 0) return;
  // New features from a seed that the step and the current features fix, so that a resumed run
  // (which restores both) draws the same ones as an uninterrupted run.
  uint64_t seed = 0x9e3779b97f4a7c15ull * uint64_t(step + 1);
  const float* w = favor->w->value.data();
  for (int64_t i = 0; i < favor->w->value.numel(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, w + i, sizeof bits);
    seed = (seed ^ bits) * 0x100000001b3ull;
  }
  std::mt19937_64 rng(seed);
  favor->redraw(rng);
}

void MultiHeadAttention::set_precision(engine::Precision p) {
  qkv.set_precision(p);
  if (lowrank_k) lowrank_k->set_precision(p), lowrank_v->set_precision(p);
  proj.set_precision(p);
}

void MultiHeadAttention::score_backward(Context& ctx, const Tensor& diff_scores, const View& diff_q,
                                        const View& diff_k) {
  if (additive)
    additive->backward(ctx, diff_scores, diff_q, diff_k);
  else
    scores_mm.backward(ctx, diff_scores, diff_q, diff_k.transposed());
}

void MultiHeadAttention::init_weights(Context& ctx) {
  init_linear(ctx, qkv);
  if (additive) additive->init_weights(ctx);
  if (favor) favor->redraw(ctx.rng);
  if (lowrank_k)  // Linformer's: uniform in ±1/√K
    for (engine::Linear* l : {&*lowrank_k, &*lowrank_v}) {
      const float bound = 1.0f / std::sqrt(float(l->out_features));
      engine::uniform(ctx, l->weight->value, -bound, bound);
    }
  if (q_norm) q_norm->reset_parameters(), k_norm->reset_parameters();
  init_linear(ctx, proj);
}

void MultiHeadAttention::share_gradients(const std::string& slot) {
  grad_slot = slot;
  qkv.grad_slot = slot + ".qkv.diff_src";
  norm.share_gradients(slot + ".norm");
  attn_drop.grad_slot = slot + ".attn_drop";
  proj.grad_slot = slot + ".proj.diff_src";
  proj_drop.grad_slot = slot + ".proj_drop";
  if (q_norm) q_norm->grad_slot = slot + ".q_norm", k_norm->grad_slot = slot + ".k_norm";
  if (lowrank_k)
    lowrank_k->grad_slot = slot + ".lowrank_k", lowrank_v->grad_slot = slot + ".lowrank_v";
  if (halo) halo->share_gradients(slot);
}

View MultiHeadAttention::tokens_heads(float* data, int64_t B, int64_t N) const {
  const int64_t D = num_heads * head_dim;
  return View{data, {B, num_heads, N, head_dim}, {N * D, head_dim, D, 1}};
}

namespace {

// A [B, H, N, d] view of heads (any batch and token strides, heads d apart) as [B, N, D].
View heads_as_tokens(const View& h) {
  const int64_t D = h.dims[1] * h.dims[3];
  return View{h.data, {h.dims[0], h.dims[2], D}, {h.strides[0], h.strides[2], 1}};
}

// A dense [B, D, N] buffer (one row per channel) seen as [B, N, D].
View channels_as_tokens(float* data, int64_t B, int64_t N, int64_t D) {
  return View{data, {B, N, D}, {D * N, 1, N}};
}

// Linformer's projection [B·D, K] seen as heads [B, H, K, d].
View projected_heads(float* data, int64_t B, int64_t H, int64_t K, int64_t d) {
  return View{data, {B, H, K, d}, {H * d * K, d * K, 1, K}};
}

}  // namespace

View MultiHeadAttention::head(const Tensor& qkv_out, int which) const {
  const int64_t B = qkv_out.dim(0), N = qkv_out.dim(1), D = num_heads * head_dim;
  return View{
      qkv_out.data() + which * D, {B, num_heads, N, head_dim}, {N * 3 * D, head_dim, 3 * D, 1}};
}

const Tensor& MultiHeadAttention::forward(Context& ctx, const Tensor& x) {
  const int64_t B = x.dim(0), N = x.dim(1), H = num_heads, d = head_dim, D = H * d;
  Buffers& buf = buffers_.get(x.dims(), [&] {
    auto b = std::make_unique<Buffers>();
    b->merged = Tensor(ctx.eng, {B, N, D});
    const std::string& s = grad_slot;
    b->diff_heads = engine::gradient_buffer(ctx, s.empty() ? s : s + ".heads", {B, H, N, d});
    if (!favor && !halo)  // Performer and the halo blocks never hold N × N
      b->diff_probs = engine::gradient_buffer(ctx, s.empty() ? s : s + ".probs", {B, H, N, keys});
    b->diff_qkv = engine::gradient_buffer(ctx, s.empty() ? s : s + ".qkv", {B, N, 3 * D});
    if (q_norm)
      for (int i = 0; i < 2; ++i) {
        b->qk_raw[i] = Tensor(ctx.eng, {B, N, H, d});
        b->diff_qk_normed[i] = engine::gradient_buffer(
            ctx, s.empty() ? s : s + ".qk_normed" + std::to_string(i), {B, N, H, d});
      }
    if (lowrank_k)
      for (int i = 0; i < 2; ++i) {
        b->channels[i] = Tensor(ctx.eng, {B * D, N});
        b->diff_projected[i] = engine::gradient_buffer(
            ctx, s.empty() ? s : s + ".projected" + std::to_string(i), {B * D, keys});
      }
    return b;
  });
  const Tensor& qkv_out = qkv.forward(ctx, x);
  View q = head(qkv_out, 0), k = head(qkv_out, 1), v = head(qkv_out, 2);
  if (q_norm) {  // timm's q_norm(q), k_norm(k): per head, over d
    View* parts[2] = {&q, &k};
    engine::LayerNorm* norms[2] = {&*q_norm, &*k_norm};
    for (int i = 0; i < 2; ++i) {
      copy_qk_(ctx, *parts[i], tokens_heads(buf.qk_raw[i].data(), B, N));
      *parts[i] = tokens_heads(norms[i]->forward(ctx, buf.qk_raw[i]).data(), B, N);
    }
  }
  if (lowrank_k) {  // Linformer: each channel's sequence of keys (values) times Eᵀ (Fᵀ)
    View* parts[2] = {&k, &v};
    engine::Linear* projections[2] = {&*lowrank_k, &*lowrank_v};
    for (int i = 0; i < 2; ++i) {
      to_channels_(ctx, heads_as_tokens(*parts[i]),
                   channels_as_tokens(buf.channels[i].data(), B, N, D));
      *parts[i] =
          projected_heads(projections[i]->forward(ctx, buf.channels[i]).data(), B, H, keys, d);
    }
  }
  const Tensor& heads = favor  ? favor->forward(ctx, q, k, v)
                        : halo ? halo->forward(ctx, q, k, v)
                               : mix(ctx, q, k, v, B, N);
  merge(ctx, heads.as_view(), View{buf.merged.data(), {B, H, N, d}, {N * D, d, D, 1}});
  return proj_drop.forward(ctx, proj.forward(ctx, buf.merged));
}

const Tensor& MultiHeadAttention::mix(Context& ctx, const View& q, const View& k, const View& v,
                                      int64_t B, int64_t N) {
  const int64_t H = num_heads, Nk = keys;
  const Tensor* scores =
      additive ? &additive->forward(ctx, q, k) : &scores_mm.forward(ctx, q, k.transposed());
  if (!bias.empty()) {
    if (bias_table_.empty()) {
      bias_table_ = Tensor(ctx.eng, {1, N, Nk});
      std::copy(bias.begin(), bias.end(), bias_table_.data());
    }
    // Its backward is the identity: the bias is a constant.
    scores = &add_bias.forward(ctx, scores->reshaped({B * H, N, Nk}), bias_table_);
  }
  probs_ = &norm.forward(ctx, scores->reshaped({B, H, N, Nk}));
  const Tensor& probs = attn_drop.forward(ctx, *probs_);
  return context_mm.forward(ctx, probs.as_view(), v);
}

const Tensor& MultiHeadAttention::probabilities(Context& ctx) {
  if (favor)
    throw engine::Error(
        "Performer (--attn-features) never forms its attention matrix: it has "
        "no attention probabilities to show");
  if (lowrank_k)
    throw engine::Error(
        "Linformer (--attn-lowrank) attends to projections of the tokens, not "
        "to the tokens: it has no token-to-token attention to show");
  if (halo) return halo->probabilities(ctx);
  engine::require(probs_ != nullptr, "attention probabilities asked for before a forward");
  return *probs_;
}

const Tensor& MultiHeadAttention::backward(Context& ctx, const Tensor& diff_dst) {
  Buffers& buf = buffers_.current("Attention");
  const int64_t B = diff_dst.dim(0), N = diff_dst.dim(1), H = num_heads, d = head_dim, D = H * d;
  const Tensor& diff_merged = proj.backward(ctx, proj_drop.backward(ctx, diff_dst));
  merge(ctx, View{diff_merged.data(), {B, H, N, d}, {N * D, d, D, 1}}, buf.diff_heads.as_view());
  // Where the gradients of q, k and v go: qkv's, or with qk_norm the normed copies' (q, k).
  const View diff_q =
      q_norm ? tokens_heads(buf.diff_qk_normed[0].data(), B, N) : head(buf.diff_qkv, 0);
  const View diff_k =
      q_norm ? tokens_heads(buf.diff_qk_normed[1].data(), B, N) : head(buf.diff_qkv, 1);
  const View diff_v = head(buf.diff_qkv, 2);
  auto projected = [&](int i) {
    return projected_heads(buf.diff_projected[i].data(), B, H, keys, d);
  };
  if (favor) {
    favor->backward(ctx, buf.diff_heads, diff_q, diff_k, diff_v);
  } else if (halo) {
    halo->backward(ctx, buf.diff_heads, diff_q, diff_k, diff_v);
  } else {
    context_mm.backward(ctx, buf.diff_heads, buf.diff_probs.as_view(),
                        lowrank_k ? projected(1) : diff_v);
    const Tensor& diff_scores = norm.backward(ctx, attn_drop.backward(ctx, buf.diff_probs));
    score_backward(ctx, diff_scores, diff_q, lowrank_k ? projected(0) : diff_k);
  }
  if (lowrank_k) {
    engine::Linear* projections[2] = {&*lowrank_k, &*lowrank_v};
    const View* sequences[2] = {&diff_k, &diff_v};
    for (int i = 0; i < 2; ++i) {
      const Tensor& diff_channels = projections[i]->backward(ctx, buf.diff_projected[i]);
      to_channels_(ctx, channels_as_tokens(diff_channels.data(), B, N, D),
                   heads_as_tokens(*sequences[i]));
    }
  }
  if (q_norm) {
    engine::LayerNorm* norms[2] = {&*q_norm, &*k_norm};
    for (int i = 0; i < 2; ++i)
      copy_qk_(ctx, tokens_heads(norms[i]->backward(ctx, buf.diff_qk_normed[i]).data(), B, N),
               head(buf.diff_qkv, i));
  }
  return qkv.backward(ctx, buf.diff_qkv);
}

namespace {

// Images per attention group: the largest divisor of B whose f32 scores fit in about 2 MB, the
// L2 of two cores here (4 images for ViT-Ti/16 at 224: 1-2 % faster than all 32 at once).
int64_t attention_group(int64_t B, int64_t scores_bytes_per_image) {
  const int64_t limit = std::max<int64_t>(1, (int64_t(2) << 20) / scores_bytes_per_image);
  for (int64_t g = std::min(B, limit); g > 1; --g)
    if (B % g == 0) return g;
  return 1;
}

}  // namespace

std::unique_ptr<FusedStep> MultiHeadAttention::fused(FusedBuild& f, const FusedTokens& t) const {
  const dnnl::engine& eng = f.ctx.eng;
  const int64_t B = t.images, N = t.tokens, H = num_heads, d = head_dim, D = H * d, M = B * N;
  if (t.probs_tap && (favor || lowrank_k || halo))
    throw engine::Error(
        "the fused path hands out the probabilities of exact attention only; "
        "this block's attention is " +
        std::string(favor       ? "Performer"
                    : lowrank_k ? "Linformer"
                                : "windowed as halo blocks"));
  const dt low = f.low();
  auto p = std::make_unique<Fused>();
  p->normed = t.normed;
  p->x = t.x;
  const memory qkv_slabs = f.buffer("attn.qkv", fused_desc({3, M, D}, low));
  for (int64_t i = 0; i < 3; ++i)
    p->qkv_parts[i] = fused_view(eng, fused_desc({M, D}, low), qkv_slabs, i * M * D);
  p->context = f.buffer("attn.context", fused_desc({M, D}, low));

  const int64_t Nk = keys, G = attention_group(B, H * N * Nk * int64_t(sizeof(float)));
  const Dims heads = {G, H, N, d}, heads_t = {G, H, d, N};
  // q, k and v each dense [B, N, D]: their head views are the acbd/adbc layouts that the brgemm
  // kernel accepts (1.5× faster than the generic gemm on a strided [B, N, 3·D] view in bf16).
  const memory::desc heads_md = fused_desc(heads, low, {N * D, d, D, 1});
  const memory::desc k_t_md = fused_desc(heads_t, low, {N * D, d, 1, D});
  // Linformer: k and v as one row per channel, [B·D, N], projected to [B·D, K]: E·k read as
  // kᵀ heads [G, H, d, K] (dense), F·v as heads [G, H, K, d].
  memory projected;
  const memory::desc k_t_projected_md = fused_desc({G, H, d, Nk}, low, {H * d * Nk, d * Nk, Nk, 1});
  const memory::desc v_projected_md = fused_desc({G, H, Nk, d}, low, {H * d * Nk, d * Nk, 1, Nk});
  if (lowrank_k) {
    const memory channels = f.buffer("attn.channels", fused_desc({2, B * D, N}, low));
    projected = f.buffer("attn.projected", fused_desc({2, B * D, Nk}, low));
    const memory::desc channels_md = fused_desc({B * D, N}, low);
    const memory::desc projected_md = fused_desc({B * D, Nk}, low);
    p->k_tokens = fused_view(eng, fused_desc({B, N, D}, low), qkv_slabs, M * D);
    p->v_tokens = fused_view(eng, fused_desc({B, N, D}, low), qkv_slabs, 2 * M * D);
    const memory::desc as_tokens = fused_desc({B, N, D}, low, {D * N, 1, N});
    p->k_channels = fused_view(eng, as_tokens, channels);
    p->v_channels = fused_view(eng, as_tokens, channels, B * D * N);
    p->to_channels = dnnl::reorder(p->k_tokens, p->k_channels);
    p->k_rows = fused_view(eng, channels_md, channels);
    p->v_rows = fused_view(eng, channels_md, channels, B * D * N);
    p->k_projected = fused_view(eng, projected_md, projected);
    p->v_projected = fused_view(eng, projected_md, projected, B * D * Nk);
    p->project_k = lowrank_k->fused(f, channels_md, projected_md);
    p->project_v = lowrank_v->fused(f, channels_md, projected_md);
  }
  for (int64_t g = 0; g < B; g += G) {
    p->q_heads.push_back(fused_view(eng, heads_md, qkv_slabs, g * N * D));
    if (lowrank_k) {
      p->k_t.push_back(fused_view(eng, k_t_projected_md, projected, g * D * Nk));
      p->v_heads.push_back(fused_view(eng, v_projected_md, projected, (B + g) * D * Nk));
    } else {
      p->k_t.push_back(fused_view(eng, k_t_md, qkv_slabs, M * D + g * N * D));
      p->v_heads.push_back(fused_view(eng, heads_md, qkv_slabs, 2 * M * D + g * N * D));
    }
    p->context_heads.push_back(fused_view(eng, heads_md, p->context, g * N * D));
  }
  // Softmax reads f32 scores and writes the probabilities in the matmul type; relu and σ are
  // post-ops of the scores matmul, which then writes the probabilities itself. A window's mask
  // is a binary add of its own after the matmul (as a post-op, its broadcast over images and
  // heads sent oneDNN 2.6 to its reference gemm: 150× slower), and then relu and σ follow it
  // as an eltwise primitive on the f32 scores.
  const bool softmax = norm.needs_softmax(), masked = config.attn_window > 0;
  const bool f32_scores = softmax || masked;
  if (!favor && !halo) {  // Performer and the halo blocks never hold N × N
    p->scores = f.buffer("attn.scores", fused_desc({G, H, N, Nk}, f32_scores ? dt::f32 : low));
    p->probs =
        f32_scores && f.bf16() ? f.buffer("attn.probs", fused_desc({G, H, N, Nk}, low)) : p->scores;
  }

  // Attention's 1/√d, folded into q's packed weight and bias instead of scaling the scores on
  // every call (a scale attribute cost that matmul 20 %): (x·W_q + b_q)/√d = x·(W_q/√d) + b_q/√d,
  // exact when √d is a power of two (d = 64).
  // Additive scores are computed in f32 from unscaled q and k (their scale is on the scores),
  // and so is Performer's attention, from f32 q, k and v.
  const float q_scale = additive || favor ? 1.0f : score_scale(config);
  const memory::desc rows_md = fused_desc({M, D}, low);
  std::vector<memory> q_f32, k_f32;  // additive: per group [G, H, N, d] views of f32 q, k
  for (int i = 0; i < 2; ++i) p->qk_dest[i] = p->qkv_parts[i];
  memory qk_f32;
  if (additive || favor) {
    qk_f32 = f.buffer("attn.qk_f32", fused_desc({favor ? 3 : 2, M, D}, dt::f32));
    const memory::desc heads_f32_md = fused_desc(heads, dt::f32, {N * D, d, D, 1});
    for (int64_t i = 0; i < 2; ++i)
      p->qk_dest[i] = fused_view(eng, fused_desc({M, D}, dt::f32), qk_f32, i * M * D);
    if (favor) p->qkv_parts[2] = fused_view(eng, fused_desc({M, D}, dt::f32), qk_f32, 2 * M * D);
    for (int64_t g = 0; g < B; g += G) {
      q_f32.push_back(fused_view(eng, heads_f32_md, qk_f32, g * N * D));
      k_f32.push_back(fused_view(eng, heads_f32_md, qk_f32, M * D + g * N * D));
    }
  }
  if (q_norm) {
    // q_norm(q)/√d: the scale moves into q_norm's weight and bias.
    const memory::desc raw_md = fused_desc({M, D}, dt::f32);
    p->raw = f.buffer("attn.qk_raw", raw_md);
    p->q = qkv.fused(f, t.normed.get_desc(), raw_md, {}, 0, D);
    p->k = qkv.fused(f, t.normed.get_desc(), raw_md, {}, D, D);
    p->q_norm = q_norm->fused(f, M * H, q_scale);
    p->k_norm = k_norm->fused(f, M * H);
    const memory::desc head_rows_md = fused_desc({M * H, d}, dt::f32);
    p->raw_rows = fused_view(eng, head_rows_md, p->raw);
    for (int i = 0; i < 2; ++i) {
      p->normed_f32[i] = p->qk_dest[i];
      if (f.bf16() && !additive && !favor) {
        p->normed_f32[i] = f.buffer("attn.qk_normed", raw_md);
        p->to_low[i] = dnnl::reorder(p->normed_f32[i], p->qkv_parts[i]);
      }
      p->normed_rows[i] = fused_view(eng, head_rows_md, p->normed_f32[i]);
    }
  } else {
    p->q = qkv.fused(f, t.normed.get_desc(), p->qk_dest[0].get_desc(), {}, 0, D, q_scale);
    p->k = qkv.fused(f, t.normed.get_desc(), p->qk_dest[1].get_desc(), {}, D, D);
  }
  p->v = qkv.fused(f, t.normed.get_desc(), p->qkv_parts[2].get_desc(), {}, 2 * D, D);
  // x += proj(...) in place: the sum post-op reads the residual from dst, cheaper than a binary
  // add from a second buffer.
  dnnl::post_ops add_residual;
  add_residual.append_sum(1.0f);
  p->proj = proj.fused(f, rows_md, t.x.get_desc(), add_residual, 0, -1, 1.0f, t.out_scale);
  if (favor) {
    // The whole batch at once (its cost is linear in N), its output merged into context.
    const memory::desc all_heads_md = fused_desc({B, H, N, d}, dt::f32, {N * D, d, D, 1});
    const memory q_all = fused_view(eng, all_heads_md, qk_f32);
    const memory k_all = fused_view(eng, all_heads_md, qk_f32, M * D);
    const memory v_all = fused_view(eng, all_heads_md, qk_f32, 2 * M * D);
    p->favor = favor->fused(f, q_all, k_all, v_all);
    p->favor_out = memory(fused_desc({B, H, N, d}, dt::f32), eng, p->favor->out->data());
    p->context_as_heads =
        fused_view(eng, fused_desc({B, H, N, d}, low, {N * D, d, D, 1}), p->context);
    p->favor_merge = dnnl::reorder(p->favor_out, p->context_as_heads);
    return p;
  }
  if (halo) {
    p->halo = halo->fused(f, p->qkv_parts[0], p->qkv_parts[1], p->qkv_parts[2], p->context);
    return p;
  }
  dnnl::post_ops score_ops;
  if (masked) {
    // The scores as rows of N·Nk, one per image and head: the mask is a per-column add.
    const memory::desc rows_of_scores = fused_desc({G * H, N * Nk}, dt::f32);
    p->mask = memory(fused_desc({1, N * Nk}, dt::f32), eng);
    std::copy(bias.begin(), bias.end(), static_cast<float*>(p->mask.get_data_handle()));
    p->scores_rows = fused_view(eng, rows_of_scores, p->scores);
    p->add_mask = dnnl::binary(
        {{dnnl::algorithm::binary_add, rows_of_scores, p->mask.get_desc(), rows_of_scores}, eng});
    if (!softmax) {
      p->norm_eltwise = norm.eltwise(eng, p->scores.get_desc());
      if (f.bf16()) p->to_probs = dnnl::reorder(p->scores, p->probs);
    }
  } else {
    norm.append_post_ops(score_ops, score_shift(config));
  }
  dnnl::primitive_attr score_attr;
  score_attr.set_post_ops(score_ops);
  if (additive)
    p->additive = additive->fused(f, q_f32, k_f32, p->scores, score_ops);
  else
    p->scores_mm = f.matmul(
        {{heads_md, lowrank_k ? k_t_projected_md : k_t_md, p->scores.get_desc()}, score_attr, eng});
  if (softmax)
    p->softmax = dnnl::softmax_v2_forward(
        {{dnnl::prop_kind::forward_inference, dnnl::algorithm::softmax_accurate,
          p->scores.get_desc(), p->probs.get_desc(), 3},
         eng});
  p->context_mm =
      f.matmul({{p->probs.get_desc(), lowrank_k ? v_projected_md : heads_md, heads_md}, eng});
  if (t.probs_tap) {
    const memory::desc group_md = fused_desc({G, H, N, Nk}, dt::f32);
    for (int64_t g = 0; g < B; g += G)
      p->tap_groups.push_back(fused_view(eng, group_md, t.probs_tap, g * H * N * Nk));
    p->tap = dnnl::reorder(p->probs, p->tap_groups[0]);
  }
  return p;
}

void MultiHeadAttention::Fused::run(dnnl::stream& s) {
  if (q_norm) {
    const engine::LayerNorm::Fused* norms[2] = {&*q_norm, &*k_norm};
    const engine::Linear::Fused* projections[2] = {&q, &k};
    for (int i = 0; i < 2; ++i) {
      projections[i]->run(s, normed, raw);
      norms[i]->run(s, raw_rows, normed_rows[i]);
      if (to_low[i]) to_low[i].execute(s, normed_f32[i], qkv_parts[i]);
    }
  } else {
    q.run(s, normed, qk_dest[0]);
    k.run(s, normed, qk_dest[1]);
  }
  v.run(s, normed, qkv_parts[2]);
  if (favor) {
    favor->run(s);
    favor_merge.execute(s, favor_out, context_as_heads);
    proj.run(s, context, x);
    return;
  }
  if (halo) {
    halo->run(s);
    proj.run(s, context, x);
    return;
  }
  if (project_k) {
    to_channels.execute(s, k_tokens, k_channels);
    to_channels.execute(s, v_tokens, v_channels);
    project_k->run(s, k_rows, k_projected);
    project_v->run(s, v_rows, v_projected);
  }
  for (size_t g = 0; g < q_heads.size(); ++g) {
    if (additive)
      additive->run(s, g);
    else
      scores_mm.execute(
          s, {{DNNL_ARG_SRC, q_heads[g]}, {DNNL_ARG_WEIGHTS, k_t[g]}, {DNNL_ARG_DST, scores}});
    if (add_mask) {
      add_mask.execute(
          s, {{DNNL_ARG_SRC_0, scores_rows}, {DNNL_ARG_SRC_1, mask}, {DNNL_ARG_DST, scores_rows}});
      if (norm_eltwise) norm_eltwise.execute(s, {{DNNL_ARG_SRC, scores}, {DNNL_ARG_DST, scores}});
      if (to_probs) to_probs.execute(s, scores, probs);
    }
    if (softmax) softmax.execute(s, {{DNNL_ARG_SRC, scores}, {DNNL_ARG_DST, probs}});
    if (tap) tap.execute(s, probs, tap_groups[g]);
    context_mm.execute(
        s,
        {{DNNL_ARG_SRC, probs}, {DNNL_ARG_WEIGHTS, v_heads[g]}, {DNNL_ARG_DST, context_heads[g]}});
  }
  proj.run(s, context, x);
}

}  // namespace vit
