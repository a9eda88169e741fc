#include "vit/pos_embed.hpp"

#include <algorithm>
#include <cmath>

namespace vit {

using dnnl::memory;
using dt = memory::data_type;
using engine::fused_desc;

PosEmbed::PosEmbed(ParameterStore& store, const VitConfig& c)
    : num_patches(c.num_patches()),
      num_prefix(c.num_prefix_tokens()),
      embed_dim(c.embed_dim),
      embed_prefix(!c.no_embed_class) {
  const int64_t D = c.embed_dim;
  // timm's state-dict order, none of them decayed.
  cls_token = c.class_token ? &store.add("cls_token", {1, 1, D}, /*decay=*/false) : nullptr;
  dist_token = c.distilled ? &store.add("dist_token", {1, 1, D}, false) : nullptr;
  reg_token = c.reg_tokens > 0 ? &store.add("reg_token", {1, c.reg_tokens, D}, false) : nullptr;
  // A fixed sine-cosine table is a buffer: saved with the model (as MAE's state dict has it),
  // never trained.
  const Dims pos_dims = {1, c.pos_embed_len(), D};
  pos_embed = c.pos_embed == "learn"    ? &store.add("pos_embed", pos_dims, /*decay=*/false)
              : c.pos_embed == "sincos" ? &store.add_buffer("pos_embed", pos_dims)
                                        : nullptr;
  if (pos_embed && !pos_embed->trainable) sincos_config_ = c;
}

void sincos_pos_embed(const VitConfig& c, float* table) {
  // MAE's get_2d_sincos_pos_embed: the first D/2 channels encode the column, the last D/2 the
  // row, each as sin(p·ω_i) then cos(p·ω_i) with ω_i = 1/10000^(i/(D/4)), i < D/4; the prefix
  // rows (MAE's cls row) are zero.
  const int64_t D = c.embed_dim, G = c.grid(), quarter = D / 4;
  const int64_t first = c.pos_embed_len() - c.num_patches();
  std::fill_n(table, first * D, 0.0f);
  for (int64_t r = 0; r < G; ++r)
    for (int64_t col = 0; col < G; ++col) {
      float* row = table + (first + r * G + col) * D;
      for (int64_t half = 0; half < 2; ++half) {
        const double pos = double(half == 0 ? col : r);
        for (int64_t i = 0; i < quarter; ++i) {
          const double angle = pos / std::pow(10000.0, double(i) / double(quarter));
          row[half * 2 * quarter + i] = float(std::sin(angle));
          row[half * 2 * quarter + quarter + i] = float(std::cos(angle));
        }
      }
    }
}

void PosEmbed::init_weights(Context& ctx) {
  if (pos_embed && pos_embed->trainable)
    engine::trunc_normal(ctx, pos_embed->value, 0.0f, 0.02f);
  else if (pos_embed)
    sincos_pos_embed(sincos_config_, pos_embed->value.data());
  if (cls_token) engine::normal(ctx, cls_token->value, 0.0f, 1e-6f);
  if (reg_token) engine::normal(ctx, reg_token->value, 0.0f, 1e-6f);
  if (dist_token) engine::trunc_normal(ctx, dist_token->value, 0.0f, 0.02f);  // DeiT's
}

// Computed as tokens + table, where tokens has zero prefix rows and the patches after them, and
// table holds what timm adds to every image: its prefix tokens and its positions.
const Tensor& PosEmbed::forward(Context& ctx, const Tensor& patch_tokens) {
  const int64_t B = patch_tokens.dim(0), L = num_patches, P = num_prefix, D = embed_dim;
  const int64_t N = L + P, first_pos = embed_prefix ? 0 : P, pos_rows = N - first_pos;
  engine::check_same_dims(patch_tokens.dims(), {B, L, D}, "PosEmbed", "input");
  Buffers& buf = buffers_.get(patch_tokens.dims(), [&] {
    auto b = std::make_unique<Buffers>();
    b->tokens = Tensor(ctx.eng, {B, N, D});  // the prefix rows stay zero: only rows P.. are written
    b->diff_patch_tokens = Tensor(ctx.eng, {B, L, D});
    return b;
  });
  if (table_.empty()) table_ = Tensor(ctx.eng, {1, N, D}), diff_table_ = Tensor(ctx.eng, {1, N, D});
  if (pos_embed)  // without one, the table's patch rows stay zero
    copy_(ctx, View{pos_embed->value.data(), {pos_rows, D}, {D, 1}},
          View{table_.data() + first_pos * D, {pos_rows, D}, {D, 1}});
  int64_t row = 0;
  for (engine::Parameter* token : {cls_token, dist_token, reg_token}) {
    if (!token) continue;
    const int64_t rows = token->value.numel() / D;
    const Tensor src = Tensor::view(ctx.eng, token->value.data(), {rows, D});
    const Tensor dst = Tensor::view(ctx.eng, table_.data() + row * D, {rows, D});
    if (embed_prefix && pos_embed)
      add_(ctx, dst, src, dst);
    else
      copy_(ctx, src.as_view(), dst.as_view());
    row += rows;
  }
  copy_(ctx, patch_tokens.as_view(), View{buf.tokens.data() + P * D, {B, L, D}, {N * D, D, 1}});
  return add_table_.forward(ctx, buf.tokens, table_);
}

const Tensor& PosEmbed::backward(Context& ctx, const Tensor& diff_dst) {
  Buffers& buf = buffers_.current("PosEmbed");
  const int64_t B = diff_dst.dim(0), L = num_patches, P = num_prefix, D = embed_dim, N = L + P;
  const int64_t first_pos = embed_prefix ? 0 : P, pos_rows = N - first_pos;
  add_table_.backward(ctx, diff_dst, diff_table_);
  // Each trained part of the table takes the gradient of its rows.
  if (pos_embed && pos_embed->trainable)
    copy_(ctx, View{diff_table_.data() + first_pos * D, {pos_rows, D}, {D, 1}},
          View{pos_embed->grad.data(), {pos_rows, D}, {D, 1}});
  int64_t row = 0;
  for (engine::Parameter* token : {cls_token, dist_token, reg_token}) {
    if (!token) continue;
    const int64_t rows = token->value.numel() / D;
    copy_(ctx, View{diff_table_.data() + row * D, {rows, D}, {D, 1}},
          View{token->grad.data(), {rows, D}, {D, 1}});
    row += rows;
  }
  copy_(ctx, View{diff_dst.data() + P * D, {B, L, D}, {N * D, D, 1}},
        buf.diff_patch_tokens.as_view());
  return buf.diff_patch_tokens;
}

void PosEmbed::fill_prefix(float* table) const {
  const int64_t D = embed_dim;
  int64_t row = 0;
  for (const engine::Parameter* token : {cls_token, dist_token, reg_token}) {
    if (!token) continue;
    const int64_t n = token->value.numel();
    for (int64_t i = 0; i < n; ++i)
      table[row * D + i] =
          token->value[i] + (embed_prefix && pos_embed ? pos_embed->value[row * D + i] : 0.0f);
    row += n / D;
  }
}

std::unique_ptr<FusedStep> PosEmbed::fused(FusedBuild& f, const memory& patch_tokens,
                                           const memory& x) const {
  const int64_t B = f.images, L = num_patches, P = num_prefix, D = embed_dim, N = L + P;
  auto p = std::make_unique<Fused>();
  p->images = B, p->tokens = N, p->prefix_rows = P, p->dim = D;
  p->patch_tokens =
      memory(fused_desc({B, L, D}, dt::f32), f.ctx.eng, patch_tokens.get_data_handle());
  if (pos_embed) {
    const memory pos = f.packed.vector(f.ctx, *pos_embed, embed_prefix ? P * D : 0, L * D);
    p->pos_rows = memory(fused_desc({1, L, D}, dt::f32), f.ctx.eng, pos.get_data_handle());
    p->add_pos = dnnl::binary({{dnnl::algorithm::binary_add, p->patch_tokens.get_desc(),
                                p->pos_rows.get_desc(), p->patch_tokens.get_desc()},
                               f.ctx.eng});
  }
  p->x = static_cast<float*>(x.get_data_handle());
  p->x_patch_rows = memory(fused_desc({B, L, D}, dt::f32, {N * D, D, 1}), f.ctx.eng, p->x + P * D);
  p->place = dnnl::reorder(p->patch_tokens, p->x_patch_rows);
  if (P > 0)
    p->prefix = f.packed.derived(f.ctx, this, 0, fused_desc({P, D}, dt::f32),
                                 [this](float* table) { fill_prefix(table); });
  return p;
}

void PosEmbed::Fused::run(dnnl::stream& s) {
  if (add_pos)
    add_pos.execute(
        s,
        {{DNNL_ARG_SRC_0, patch_tokens}, {DNNL_ARG_SRC_1, pos_rows}, {DNNL_ARG_DST, patch_tokens}});
  place.execute(s, patch_tokens, x_patch_rows);
  if (prefix_rows == 0) return;
  const float* table = static_cast<const float*>(prefix.get_data_handle());
  s.wait();  // the rows below are written by this thread, not by the stream
  for (int64_t b = 0; b < images; ++b) std::copy_n(table, prefix_rows * dim, x + b * tokens * dim);
}

std::vector<double> bicubic_weights(int64_t in, int64_t out, bool antialias) {
  engine::require(in > 0 && out > 0, "bicubic_weights: sizes must be positive");
  std::vector<double> w(static_cast<size_t>(out * in), 0.0);
  // torch computes the scale in float (area_pixel_compute_scale) and the taps in float for an
  // f32 tensor; double here differs from it by rounding only.
  const double scale = static_cast<double>(static_cast<float>(in) / static_cast<float>(out));
  if (!antialias) {
    // aten's upsample_bicubic2d: source x = scale·(i + 0.5) - 0.5, four taps at floor(x) - 1
    // .. floor(x) + 2 clamped into the input, Keys' cubic with a = -0.75.
    const double A = -0.75;
    auto near = [A](double x) { return ((A + 2) * x - (A + 3)) * x * x + 1; };       // |x| <= 1
    auto far = [A](double x) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; };  // 1 < |x| < 2
    for (int64_t i = 0; i < out; ++i) {
      const double x = scale * (double(i) + 0.5) - 0.5;
      const double x0 = std::floor(x), t = x - x0;
      const double c[4] = {far(t + 1), near(t), near(1 - t), far(2 - t)};
      for (int k = 0; k < 4; ++k) {
        const int64_t j = std::clamp<int64_t>(int64_t(x0) - 1 + k, 0, in - 1);
        w[i * in + j] += c[k];
      }
    }
    return w;
  }
  // aten's _upsample_bicubic2d_aa (after PIL): centre scale·(i + 0.5), support 2·max(scale, 1),
  // a = -0.5 evaluated at (j - centre + 0.5)/max(scale, 1), rows normalised to sum 1.
  const double a = -0.5, support = 2.0 * std::max(scale, 1.0), inv = 1.0 / std::max(scale, 1.0);
  auto filter = [a](double x) {
    x = std::abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
  };
  for (int64_t i = 0; i < out; ++i) {
    const double center = scale * (double(i) + 0.5);
    const int64_t lo = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
    const int64_t hi = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), in);
    double total = 0;
    for (int64_t j = lo; j < hi; ++j)
      total += w[i * in + j] = filter((double(j) - center + 0.5) * inv);
    if (total != 0)
      for (int64_t j = lo; j < hi; ++j) w[i * in + j] /= total;
  }
  return w;
}

void resample_grid(const float* src, int64_t old_h, int64_t old_w, float* dst, int64_t new_h,
                   int64_t new_w, int64_t D, bool antialias) {
  // Separable: rows first into [new_h, old_w, D], then columns.
  const std::vector<double> wh = bicubic_weights(old_h, new_h, antialias);
  const std::vector<double> ww = bicubic_weights(old_w, new_w, antialias);
  std::vector<double> rows(static_cast<size_t>(new_h * old_w * D), 0.0);
  for (int64_t i = 0; i < new_h; ++i)
    for (int64_t a = 0; a < old_h; ++a) {
      const double f = wh[i * old_h + a];
      if (f == 0) continue;
      for (int64_t b = 0; b < old_w * D; ++b) rows[i * old_w * D + b] += f * src[a * old_w * D + b];
    }
  for (int64_t i = 0; i < new_h; ++i)
    for (int64_t j = 0; j < new_w; ++j) {
      float* out = dst + (i * new_w + j) * D;
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0;
        for (int64_t b = 0; b < old_w; ++b)
          acc += ww[j * old_w + b] * rows[(i * old_w + b) * D + d];
        out[d] = static_cast<float>(acc);
      }
    }
}

}  // namespace vit
