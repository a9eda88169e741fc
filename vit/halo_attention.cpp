#include "vit/halo_attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace vit {

using dnnl::memory;
using dt = memory::data_type;
using engine::fused_desc;
using engine::fused_view;

namespace {

// A strided view without its data: the same layouts serve the layers (float pointers) and the
// fused path (oneDNN memories over its buffers).
struct Layout {
  Dims dims, strides;
  int64_t offset = 0;
  View on(float* base) const { return View{base + offset, dims, strides}; }
  memory on(const dnnl::engine& eng, const memory& base, dt type) const {
    return fused_view(eng, fused_desc(dims, type, strides), base, offset);
  }
};

struct Shape {  // what every layout below needs
  int64_t B, H, d, P, S, R, b, nb, Sp, Kb;
  int64_t NB() const { return nb * nb; }
  int64_t W() const { return b + 2 * R; }                    // the halo's side
  int64_t width(int h) const { return h == 0 ? b : 2 * R; }  // of its two parts
  int64_t Q() const { return b * b; }
  int64_t N() const { return P + S * S; }

  // A [B, H, Sp, Sp, d] grid: its S × S interior (padding R on each side before it), the b × b
  // query blocks [B, H, nb, nb, b, b, d] from the interior's corner, and the halo quadrant
  // (hr, hc) of every block: the b × b patch (hr, hc) of the 2b × 2b keys around it.
  Layout interior() const {
    return {{B, H, S, S, d}, {H * Sp * Sp * d, Sp * Sp * d, Sp * d, d, 1}, (R * Sp + R) * d};
  }
  Layout blocks_of_grid(int64_t offset, int64_t rows, int64_t cols) const {
    return {{B, H, nb, nb, rows, cols, d},
            {H * Sp * Sp * d, Sp * Sp * d, b * Sp * d, b * d, Sp * d, d, 1},
            offset};
  }
  Layout query_blocks() const { return blocks_of_grid((R * Sp + R) * d, b, b); }
  Layout quadrant(int hr, int hc) const {
    return blocks_of_grid((hr * b * Sp + hc * b) * d, width(hr), width(hc));
  }
  // The blocks' own tensors: queries (and outputs) [B, H, nb, nb, b, b, d] dense, keys (and
  // values) [B, H, nb², Kb, d] with the P prefix keys first and the halo row by row after.
  Layout dense_blocks() const {
    return {{B, H, nb, nb, b, b, d},
            {H * NB() * Q() * d, NB() * Q() * d, nb * Q() * d, Q() * d, b * d, d, 1}};
  }
  Layout key_quadrant(int hr, int hc) const {
    return {{B, H, nb, nb, width(hr), width(hc), d},
            {H * NB() * Kb * d, NB() * Kb * d, nb * Kb * d, Kb * d, W() * d, d, 1},
            (P + hr * b * W() + hc * b) * d};
  }
  Layout key_prefix() const {
    return {{B, H, NB(), P, d}, {H * NB() * Kb * d, NB() * Kb * d, Kb * d, d, 1}};
  }
  // Of a [B, H, N, d] tensor with strides s (last 1): the patch rows [B, H, S, S, d], the prefix
  // rows [B, H, P, d], and the prefix rows repeated for every block [B, H, nb², P, d].
  static Layout patches(const Shape& x, const Dims& s) {
    return {{x.B, x.H, x.S, x.S, x.d}, {s[0], s[1], x.S * s[2], s[2], 1}, x.P * s[2]};
  }
  static Layout prefix(const Shape& x, const Dims& s) {
    return {{x.B, x.H, x.P, x.d}, {s[0], s[1], s[2], 1}};
  }
  static Layout prefix_per_block(const Shape& x, const Dims& s) {
    return {{x.B, x.H, x.NB(), x.P, x.d}, {s[0], s[1], 0, s[2], 1}};
  }
  // Per block as one batch axis: queries [B·H·nb², b², d], keys transposed [B·H·nb², d, Kb],
  // values [B·H·nb², Kb, d].
  Layout q_rows() const { return {{B * H * NB(), Q(), d}, {Q() * d, d, 1}}; }
  Layout k_t() const { return {{B * H * NB(), d, Kb}, {Kb * d, 1, d}}; }
  Layout v_rows() const { return {{B * H * NB(), Kb, d}, {Kb * d, d, 1}}; }
};

Shape shape_of(const HaloAttention& a, int64_t B) {
  return {B, a.heads, a.head_dim, a.prefix, a.side, a.radius, a.block, a.blocks, a.padded, a.keys};
}

View on(const Layout& l, const View& t) {
  return l.on(t.data);
}

}  // namespace

HaloAttention::HaloAttention(const VitConfig& c)
    : heads(c.num_heads),
      head_dim(c.head_dim()),
      prefix(c.num_prefix_tokens()),
      side(c.grid()),
      radius(c.attn_window),
      block(block_side(c)),
      blocks((side + block - 1) / block),
      padded(blocks * block + 2 * radius),
      keys(prefix + (block + 2 * radius) * (block + 2 * radius)),
      shift(score_shift(c)),
      scores_mm(score_scale(c)),
      norm(c.attn_norm),
      drop(static_cast<float>(c.attn_drop_rate)),
      prefix_scores_mm(score_scale(c)),
      prefix_norm(c.attn_norm),
      drop_prefix(static_cast<float>(c.attn_drop_rate)) {
  engine::require(radius > 0, "HaloAttention: needs attn_window > 0");
  // The mask: for block (I, J), query (u, v) at grid (I·b + u, J·b + v), key h of its halo at
  // (I·b − R + h / 2b, J·b − R + h % 2b). Queries off the grid (the last blocks' padding)
  // keep only the prefix keys: their outputs are dropped and their gradients are zero.
  const float allowed = shift;
  const int64_t Q = block * block, halo = block + 2 * radius;
  mask.assign(size_t(blocks * blocks * Q * keys), kMasked);
  for (int64_t I = 0; I < blocks; ++I)
    for (int64_t J = 0; J < blocks; ++J)
      for (int64_t u = 0; u < block; ++u)
        for (int64_t v = 0; v < block; ++v) {
          float* row = mask.data() + ((I * blocks + J) * Q + u * block + v) * keys;
          std::fill_n(row, prefix, allowed);
          const int64_t r = I * block + u, col = J * block + v;
          if (r >= side || col >= side) continue;
          for (int64_t h = 0; h < halo * halo; ++h) {
            const int64_t r2 = I * block - radius + h / halo, c2 = J * block - radius + h % halo;
            const bool on_grid = r2 >= 0 && r2 < side && c2 >= 0 && c2 < side;
            if (on_grid && std::abs(r - r2) <= radius && std::abs(col - c2) <= radius)
              row[prefix + h] = allowed;
          }
        }
}

int64_t HaloAttention::block_side(const VitConfig& c) {
  // At least 2R (the halo is then two parts a side); at least 4, since 2 × 2 queries against
  // 4 × 4 keys are matmuls too small to run fast (ViT-Ti at N = 785, R = 1: b = 4 infers 1.26×
  // and trains 1.06× faster than b = 2; b = 7 is slower again).
  return std::max<int64_t>(2 * c.attn_window, 4);
}

double HaloAttention::scored_pairs(const VitConfig& c) {
  const int64_t b = block_side(c), S = c.grid(), nb = (S + b - 1) / b, W = b + 2 * c.attn_window;
  const int64_t P = c.num_prefix_tokens(), N = c.num_tokens();
  return double(nb * b) * double(nb * b) * double(P + W * W) + double(P * N);
}

bool HaloAttention::cheaper(const VitConfig& c) {
  if (c.attn_window == 0 || c.attn_score != "dot" || c.attn_lowrank > 0 || c.attn_features > 0)
    return false;
  // The blocks' small matmuls and their gathers run far below the big N × N matmuls' speed:
  // measured on ViT-Ti, 8× fewer scores than N × N are about where they start to win (N = 197,
  // R = 1: 4× fewer, 0.9× the masked speed; N = 785: 21× fewer, 1.55× faster in inference).
  const double N = double(c.num_tokens());
  return N * N >= 8.0 * scored_pairs(c);
}

bool HaloAttention::used(const VitConfig& c) {
  return c.attn_window > 0 &&
         (c.attn_window_impl == "blocks" || (c.attn_window_impl == "auto" && cheaper(c)));
}

void HaloAttention::share_gradients(const std::string& slot) {
  norm.share_gradients(slot + ".halo.norm");
  prefix_norm.share_gradients(slot + ".halo.prefix_norm");
  drop.grad_slot = slot + ".halo.drop";
  drop_prefix.grad_slot = slot + ".halo.drop_prefix";
}

const Tensor& HaloAttention::forward(Context& ctx, const View& q, const View& k, const View& v) {
  const int64_t B = q.dims[0], N = q.dims[2], H = heads, d = head_dim;
  const Shape x = shape_of(*this, B);
  engine::require(q.dims.size() == 4 && N == x.N() && q.dims[1] == H && q.dims[3] == d,
                  "HaloAttention: q must be [B, " + std::to_string(H) + ", " +
                      std::to_string(x.N()) + ", " + std::to_string(d) + "], got " +
                      engine::to_string(q.dims));
  Buffers& buf = buffers_.get(q.dims, [&] {
    auto p = std::make_unique<Buffers>();
    for (int i = 0; i < 3; ++i) {
      p->grid[i] = Tensor(ctx.eng, grid_dims(B));
      p->diff_grid[i] = Tensor(ctx.eng, grid_dims(B));
    }
    const int64_t BH = B * H * x.NB();
    p->q_blk = Tensor(ctx.eng, {BH, x.Q(), d});
    p->k_blk = Tensor(ctx.eng, {BH, keys, d});
    p->v_blk = Tensor(ctx.eng, {BH, keys, d});
    p->out_grid = Tensor(ctx.eng, grid_dims(B));
    p->out = Tensor(ctx.eng, {B, H, N, d});
    p->mask_table = Tensor(ctx.eng, {1, x.NB() * x.Q() * keys});
    std::copy(mask.begin(), mask.end(), p->mask_table.data());
    p->diff_out_grid = Tensor(ctx.eng, grid_dims(B));
    p->diff_out_blk = Tensor(ctx.eng, {BH, x.Q(), d});
    p->diff_probs = Tensor(ctx.eng, {BH, x.Q(), keys});
    p->diff_qkv_blk[0] = Tensor(ctx.eng, {BH, x.Q(), d});
    p->diff_qkv_blk[1] = Tensor(ctx.eng, {BH, keys, d});
    p->diff_qkv_blk[2] = Tensor(ctx.eng, {BH, keys, d});
    if (prefix > 0) {
      p->ones = Tensor(ctx.eng, {B * H, 1, x.NB()});
      std::fill_n(p->ones.data(), p->ones.numel(), 1.0f);
      p->diff_out_prefix = Tensor(ctx.eng, {B, H, prefix, d});
      p->diff_probs_prefix = Tensor(ctx.eng, {B, H, prefix, N});
      if (shift != 0.0f) {
        p->prefix_bias_table = Tensor(ctx.eng, {1, prefix * N});
        std::fill_n(p->prefix_bias_table.data(), prefix * N, shift);
      }
    }
    return p;
  });
  buf.images = B;
  const View* in[3] = {&q, &k, &v};
  for (int i = 0; i < 3; ++i)
    copy_(ctx, on(Shape::patches(x, in[i]->strides), *in[i]), x.interior().on(buf.grid[i].data()));
  copy_(ctx, x.query_blocks().on(buf.grid[0].data()), x.dense_blocks().on(buf.q_blk.data()));
  const Tensor* blk[2] = {&buf.k_blk, &buf.v_blk};
  for (int i = 0; i < 2; ++i) {
    if (prefix > 0)
      copy_(ctx, on(Shape::prefix_per_block(x, in[1 + i]->strides), *in[1 + i]),
            x.key_prefix().on(blk[i]->data()));
    for (int hr = 0; hr < 2; ++hr)
      for (int hc = 0; hc < 2; ++hc)
        copy_(ctx, x.quadrant(hr, hc).on(buf.grid[1 + i].data()),
              x.key_quadrant(hr, hc).on(blk[i]->data()));
  }
  const Tensor& scores =
      scores_mm.forward(ctx, x.q_rows().on(buf.q_blk.data()), x.k_t().on(buf.k_blk.data()));
  const Tensor& masked =
      add_mask.forward(ctx, scores.reshaped({B * H, x.NB() * x.Q() * keys}), buf.mask_table);
  buf.probs = &norm.forward(ctx, masked.reshaped({B * H * x.NB(), x.Q(), keys}));
  const Tensor& probs = drop.forward(ctx, *buf.probs);
  const Tensor& out = context_mm.forward(ctx, probs.as_view(), x.v_rows().on(buf.v_blk.data()));
  copy_(ctx, x.dense_blocks().on(out.data()), x.query_blocks().on(buf.out_grid.data()));
  copy_(ctx, x.interior().on(buf.out_grid.data()),
        Shape::patches(x, buf.out.as_view().strides).on(buf.out.data()));
  if (prefix > 0) {
    const Tensor* s =
        &prefix_scores_mm.forward(ctx, on(Shape::prefix(x, q.strides), q), k.transposed());
    if (!buf.prefix_bias_table.empty())
      s = &add_prefix_bias.forward(ctx, s->reshaped({B * H, prefix * N}), buf.prefix_bias_table);
    buf.prefix_probs = &prefix_norm.forward(ctx, s->reshaped({B, H, prefix, N}));
    const Tensor& p = drop_prefix.forward(ctx, *buf.prefix_probs);
    const Tensor& o = prefix_context_mm.forward(ctx, p.as_view(), v);
    copy_(ctx, o.as_view(), Shape::prefix(x, buf.out.as_view().strides).on(buf.out.data()));
  }
  return buf.out;
}

const Tensor& HaloAttention::probabilities(Context& ctx) {
  Buffers& buf = buffers_.current("HaloAttention");
  const int64_t B = buf.images, H = heads, N = prefix + side * side, S = side, b = block;
  const int64_t W = b + 2 * radius, Q = b * b;
  if (buf.dense.empty()) buf.dense = Tensor(ctx.eng, {B, H, N, N});
  ctx.wait();
  // A plain copy: explaining one prediction, not a step of training or inference.
  float* dense = buf.dense.data();
  std::fill_n(dense, buf.dense.numel(), 0.0f);
  for (int64_t bh = 0; bh < B * H; ++bh) {
    float* out = dense + bh * N * N;
    if (prefix > 0) std::copy_n(buf.prefix_probs->data() + bh * prefix * N, prefix * N, out);
    for (int64_t I = 0; I < blocks; ++I)
      for (int64_t J = 0; J < blocks; ++J)
        for (int64_t u = 0; u < b; ++u)
          for (int64_t v = 0; v < b; ++v) {
            const int64_t r = I * b + u, c = J * b + v;
            if (r >= S || c >= S) continue;  // a padded query
            const float* row = buf.probs->data() +
                               ((bh * blocks * blocks + I * blocks + J) * Q + u * b + v) * keys;
            float* to = out + (prefix + r * S + c) * N;
            std::copy_n(row, prefix, to);
            for (int64_t h = 0; h < W * W; ++h) {
              const int64_t r2 = I * b - radius + h / W, c2 = J * b - radius + h % W;
              if (r2 >= 0 && r2 < S && c2 >= 0 && c2 < S)
                to[prefix + r2 * S + c2] = row[prefix + h];
            }
          }
  }
  return buf.dense;
}

void HaloAttention::backward(Context& ctx, const Tensor& diff_out, const View& diff_q,
                             const View& diff_k, const View& diff_v) {
  Buffers& buf = buffers_.current("HaloAttention");
  const int64_t B = buf.images, H = heads, d = head_dim;
  const Shape x = shape_of(*this, B);
  engine::check_same_dims(diff_out.dims(), buf.out.dims(), "HaloAttention", "diff_out");
  const View dout = diff_out.as_view();
  // The prefix queries first: they write every row of diff_k and diff_v, the blocks add theirs.
  if (prefix > 0) {
    copy_(ctx, on(Shape::prefix(x, dout.strides), dout), buf.diff_out_prefix.as_view());
    prefix_context_mm.backward(ctx, buf.diff_out_prefix, buf.diff_probs_prefix.as_view(), diff_v);
    const Tensor& ds = prefix_norm.backward(ctx, drop_prefix.backward(ctx, buf.diff_probs_prefix));
    prefix_scores_mm.backward(ctx, ds, on(Shape::prefix(x, diff_q.strides), diff_q),
                              diff_k.transposed());
  }
  // The patches' gradient onto the grid, whose padding stays zero, and from it into blocks:
  // the padded queries get none.
  copy_(ctx, on(Shape::patches(x, dout.strides), dout), x.interior().on(buf.diff_out_grid.data()));
  copy_(ctx, x.query_blocks().on(buf.diff_out_grid.data()),
        x.dense_blocks().on(buf.diff_out_blk.data()));
  Tensor* diff_blk = buf.diff_qkv_blk;
  context_mm.backward(ctx, buf.diff_out_blk, buf.diff_probs.as_view(),
                      x.v_rows().on(diff_blk[2].data()));
  const Tensor& diff_scores = norm.backward(ctx, drop.backward(ctx, buf.diff_probs));
  scores_mm.backward(ctx, diff_scores, x.q_rows().on(diff_blk[0].data()),
                     x.k_t().on(diff_blk[1].data()));
  copy_(ctx, x.dense_blocks().on(diff_blk[0].data()), x.query_blocks().on(buf.diff_grid[0].data()));
  copy_(ctx, x.interior().on(buf.diff_grid[0].data()),
        on(Shape::patches(x, diff_q.strides), diff_q));
  const View* diffs[2] = {&diff_k, &diff_v};
  for (int i = 0; i < 2; ++i) {
    // The halos overlap: each key's gradient is the sum over the four quadrants it is part of.
    Tensor& grid = buf.diff_grid[1 + i];
    std::memset(grid.data(), 0, size_t(grid.numel()) * sizeof(float));
    for (int hr = 0; hr < 2; ++hr)
      for (int hc = 0; hc < 2; ++hc)
        add_(ctx, x.key_quadrant(hr, hc).on(diff_blk[1 + i].data()),
             x.quadrant(hr, hc).on(grid.data()));
    const View patches = on(Shape::patches(x, diffs[i]->strides), *diffs[i]);
    if (prefix == 0) {
      copy_(ctx, x.interior().on(grid.data()), patches);
      continue;
    }
    add_(ctx, x.interior().on(grid.data()), patches);
    // The prefix keys' gradient: the sum over the blocks, 1ᵀ·[nb², P·d] per image and head.
    const View per_block{
        diff_blk[1 + i].data(), {B * H, x.NB(), prefix * d}, {x.NB() * keys * d, keys * d, 1}};
    const Tensor& sum = sum_blocks_.forward(ctx, buf.ones.as_view(), per_block);
    add_(ctx, View{sum.data(), {B, H, prefix, d}, {H * prefix * d, prefix * d, d, 1}},
         on(Shape::prefix(x, diffs[i]->strides), *diffs[i]));
  }
}

HaloAttention::Fused HaloAttention::fused(FusedBuild& f, const memory& q, const memory& k,
                                          const memory& v, const memory& context) const {
  const dnnl::engine& eng = f.ctx.eng;
  const int64_t B = f.images, H = heads, d = head_dim, D = H * d;
  const Shape x = shape_of(*this, B);
  const int64_t N = x.N(), BH = B * H * x.NB();
  const dt low = f.low();
  Fused p;
  auto reorder = [&](const memory& from, const memory& to) {
    p.steps.push_back({dnnl::reorder(from, to), {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}}});
  };
  // The slabs [B, N, H, d] seen as heads [B, H, N, d].
  const Dims tokens = {N * D, d, D, 1};
  const memory::desc grid_md = fused_desc(grid_dims(B), low);
  const memory* slabs[3] = {&q, &k, &v};
  memory grids[3];
  const char* names[3] = {"attn.halo.grid_q", "attn.halo.grid_k", "attn.halo.grid_v"};
  for (int i = 0; i < 3; ++i) {
    grids[i] = f.buffer(names[i], grid_md);
    std::memset(grids[i].get_data_handle(), 0, grid_md.get_size());  // the padding
    reorder(Shape::patches(x, tokens).on(eng, *slabs[i], low), x.interior().on(eng, grids[i], low));
  }
  const memory q_blk = f.buffer("attn.halo.q", fused_desc({BH, x.Q(), d}, low));
  reorder(x.query_blocks().on(eng, grids[0], low), x.dense_blocks().on(eng, q_blk, low));
  memory kv_blk[2];
  for (int i = 0; i < 2; ++i) {
    kv_blk[i] = f.buffer(i == 0 ? "attn.halo.k" : "attn.halo.v", fused_desc({BH, keys, d}, low));
    if (prefix > 0)
      reorder(Shape::prefix_per_block(x, tokens).on(eng, *slabs[1 + i], low),
              x.key_prefix().on(eng, kv_blk[i], low));
    for (int hr = 0; hr < 2; ++hr)
      for (int hc = 0; hc < 2; ++hc)
        reorder(x.quadrant(hr, hc).on(eng, grids[1 + i], low),
                x.key_quadrant(hr, hc).on(eng, kv_blk[i], low));
  }
  // Scores in f32, the mask added as its own binary (per column of one row per image and
  // head), then the normalisation; q carries the score scale already.
  const memory scores = f.buffer("attn.halo.scores", fused_desc({BH, x.Q(), keys}, dt::f32));
  const memory q_rows = x.q_rows().on(eng, q_blk, low), k_t = x.k_t().on(eng, kv_blk[0], low);
  const dnnl::matmul scores_prim =
      f.matmul({{q_rows.get_desc(), k_t.get_desc(), scores.get_desc()}, eng});
  p.steps.push_back(
      {scores_prim, {{DNNL_ARG_SRC, q_rows}, {DNNL_ARG_WEIGHTS, k_t}, {DNNL_ARG_DST, scores}}});
  const memory::desc rows_md = fused_desc({B * H, x.NB() * x.Q() * keys}, dt::f32);
  const memory rows = fused_view(eng, rows_md, scores);
  const memory mask_mem =
      f.buffer("attn.halo.mask", fused_desc({1, x.NB() * x.Q() * keys}, dt::f32));
  std::copy(mask.begin(), mask.end(), static_cast<float*>(mask_mem.get_data_handle()));
  p.steps.push_back(
      {dnnl::binary({{dnnl::algorithm::binary_add, rows_md, mask_mem.get_desc(), rows_md}, eng}),
       {{DNNL_ARG_SRC_0, rows}, {DNNL_ARG_SRC_1, mask_mem}, {DNNL_ARG_DST, rows}}});
  const memory probs =
      low == dt::f32 ? scores : f.buffer("attn.halo.probs", fused_desc({BH, x.Q(), keys}, low));
  if (norm.needs_softmax()) {
    p.steps.push_back({dnnl::softmax_v2_forward(
                           {{dnnl::prop_kind::forward_inference, dnnl::algorithm::softmax_accurate,
                             scores.get_desc(), probs.get_desc(), 2},
                            eng}),
                       {{DNNL_ARG_SRC, scores}, {DNNL_ARG_DST, probs}}});
  } else {
    p.steps.push_back(
        {norm.eltwise(eng, scores.get_desc()), {{DNNL_ARG_SRC, scores}, {DNNL_ARG_DST, scores}}});
    if (probs != scores) reorder(scores, probs);
  }
  const memory v_rows = x.v_rows().on(eng, kv_blk[1], low);
  const memory out_blk = f.buffer("attn.halo.out", fused_desc({BH, x.Q(), d}, low));
  p.steps.push_back({f.matmul({{probs.get_desc(), v_rows.get_desc(), out_blk.get_desc()}, eng}),
                     {{DNNL_ARG_SRC, probs}, {DNNL_ARG_WEIGHTS, v_rows}, {DNNL_ARG_DST, out_blk}}});
  const memory out_grid = f.buffer("attn.halo.out_grid", grid_md);
  reorder(x.dense_blocks().on(eng, out_blk, low), x.query_blocks().on(eng, out_grid, low));
  reorder(x.interior().on(eng, out_grid, low), Shape::patches(x, tokens).on(eng, context, low));
  if (prefix == 0) return p;
  // The prefix queries over all N keys, relu and σ (with its shift) as post-ops of their scores.
  const memory q_prefix = Shape::prefix(x, tokens).on(eng, q, low);
  const memory k_all_t = fused_view(eng, fused_desc({B, H, d, N}, low, {N * D, d, 1, D}), k);
  const memory v_all = fused_view(eng, fused_desc({B, H, N, d}, low, tokens), v);
  const bool softmax = norm.needs_softmax();
  const memory prefix_scores =
      f.buffer("attn.halo.prefix_scores", fused_desc({B, H, prefix, N}, softmax ? dt::f32 : low));
  const memory prefix_probs =
      softmax && low != dt::f32
          ? f.buffer("attn.halo.prefix_probs", fused_desc({B, H, prefix, N}, low))
          : prefix_scores;
  dnnl::post_ops ops;
  norm.append_post_ops(ops, shift);  // σ's −log n: the shift the mask carries for the patches
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  p.steps.push_back(
      {f.matmul({{q_prefix.get_desc(), k_all_t.get_desc(), prefix_scores.get_desc()}, attr, eng}),
       {{DNNL_ARG_SRC, q_prefix}, {DNNL_ARG_WEIGHTS, k_all_t}, {DNNL_ARG_DST, prefix_scores}}});
  if (softmax)
    p.steps.push_back({dnnl::softmax_v2_forward(
                           {{dnnl::prop_kind::forward_inference, dnnl::algorithm::softmax_accurate,
                             prefix_scores.get_desc(), prefix_probs.get_desc(), 3},
                            eng}),
                       {{DNNL_ARG_SRC, prefix_scores}, {DNNL_ARG_DST, prefix_probs}}});
  const memory context_prefix = Shape::prefix(x, tokens).on(eng, context, low);
  p.steps.push_back(
      {f.matmul({{prefix_probs.get_desc(), v_all.get_desc(), context_prefix.get_desc()}, eng}),
       {{DNNL_ARG_SRC, prefix_probs}, {DNNL_ARG_WEIGHTS, v_all}, {DNNL_ARG_DST, context_prefix}}});
  return p;
}

void HaloAttention::Fused::run(dnnl::stream& s) const {
  for (const auto& [prim, args] : steps) prim.execute(s, args);
}

}  // namespace vit
