// The self-attention lab's variants (VitConfig's pos_embed and attn_* settings): each against a
// naive loop, by finite differences, fused equal to the layers, and the properties a wrong
// implementation fails (a model without positions is blind to the patches' order; a window
// hides what lies outside it).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <optional>

#include <nlohmann/json.hpp>

#include "check.hpp"
#include "engine/error.hpp"
#include "engine/safetensors.hpp"
#include "vit/additive_scores.hpp"
#include "vit/block.hpp"
#include "vit/inference.hpp"
#include "vit/multi_head_attention.hpp"
#include "vit/vision_transformer.hpp"

using namespace vit;
using check::max_abs_diff, check::parameter_targets, check::randomize_for_fd,
    check::randomize_parameters;

namespace {

// A 4×4 grid of patches (N = 17 with the cls token), D 8, two heads, one or two blocks.
VitConfig lab_config() {
  VitConfig c;
  c.img_size = 16, c.patch_size = 4, c.in_chans = 1, c.num_classes = 3;
  c.embed_dim = 8, c.depth = 2, c.num_heads = 2, c.mlp_ratio = 2.0;
  return c;
}

// A Linear layer by the book, in double: rows [T, in] -> [T, out], x·Wᵀ + b.
template <class Rows>
std::vector<double> naive_linear(const engine::Linear& l, const Rows& x, int64_t T) {
  const int64_t in = l.in_features, out = l.out_features;
  const float* W = l.weight->value.data();
  std::vector<double> y(size_t(T * out));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double s = l.bias ? double(l.bias->value[o]) : 0.0;
      for (int64_t i = 0; i < in; ++i) s += double(x[t * in + i]) * W[o * in + i];
      y[size_t(t * out + o)] = s;
    }
  return y;
}

// The exact-attention family by the book, in double: scores q·kᵀ/√d per head, or additive
// wᵀ tanh(W_q q + W_k k); the window's mask; softmax, relu(s)/n or σ(s − log n) over the
// allowed keys; the values mixed; proj.
std::vector<double> naive_attention(const MultiHeadAttention& attn, const VitConfig& c,
                                    const Tensor& x) {
  const int64_t B = x.dim(0), N = x.dim(1), D = c.embed_dim, H = c.num_heads, d = D / H;
  const int64_t P = c.num_prefix_tokens(), G = c.grid(), R = c.attn_window;
  const double n_keys = double(c.keys_per_query());
  auto allowed = [&](int64_t i, int64_t j) {
    if (R == 0 || i < P || j < P) return true;
    const int64_t dr = (i - P) / G - (j - P) / G, dc = (i - P) % G - (j - P) % G;
    return std::max(std::abs(dr), std::abs(dc)) <= R;
  };
  const std::vector<double> qkv = naive_linear(attn.qkv, x, B * N);
  std::vector<double> merged(B * N * D);
  // Linformer: the keys and values replaced by E·k and F·v over the sequence, K rows of them.
  const int64_t Nk = c.attn_lowrank > 0 ? c.attn_lowrank : N;
  std::vector<double> keys(B * Nk * D), values(B * Nk * D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < Nk; ++j)
      for (int64_t e = 0; e < D; ++e) {
        double k = 0, v = 0;
        for (int64_t n = 0; n < N; ++n) {
          const double kn = qkv[(b * N + n) * 3 * D + D + e],
                       vn = qkv[(b * N + n) * 3 * D + 2 * D + e];
          if (c.attn_lowrank == 0) {
            k += n == j ? kn : 0.0, v += n == j ? vn : 0.0;
          } else {
            k += attn.lowrank_k->weight->value[j * N + n] * kn;
            v += attn.lowrank_v->weight->value[j * N + n] * vn;
          }
        }
        keys[(b * Nk + j) * D + e] = k, values[(b * Nk + j) * D + e] = v;
      }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i) {
        std::vector<double> w(Nk, 0.0);
        double mx = -1e300;
        for (int64_t j = 0; j < Nk; ++j) {
          if (!allowed(i, j)) continue;
          const double* q = &qkv[(b * N + i) * 3 * D + h * d];
          const double* k = &keys[(b * Nk + j) * D + h * d];
          double s = 0;
          if (attn.additive) {
            const int64_t A = c.additive_dim();
            const float* Wq = attn.additive->w_q->value.data() + h * A * d;
            const float* Wk = attn.additive->w_k->value.data() + h * A * d;
            for (int64_t a = 0; a < A; ++a) {
              double pre = 0;
              for (int64_t e = 0; e < d; ++e) pre += Wq[a * d + e] * q[e] + Wk[a * d + e] * k[e];
              s += attn.additive->w->value[h * A + a] * std::tanh(pre);
            }
          } else {
            for (int64_t e = 0; e < d; ++e) s += q[e] * k[e];
            s /= std::sqrt(double(d));
          }
          w[j] = s;
          mx = std::max(mx, w[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < Nk; ++j) {
          if (!allowed(i, j)) continue;
          if (c.attn_norm == "softmax") sum += (w[j] = std::exp(w[j] - mx));
          if (c.attn_norm == "relu") w[j] = std::max(w[j], 0.0) / n_keys;
          if (c.attn_norm == "sigmoid") w[j] = 1 / (1 + std::exp(-(w[j] - std::log(n_keys))));
        }
        if (c.attn_norm == "softmax")
          for (double& v : w) v /= sum;
        for (int64_t e = 0; e < d; ++e) {
          double s = 0;
          for (int64_t j = 0; j < Nk; ++j) s += w[j] * values[(b * Nk + j) * D + h * d + e];
          merged[(b * N + i) * D + h * d + e] = s;
        }
      }
  return naive_linear(attn.proj, merged, B * N);
}

// The exact-attention variants: each normalisation, global and windowed, with and without a
// register token beside the cls token.
std::vector<VitConfig> exact_variants() {
  std::vector<VitConfig> out;
  for (const char* norm : {"softmax", "relu", "sigmoid"})
    for (int64_t window : {0, 1})
      for (int64_t regs : {0, 1}) {
        VitConfig c = lab_config();
        c.attn_norm = norm, c.attn_window = window, c.reg_tokens = regs;
        if (norm == std::string("softmax") && window == 0 && regs == 0) continue;  // test_vit's
        out.push_back(c);
      }
  // The window as blocks against their halo: b = 2R dividing the 4×4 grid (R 1) or one block
  // larger than it (R 2, 3); a 5×5 grid with padded blocks; without any prefix token.
  for (const char* norm : {"softmax", "relu", "sigmoid"})
    for (int64_t window : {1, 2})
      for (int64_t regs : {0, 1}) {
        VitConfig c = lab_config();
        c.attn_norm = norm, c.attn_window = window, c.reg_tokens = regs;
        c.attn_window_impl = "blocks";
        out.push_back(c);
      }
  for (int64_t window : {1, 2, 3}) {
    VitConfig c = lab_config();
    c.img_size = 20, c.attn_window = window, c.attn_window_impl = "blocks";
    c.attn_norm = window == 2 ? "sigmoid" : "softmax";
    out.push_back(c);
  }
  for (const char* norm : {"softmax", "relu"}) {
    VitConfig c = lab_config();
    c.class_token = false, c.global_pool = "avg", c.attn_window = 1, c.attn_norm = norm;
    c.attn_window_impl = "blocks";
    out.push_back(c);
  }
  for (const char* norm : {"softmax", "relu"}) {
    VitConfig c = lab_config();
    c.attn_score = "additive", c.attn_norm = norm;
    out.push_back(c);
  }
  VitConfig c = lab_config();
  c.attn_score = "additive", c.attn_additive_dim = 3, c.attn_window = 1, c.reg_tokens = 1;
  out.push_back(c);
  for (const char* norm : {"softmax", "sigmoid"}) {  // Linformer, K < N
    c = lab_config();
    c.attn_lowrank = 6, c.attn_norm = norm;
    out.push_back(c);
  }
  c = lab_config();
  c.attn_lowrank = 5, c.attn_norm = "relu", c.reg_tokens = 1;
  out.push_back(c);
  return out;
}

// Under softmax, what W_q adds to a query's scores is the same for every key while tanh is
// near linear, and the softmax ignores it: inside attention, W_q's and W_k's gradients are
// mostly tanh's curvature, near float32's rounding of the loss. Their backward is checked on
// the scores themselves (AdditiveScores by FD, below); inside attention they are left out.
std::vector<check::GradTarget> targets_but_additive(ParameterStore& store, int64_t limit) {
  std::vector<check::GradTarget> out;
  for (const check::GradTarget& t : parameter_targets(store, limit))
    if (!t.name.ends_with(".additive_q") && !t.name.ends_with(".additive_k")) out.push_back(t);
  return out;
}

std::string describe(const VitConfig& c) {
  return nlohmann::json(c).dump() + " attn_window_impl " + c.attn_window_impl;
}

}  // namespace

TEST_CASE("attention lab: the normalisations and the window against a naive loop and by FD") {
  Context ctx(41);
  std::mt19937_64 rng(411);
  for (const VitConfig& c : exact_variants()) {
    CAPTURE(describe(c));
    ParameterStore store;
    MultiHeadAttention attn(store, "attn", c);
    REQUIRE(attn.halo.has_value() == (c.attn_window_impl == "blocks"));
    store.allocate(ctx.eng);
    randomize_parameters(store, rng, 0.6f);
    Tensor x = check::random_tensor(ctx, {2, c.num_tokens(), c.embed_dim}, rng);
    const Tensor& y = attn.forward(ctx, x);
    ctx.wait();
    check::check_close("attention", y, naive_attention(attn, c, x), 1e-4, 1e-5);

    auto forward = [&]() -> const Tensor& { return attn.forward(ctx, x); };
    Tensor r = check::random_tensor(ctx, y.dims(), rng);
    const Tensor& dx = attn.backward(ctx, r);
    ctx.wait();
    auto targets = targets_but_additive(store, 1 << 30);
    targets.push_back({"x", x.data(), x.numel(), dx.data()});
    // relu(s)/n has a kink at every score: a step crosses some of them. With the halo blocks
    // it is left to the test that their gradients equal the masked scores' (checked here).
    if (c.attn_norm != "relu" || !attn.halo)
      check::check_gradients(ctx, forward, r, targets, 1e-3f, c.attn_norm == "relu" ? 0.4 : 0.05);
  }
}

TEST_CASE("attention lab: additive scores against a naive loop and by FD, strided q and k") {
  Context ctx(45);
  std::mt19937_64 rng(451);
  VitConfig c = lab_config();
  c.attn_score = "additive", c.attn_additive_dim = 3;
  const int64_t B = 2, H = c.num_heads, Nq = 5, Nk = 4, d = c.head_dim(), A = 3;
  ParameterStore store;
  AdditiveScores scores(store, "attn", c, 0.5f);
  store.allocate(ctx.eng);
  randomize_parameters(store, rng, 0.8f);
  // q and k as heads of token rows [B, N, H, d] with a gap after each row, as attention reads
  // them from its qkv output.
  const int64_t row = H * d + 3;
  Tensor q_rows = check::random_tensor(ctx, {B, Nq, row}, rng);
  Tensor k_rows = check::random_tensor(ctx, {B, Nk, row}, rng);
  Tensor dq_rows(ctx.eng, {B, Nq, row}), dk_rows(ctx.eng, {B, Nk, row});
  auto heads = [&](const Tensor& t, int64_t N) {
    return View{t.data(), {B, H, N, d}, {N * row, d, row, 1}};
  };
  const Tensor& s = scores.forward(ctx, heads(q_rows, Nq), heads(k_rows, Nk));
  ctx.wait();
  std::vector<double> want(size_t(B * H * Nq * Nk));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Nq; ++i)
        for (int64_t j = 0; j < Nk; ++j) {
          double sum = 0;
          for (int64_t a = 0; a < A; ++a) {
            double pre = 0;
            for (int64_t e = 0; e < d; ++e)
              pre +=
                  scores.w_q->value[(h * A + a) * d + e] * q_rows[(b * Nq + i) * row + h * d + e] +
                  scores.w_k->value[(h * A + a) * d + e] * k_rows[(b * Nk + j) * row + h * d + e];
            sum += scores.w->value[h * A + a] * std::tanh(pre);
          }
          want[size_t(((b * H + h) * Nq + i) * Nk + j)] = 0.5 * sum;
        }
  check::check_close("additive scores", s, want, 1e-4, 1e-5);

  auto forward = [&]() -> const Tensor& {
    return scores.forward(ctx, heads(q_rows, Nq), heads(k_rows, Nk));
  };
  Tensor r = check::random_tensor(ctx, s.dims(), rng);
  scores.backward(ctx, r, heads(dq_rows, Nq), heads(dk_rows, Nk));
  ctx.wait();
  for (int64_t t = 0; t < B * Nq; ++t)  // the gaps are not written
    for (int64_t e = H * d; e < row; ++e) CHECK(dq_rows[t * row + e] == 0.0f);
  auto targets = parameter_targets(store);
  targets.push_back({"q", q_rows.data(), q_rows.numel(), dq_rows.data()});
  targets.push_back({"k", k_rows.data(), k_rows.numel(), dk_rows.data()});
  // The gaps have a zero gradient both ways; every other element must match.
  check::check_gradients(ctx, forward, r, targets);
}

namespace {

// Performer's attention by its definition (vit/performer.hpp), in double, from q, k, v as
// attention makes them (x·W_qkv + b), with the model's random features.
std::vector<double> naive_performer(const MultiHeadAttention& attn, const VitConfig& c,
                                    const Tensor& x) {
  const int64_t B = x.dim(0), N = x.dim(1), D = c.embed_dim, H = c.num_heads, d = D / H;
  const int64_t M = c.attn_features;
  const double s = 1.0 / std::pow(double(d), 0.25), eps = 1e-4, scale = 1.0 / std::sqrt(double(M));
  const std::vector<double> qkv = naive_linear(attn.qkv, x, B * N);
  std::vector<double> merged(B * N * D);
  const float* omega = attn.favor->w->value.data();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      auto at = [&](int64_t n, int which, int64_t e) {
        return qkv[(b * N + n) * 3 * D + which * D + h * d + e];
      };
      std::vector<double> uq(N * M), uk(N * M);
      double k_max = -1e300;
      for (int64_t n = 0; n < N; ++n) {
        double k_sq = 0;
        for (int64_t e = 0; e < d; ++e) k_sq += s * at(n, 1, e) * s * at(n, 1, e);
        for (int64_t m = 0; m < M; ++m) {
          double dq = 0, dk = 0;
          for (int64_t e = 0; e < d; ++e) dq += omega[m * d + e] * s * at(n, 0, e);
          for (int64_t e = 0; e < d; ++e) dk += omega[m * d + e] * s * at(n, 1, e);
          uq[n * M + m] = dq;
          uk[n * M + m] = dk - k_sq / 2;
          k_max = std::max(k_max, uk[n * M + m]);
        }
      }
      std::vector<double> phi_q(N * M), phi_k(N * M);
      for (int64_t n = 0; n < N; ++n) {
        const double q_max = *std::max_element(&uq[n * M], &uq[n * M] + M);
        for (int64_t m = 0; m < M; ++m) {
          phi_q[n * M + m] = (std::exp(uq[n * M + m] - q_max) + eps) * scale;
          phi_k[n * M + m] = (std::exp(uk[n * M + m] - k_max) + eps) * scale;
        }
      }
      for (int64_t i = 0; i < N; ++i) {
        double den = 0;
        std::vector<double> num(d, 0.0);
        for (int64_t j = 0; j < N; ++j) {
          double a = 0;
          for (int64_t m = 0; m < M; ++m) a += phi_q[i * M + m] * phi_k[j * M + m];
          den += a;
          for (int64_t e = 0; e < d; ++e) num[e] += a * at(j, 2, e);
        }
        for (int64_t e = 0; e < d; ++e) merged[(b * N + i) * D + h * d + e] = num[e] / den;
      }
    }
  return naive_linear(attn.proj, merged, B * N);
}

}  // namespace

TEST_CASE("attention lab: Performer against its definition, by FD, features orthogonal") {
  Context ctx(47);
  std::mt19937_64 rng(471);
  for (const bool qk_norm : {false, true}) {
    CAPTURE(qk_norm);
    VitConfig c = lab_config();
    c.attn_features = 12, c.qk_norm = qk_norm;  // 3 blocks of d = 4
    ParameterStore store;
    MultiHeadAttention attn(store, "attn", c);
    store.allocate(ctx.eng);
    attn.init_weights(ctx);  // the features; the rest random, norm scales near 1
    randomize_for_fd(store, rng, 0.6f);
    // Within a block of d rows the directions are orthogonal; the lengths vary.
    const float* w = attn.favor->w->value.data();
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t j = 0; j < i; ++j) {
        double dot = 0, ni = 0, nj = 0;
        for (int64_t e = 0; e < 4; ++e)
          dot += w[i * 4 + e] * w[j * 4 + e], ni += w[i * 4 + e] * w[i * 4 + e],
              nj += w[j * 4 + e] * w[j * 4 + e];
        CHECK(std::abs(dot) < 1e-5 * std::sqrt(ni * nj));
      }
    Tensor x = check::random_tensor(ctx, {2, c.num_tokens(), c.embed_dim}, rng);
    const Tensor& y = attn.forward(ctx, x);
    ctx.wait();
    if (!qk_norm) check::check_close("performer", y, naive_performer(attn, c, x), 1e-4, 1e-5);
    auto forward = [&]() -> const Tensor& { return attn.forward(ctx, x); };
    Tensor r = check::random_tensor(ctx, y.dims(), rng);
    const Tensor& dx = attn.backward(ctx, r);
    ctx.wait();
    auto targets = parameter_targets(store);
    CHECK(std::none_of(targets.begin(), targets.end(),
                       [](const check::GradTarget& t) { return t.name == "attn.performer_w"; }));
    targets.push_back({"x", x.data(), x.numel(), dx.data()});
    // The exp of oneDNN's jit kernels rounds unevenly from input to input: a step of 1e-3
    // turns it into 3 % errors of the differences; 1e-2 does not.
    check::check_gradients(ctx, forward, r, targets, 1e-2f);
  }
}

TEST_CASE("attention lab: Performer approaches softmax attention as its features grow") {
  Context ctx(48);
  std::mt19937_64 rng(481);
  VitConfig exact = lab_config();
  ParameterStore exact_store;
  MultiHeadAttention reference(exact_store, "attn", exact);
  exact_store.allocate(ctx.eng);
  randomize_parameters(exact_store, rng, 0.5f);
  Tensor x = check::random_tensor(ctx, {2, exact.num_tokens(), exact.embed_dim}, rng);
  Tensor want(ctx.eng, x.dims());
  want.copy_from(reference.forward(ctx, x));
  ctx.wait();
  std::vector<double> errors;
  for (const int64_t M : {8, 32, 128, 512, 2048}) {
    VitConfig c = exact;
    c.attn_features = M;
    ParameterStore store;
    MultiHeadAttention attn(store, "attn", c);
    store.allocate(ctx.eng);
    for (const engine::Parameter& p : exact_store.parameters())
      store[p.name].value.copy_from(p.value);
    double error = 0;  // mean over draws of the features of the mean |error|
    for (int draw = 0; draw < 6; ++draw) {
      attn.favor->redraw(rng);
      const Tensor& y = attn.forward(ctx, x);
      ctx.wait();
      for (int64_t i = 0; i < y.numel(); ++i) error += std::abs(y[i] - want[i]) / double(y.numel());
    }
    errors.push_back(error / 6);
    MESSAGE("M " << M << ": mean |Performer - softmax| " << errors.back());
  }
  // Monte Carlo's 1/√M would be 16× from 8 to 2048 features; ε = 1e-4 sets a floor that the
  // largest M nears (here 0.028, 0.013, 0.0059, 0.0046, 0.0032).
  for (size_t i = 1; i < errors.size(); ++i) CHECK(errors[i] < errors[i - 1]);
  CHECK(errors.back() < errors.front() / 6);
}

TEST_CASE("attention lab: Linformer with K = N and E = F = identity is exact attention") {
  Context ctx(46);
  std::mt19937_64 rng(461);
  VitConfig exact = lab_config(), linformer = lab_config();
  linformer.attn_lowrank = linformer.num_tokens();
  ParameterStore exact_store, linformer_store;
  MultiHeadAttention a(exact_store, "attn", exact), b(linformer_store, "attn", linformer);
  exact_store.allocate(ctx.eng);
  linformer_store.allocate(ctx.eng);
  randomize_parameters(exact_store, rng, 0.6f);
  for (const engine::Parameter& p : exact_store.parameters())
    linformer_store[p.name].value.copy_from(p.value);
  const int64_t N = exact.num_tokens();
  for (engine::Linear* l : {&*b.lowrank_k, &*b.lowrank_v}) {
    l->weight->value.zero();
    for (int64_t i = 0; i < N; ++i) l->weight->value[i * N + i] = 1.0f;
  }
  Tensor x = check::random_tensor(ctx, {2, N, exact.embed_dim}, rng);
  Tensor want(ctx.eng, x.dims());
  want.copy_from(a.forward(ctx, x));
  CHECK(max_abs_diff(ctx, b.forward(ctx, x), want) < 1e-6);
  // And not with another E: the test can fail.
  b.lowrank_k->weight->value[1] = 0.5f;
  CHECK(max_abs_diff(ctx, b.forward(ctx, x), want) > 1e-3);
}

TEST_CASE("attention lab: score_bias masks exactly the keys outside the window") {
  VitConfig c = lab_config();
  c.attn_window = 1;
  const std::vector<float> bias = score_bias(c);
  const int64_t N = c.num_tokens();
  REQUIRE(bias.size() == size_t(N * N));
  // Patch (1, 1) is token 1 + 5: it sees rows 0-2, columns 0-2 and the cls token.
  int64_t open = 0;
  for (int64_t j = 0; j < N; ++j) open += bias[6 * N + j] == 0.0f;
  CHECK(open == 1 + 9);
  CHECK(bias[6 * N + 0] == 0.0f);                          // the cls token
  CHECK(bias[6 * N + 1 + 3] == kMasked);                   // patch (0, 3)
  CHECK(bias[6 * N + 1 + 2 * 4 + 2] == 0.0f);              // patch (2, 2)
  CHECK(bias[(1 + 15) * N + 1 + 0] == kMasked);            // (3, 3) does not see (0, 0)
  for (int64_t j = 0; j < N; ++j) CHECK(bias[j] == 0.0f);  // the cls token sees everything
  c.attn_norm = "sigmoid";
  const float shift = -float(std::log(double(c.keys_per_query())));
  CHECK(c.keys_per_query() == 9 + 1);
  CHECK(score_bias(c)[6 * N + 0] == shift);
  c.attn_window = 0;
  CHECK(score_bias(c) == std::vector<float>(size_t(N * N), -float(std::log(double(N)))));
  c.attn_norm = "relu";
  CHECK(score_bias(c).empty());
  CHECK(score_scale(c) == doctest::Approx(1.0 / (std::sqrt(4.0) * double(N))));
}

TEST_CASE("attention lab: MAE's sine-cosine table equals numpy's get_2d_sincos_pos_embed") {
  const engine::SafetensorsFile ref(std::filesystem::path(VIT_FIXTURES) /
                                    "sincos_pos_embed.safetensors");
  struct Case {
    const char* name;
    int64_t dim, grid;
    bool embed_class;
  };
  for (const Case& k : {Case{"d16_grid4_cls", 16, 4, true}, Case{"d8_grid3_none", 8, 3, false},
                        Case{"d64_grid14_cls", 64, 14, true}}) {
    CAPTURE(k.name);
    VitConfig c = lab_config();
    c.embed_dim = k.dim, c.num_heads = 2, c.img_size = k.grid * c.patch_size;
    c.no_embed_class = !k.embed_class, c.pos_embed = "sincos";
    std::vector<float> want(size_t(c.pos_embed_len() * k.dim)), got(want.size());
    ref.read_f32(k.name, {c.pos_embed_len(), k.dim}, want.data());
    sincos_pos_embed(c, got.data());
    double worst = 0;
    for (size_t i = 0; i < want.size(); ++i)
      worst = std::max(worst, double(std::abs(got[i] - want[i])));
    CHECK(worst < 1e-6);
  }
}

TEST_CASE(
    "attention lab: whole models with each variant, gradients by FD and the fused path equal "
    "to the layers") {
  Context ctx(42);
  std::mt19937_64 rng(421);
  std::vector<VitConfig> configs;
  for (const char* pos : {"sincos", "none"}) {
    VitConfig c = lab_config();
    c.pos_embed = pos;
    configs.push_back(c);
  }
  VitConfig c = lab_config();
  // DINOv2's layout with a fixed table; pooled by avg, so that every query of the last block
  // matters (with token pooling only the cls token's does, and its q gradient is tiny).
  c.pos_embed = "sincos", c.no_embed_class = true, c.reg_tokens = 2, c.global_pool = "avg";
  configs.push_back(c);
  for (const char* norm : {"relu", "sigmoid"}) {
    c = lab_config();
    c.attn_norm = norm;
    configs.push_back(c);
  }
  c = lab_config();
  c.attn_window = 1, c.attn_norm = "relu", c.qk_norm = true;
  configs.push_back(c);
  c = lab_config();
  c.attn_window = 2, c.global_pool = "avg", c.fc_norm = true;
  configs.push_back(c);
  c = lab_config();  // the window as halo blocks, on a 5×5 grid with padded blocks
  c.img_size = 20, c.attn_window = 1, c.attn_norm = "sigmoid", c.qk_norm = true;
  c.reg_tokens = 1, c.attn_window_impl = "blocks";
  configs.push_back(c);
  c = lab_config();
  c.attn_window = 2, c.global_pool = "avg", c.attn_window_impl = "blocks";
  configs.push_back(c);
  c = lab_config();
  c.attn_score = "additive", c.attn_additive_dim = 6;
  configs.push_back(c);
  c = lab_config();
  c.attn_score = "additive", c.attn_norm = "sigmoid", c.qk_norm = true, c.attn_window = 1;
  configs.push_back(c);
  c = lab_config();
  c.attn_score = "additive", c.attn_norm = "relu", c.attn_window = 2;
  configs.push_back(c);
  c = lab_config();
  c.attn_lowrank = 6;
  configs.push_back(c);
  c = lab_config();
  c.attn_lowrank = 4, c.qk_norm = true, c.attn_norm = "sigmoid", c.global_pool = "avg";
  configs.push_back(c);
  c = lab_config();
  c.attn_features = 8, c.global_pool = "avg";
  configs.push_back(c);
  for (const VitConfig& config : configs) {
    CAPTURE(describe(config));
    ParameterStore store;
    VisionTransformer model(store, config);
    store.allocate(ctx.eng);
    model.init_weights(ctx);
    const engine::Parameter* pos = store.find("pos_embed");
    CHECK((pos != nullptr) == (config.pos_embed != "none"));
    if (pos) CHECK(pos->trainable == (config.pos_embed == "learn"));
    CHECK((store.find("blocks.1.attn.additive_w") != nullptr) == (config.attn_score == "additive"));
    const engine::Parameter* e = store.find("blocks.0.attn.lowrank_k.weight");
    CHECK((e != nullptr) == (config.attn_lowrank > 0));
    if (e) CHECK(e->dims == Dims{config.attn_lowrank, config.num_tokens()});
    randomize_for_fd(store, rng, 0.4f);
    Tensor patches = check::random_tensor(ctx, {2, config.num_patches(), config.patch_dim()}, rng);
    auto forward = [&]() -> const Tensor& { return model.forward(ctx, patches); };
    Tensor r = check::random_tensor(ctx, forward().dims(), rng);
    store.zero_grad();
    model.backward(ctx, r);
    ctx.wait();
    // A deep float32 forward: a larger step keeps rounding noise below the tolerance. Not with
    // ReLU attention: every parameter here moves thousands of scores, some of which cross zero
    // on both sides of any step, so no central difference is the slope at the point. Nor with
    // additive scores, where q's part of the scores is nearly constant per query (see
    // targets_but_additive) and the gradients of what makes q fall to rounding. Their layers are
    // checked by FD above; the model around them is the same as for every other variant.
    if (config.attn_norm != "relu" && config.attn_score != "additive")
      check::check_gradients(ctx, forward, r, targets_but_additive(store, 6), 1e-2f);

    model.train(false);
    Tensor want(ctx.eng, {2, config.num_outputs()});
    want.copy_from(model.forward(ctx, patches));
    ctx.wait();
    for (auto precision : {engine::Precision::f32, engine::Precision::bf16}) {
      if (!engine::precision_supported(precision)) continue;
      const float tolerance = precision == engine::Precision::f32 ? 1e-5f : 3e-2f;
      VitInference fused(model, store, precision);
      CHECK(max_abs_diff(ctx, fused.forward(ctx, patches), want) < tolerance);
      // A plan for one image shares the activations' storage with the plan for two (and
      // runs between two runs of it): each still gives its own answer.
      Tensor first(ctx.eng, {1, config.num_patches(), config.patch_dim()});
      std::copy_n(patches.data(), first.numel(), first.data());
      const Tensor& one = fused.forward(ctx, first);
      ctx.wait();
      float worst = 0;
      for (int64_t k = 0; k < config.num_outputs(); ++k)
        worst = std::max(worst, std::abs(one.data()[k] - want.data()[k]));
      CHECK(worst < tolerance);
      CHECK(max_abs_diff(ctx, fused.forward(ctx, patches), want) < tolerance);
    }
  }
}

TEST_CASE("attention lab: without positions a ViT cannot tell the patches' order") {
  Context ctx(43);
  std::mt19937_64 rng(431);
  for (const std::string pos : {"none", "learn", "sincos"}) {
    CAPTURE(pos);
    VitConfig c = lab_config();
    c.pos_embed = pos;
    ParameterStore store;
    VisionTransformer model(store, c);
    store.allocate(ctx.eng);
    model.init_weights(ctx);
    randomize_parameters(store, rng, 0.4f);
    model.train(false);
    const int64_t L = c.num_patches(), K = c.patch_dim();
    Tensor patches = check::random_tensor(ctx, {1, L, K}, rng);
    Tensor permuted(ctx.eng, {1, L, K});
    std::vector<int64_t> order(static_cast<size_t>(L));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t l = 0; l < L; ++l)
      std::copy_n(patches.data() + order[l] * K, K, permuted.data() + l * K);
    Tensor logits(ctx.eng, {1, c.num_classes});
    logits.copy_from(model.forward(ctx, patches));
    const double moved = max_abs_diff(ctx, model.forward(ctx, permuted), logits);
    VitInference fused(model, store, engine::Precision::f32);
    const double moved_fused = max_abs_diff(ctx, fused.forward(ctx, permuted), logits);
    if (c.pos_embed == "none") {  // rounding only: 1e-8 here
      CHECK(moved < 1e-6);
      CHECK(moved_fused < 1e-6);
    } else {  // the positions make the order matter: 3e-4 and 9e-4 here
      CHECK(moved > 3e-5);
      CHECK(moved_fused > 3e-5);
    }
  }
}

TEST_CASE("attention lab: a window hides the patches outside it from a token's block output") {
  Context ctx(44);
  std::mt19937_64 rng(441);
  for (const std::string impl : {"mask", "blocks"})
    for (const std::string norm : {"softmax", "relu", "sigmoid"}) {
      CAPTURE(norm);
      CAPTURE(impl);
      VitConfig c = lab_config();
      c.attn_window = 1, c.attn_norm = norm, c.depth = 1, c.attn_window_impl = impl;
      ParameterStore store;
      Block block(store, "blocks.0", c, 0.0f);
      store.allocate(ctx.eng);
      block.init_weights(ctx);
      randomize_parameters(store, rng, 0.6f);
      block.train(false);
      const int64_t N = c.num_tokens(), D = c.embed_dim;
      Tensor x = check::random_tensor(ctx, {1, N, D}, rng);
      Tensor base(ctx.eng, {1, N, D});
      base.copy_from(block.forward(ctx, x));
      ctx.wait();
      // Token 1 + 5 is patch (1, 1): patch (3, 3) is outside its window, (2, 2) inside.
      auto change_of_token = [&](int64_t token, int64_t perturbed) {
        std::vector<float> saved = check::copy_of(x.data() + perturbed * D, D);
        // Not a constant: LayerNorm would remove it.
        for (int64_t i = 0; i < D; ++i) x[perturbed * D + i] += 0.5f * float(i % 3) - 0.4f;
        const Tensor& y = block.forward(ctx, x);
        ctx.wait();
        double m = 0;
        for (int64_t i = 0; i < D; ++i)
          m = std::max(m, double(std::abs(y[token * D + i] - base[token * D + i])));
        std::copy(saved.begin(), saved.end(), x.data() + perturbed * D);
        return m;
      };
      CHECK(change_of_token(6, 1 + 15) == 0.0);  // (3, 3): outside, no effect at all
      CHECK(change_of_token(6, 1 + 10) > 1e-3);  // (2, 2): inside
      CHECK(change_of_token(0, 1 + 15) > 1e-3);  // the cls token sees every patch
      CHECK(change_of_token(1 + 15, 0) > 1e-3);  // and every patch sees it
    }
}

TEST_CASE("attention lab: a window's halo blocks and its masked scores, the same function") {
  // Forward and backward of the two formulations, from the same weights and inputs: equal to
  // rounding, gradients included, at every kink of relu (which a central difference can not
  // settle). Grids with and without padded blocks, with 0, 1 and 2 prefix tokens.
  Context ctx(45);
  std::mt19937_64 rng(451);
  for (const char* norm : {"softmax", "relu", "sigmoid"})
    for (int64_t img : {16, 20, 28, 32})
      for (int64_t window : {1, 2})
        for (int64_t prefix : {0, 1, 2}) {
          VitConfig c = lab_config();
          c.img_size = img, c.attn_norm = norm, c.attn_window = window;
          c.class_token = prefix > 0, c.reg_tokens = prefix > 1 ? 1 : 0;
          if (prefix == 0) c.global_pool = "avg";
          CAPTURE(describe(c));
          ParameterStore stores[2];
          std::optional<MultiHeadAttention> attn[2];
          for (int i = 0; i < 2; ++i) {
            c.attn_window_impl = i == 0 ? "mask" : "blocks";
            attn[i].emplace(stores[i], "attn", c);
            REQUIRE(attn[i]->halo.has_value() == (i == 1));
            stores[i].allocate(ctx.eng);
          }
          randomize_parameters(stores[0], rng, 0.6f);
          for (size_t p = 0; p < stores[0].parameters().size(); ++p)
            stores[1].parameters()[p].value.copy_from(stores[0].parameters()[p].value);
          Tensor x = check::random_tensor(ctx, {2, c.num_tokens(), c.embed_dim}, rng);
          Tensor r = check::random_tensor(ctx, x.dims(), rng);
          std::vector<float> y[2], dx[2], grads[2];
          for (int i = 0; i < 2; ++i) {
            stores[i].zero_grad();
            y[i] = check::copy_of(attn[i]->forward(ctx, x));
            dx[i] = check::copy_of(attn[i]->backward(ctx, r));
            ctx.wait();
            for (const engine::Parameter& p : stores[i].parameters()) {
              const std::vector<float> g = check::copy_of(p.grad);
              grads[i].insert(grads[i].end(), g.begin(), g.end());
            }
          }
          auto largest_gap = [](const std::vector<float>& a, const std::vector<float>& b) {
            double m = 0, scale = 1e-3;
            for (size_t i = 0; i < a.size(); ++i) {
              m = std::max(m, double(std::abs(a[i] - b[i])));
              scale = std::max(scale, double(std::abs(a[i])));
            }
            return m / scale;
          };
          CHECK(largest_gap(y[0], y[1]) < 1e-5);
          CHECK(largest_gap(dx[0], dx[1]) < 1e-5);
          CHECK(largest_gap(grads[0], grads[1]) < 1e-5);
        }
}

TEST_CASE("attention lab: a window runs as halo blocks where they score fewer keys") {
  VitConfig c = lab_config();
  c.img_size = 224, c.patch_size = 8, c.attn_window = 1;  // N 785: 37 keys a block query
  CHECK(HaloAttention::cheaper(c));
  c.attn_window = 2;
  CHECK(HaloAttention::cheaper(c));
  c.attn_window = 1, c.attn_score = "additive";  // the blocks take dot-product scores only
  CHECK_FALSE(HaloAttention::cheaper(c));
  c.attn_score = "dot", c.patch_size = 16;  // N 197: 4× fewer scores, not enough
  CHECK_FALSE(HaloAttention::cheaper(c));
  c.attn_window_impl = "blocks";
  CHECK(HaloAttention::used(c));
  c = lab_config();
  c.attn_window = 1;  // a 4×4 grid: one block of 4 × 4 queries, 1 + 6 × 6 keys
  CHECK_FALSE(HaloAttention::cheaper(c));
  HaloAttention halo(c);
  CHECK(halo.block == 4);
  CHECK(halo.keys == 1 + 36);
  CHECK(halo.blocks == 1);
  CHECK(halo.padded == 6);
  // Query (1, 1): the halo spans grid rows and columns −1..4, of which 0..2 are on the grid and
  // in its window; row and column −1 and 3 are not, nor 4 (off the grid).
  const float* row = halo.mask.data() + (1 * 4 + 1) * halo.keys;
  int allowed = 0;
  for (int64_t h = 0; h < halo.keys; ++h) allowed += row[h] == 0.0f;
  CHECK(allowed == 1 + 9);
  CHECK(row[0] == 0.0f);                 // the cls token
  CHECK(row[1 + 0] == kMasked);          // (−1, −1)
  CHECK(row[1 + 1 * 6 + 1] == 0.0f);     // (0, 0)
  CHECK(row[1 + 3 * 6 + 3] == 0.0f);     // (2, 2)
  CHECK(row[1 + 4 * 6 + 3] == kMasked);  // (3, 2)
}

TEST_CASE("attention lab: settings are written only when not the default, read back, refused") {
  const VitConfig plain = lab_config();
  const nlohmann::json j = plain;
  const nlohmann::json settings = lab_settings(plain);
  for (auto it = settings.begin(); it != settings.end(); ++it) CHECK_FALSE(j.contains(it.key()));
  VitConfig c = plain;
  c.pos_embed = "sincos", c.attn_norm = "sigmoid", c.attn_window = 2;
  const nlohmann::json k = c;
  CHECK(k.at("pos_embed") == "sincos");
  CHECK(k.at("attn_norm") == "sigmoid");
  CHECK(k.at("attn_window") == 2);
  CHECK_FALSE(k.contains("attn_score"));
  CHECK_FALSE(k.contains("attn_redraw"));  // Performer's only
  CHECK(k.get<VitConfig>() == c);

  auto refusal = [](VitConfig bad) {
    try {
      bad.validate();
    } catch (const engine::Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  c = plain;
  c.attn_window = 4;  // a 4×4 grid: R ≤ 3
  CHECK(refusal(c).find("--attn-window must be in [0, 3]") != std::string::npos);
  c = plain;
  c.pos_embed = "sincos", c.embed_dim = 6, c.num_heads = 2;
  CHECK(refusal(c).find("--pos-embed sincos needs --embed-dim divisible by 4") !=
        std::string::npos);
  c = plain;
  c.pos_embed = "fixed";
  CHECK(refusal(c).find("--pos-embed must be learned (a file's 'learn'), sincos or none") !=
        std::string::npos);
  c = plain;
  c.attn_norm = "tanh";
  CHECK(refusal(c).find("--attn-norm must be softmax, relu or sigmoid") != std::string::npos);
  c = plain;
  c.attn_additive_dim = 16;
  CHECK(refusal(c).find("--attn-additive-dim applies to --attn-score additive only") !=
        std::string::npos);
  c = plain;
  c.attn_lowrank = 4, c.attn_window = 1;
  CHECK(refusal(c).find("cannot take --attn-window") != std::string::npos);
  c = plain;
  c.attn_lowrank = 4, c.attn_score = "additive";
  CHECK(refusal(c).find("--attn-lowrank (Linformer) takes dot-product scores only") !=
        std::string::npos);
  c = plain;
  c.attn_lowrank = 18;  // N is 17
  CHECK(refusal(c).find("--attn-lowrank must be in [0, 17]") != std::string::npos);
  c = plain;
  c.attn_features = 16, c.attn_norm = "relu";
  CHECK(refusal(c).find("--attn-norm relu does not apply to Performer (--attn-features)") !=
        std::string::npos);
  c = plain;
  c.attn_features = 16, c.attn_window = 1;
  CHECK(refusal(c).find("--attn-features (Performer) cannot be combined with --attn-window") !=
        std::string::npos);
  c = plain;
  c.attn_redraw = 50;  // it would not be saved without features: refused, not dropped
  CHECK(refusal(c).find("--attn-redraw applies to Performer (--attn-features) only") !=
        std::string::npos);
  c = plain;
  c.attn_features = 16, c.attn_redraw = 50;
  CHECK(nlohmann::json(c).at("attn_redraw") == 50);
}
