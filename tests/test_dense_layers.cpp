// Linear, LayerNorm, Gelu, Relu, Softmax: forward against naive loops and a hand-computed
// case, backward against finite differences, and oneDNN's overwrite semantics.
#include <cmath>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "check.hpp"
#include "engine/eltwise.hpp"
#include "engine/layer_norm.hpp"
#include "engine/linear.hpp"
#include "engine/softmax.hpp"

using namespace engine;
using check::GradTarget;

namespace {

std::vector<double> naive_linear(const Tensor& x, const Linear& fc) {
  const int64_t M = x.numel() / fc.in_features, I = fc.in_features, O = fc.out_features;
  std::vector<double> y(M * O);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < O; ++o) {
      double s = fc.bias ? fc.bias->value[o] : 0.0;
      for (int64_t i = 0; i < I; ++i) s += double(x[m * I + i]) * fc.weight->value[o * I + i];
      y[m * O + o] = s;
    }
  return y;
}

std::vector<double> naive_layer_norm(const Tensor& x, const LayerNorm& ln) {
  const int64_t D = ln.dim, M = x.numel() / D;
  std::vector<double> y(x.numel());
  for (int64_t m = 0; m < M; ++m) {
    double mean = 0, var = 0;
    for (int64_t d = 0; d < D; ++d) mean += x[m * D + d];
    mean /= double(D);
    for (int64_t d = 0; d < D; ++d) var += (x[m * D + d] - mean) * (x[m * D + d] - mean);
    var /= double(D);  // biased, as torch
    for (int64_t d = 0; d < D; ++d)
      y[m * D + d] =
          (x[m * D + d] - mean) / std::sqrt(var + ln.eps) * ln.weight->value[d] + ln.bias->value[d];
  }
  return y;
}

std::vector<double> naive_softmax(const Tensor& x) {
  const int64_t K = x.dim(-1), M = x.numel() / K;
  std::vector<double> y(x.numel());
  for (int64_t m = 0; m < M; ++m) {
    double mx = -1e300, s = 0;
    for (int64_t k = 0; k < K; ++k) mx = std::max(mx, double(x[m * K + k]));
    for (int64_t k = 0; k < K; ++k) s += std::exp(x[m * K + k] - mx);
    for (int64_t k = 0; k < K; ++k) y[m * K + k] = std::exp(x[m * K + k] - mx) / s;
  }
  return y;
}

double gelu(double x) {
  return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
}

}  // namespace

TEST_CASE("Linear forward matches a naive loop over leading axes") {
  Context ctx(1);
  std::mt19937_64 rng(11);
  ParameterStore store;
  Linear fc(store, "fc", 5, 4);
  store.allocate(ctx.eng);
  fc.reset_parameters(ctx);
  Tensor x = check::random_tensor(ctx, {2, 3, 5}, rng);
  const Tensor& y = fc.forward(ctx, x);
  ctx.wait();
  CHECK(y.dims() == Dims{2, 3, 4});
  check::check_close("Linear", y, naive_linear(x, fc));

  SUBCASE("without bias") {
    ParameterStore s2;
    Linear nb(s2, "nb", 5, 3, false);
    s2.allocate(ctx.eng);
    nb.reset_parameters(ctx);
    CHECK(nb.bias == nullptr);
    const Tensor& y2 = nb.forward(ctx, x);
    ctx.wait();
    check::check_close("Linear without bias", y2, naive_linear(x, nb));
  }
}

TEST_CASE("Linear hand-computed case") {
  Context ctx(1);
  ParameterStore store;
  Linear fc(store, "fc", 2, 2);
  store.allocate(ctx.eng);
  const float w[] = {1, 2, 3, 4}, b[] = {1, -1};
  std::copy(w, w + 4, fc.weight->value.data());
  std::copy(b, b + 2, fc.bias->value.data());
  Tensor x(ctx.eng, {1, 2});
  x[0] = 1, x[1] = 2;
  const Tensor& y = fc.forward(ctx, x);
  ctx.wait();
  CHECK(y[0] == doctest::Approx(1 * 1 + 2 * 2 + 1));
  CHECK(y[1] == doctest::Approx(3 * 1 + 4 * 2 - 1));
}

TEST_CASE("Linear backward matches finite differences and overwrites its gradients") {
  Context ctx(1);
  std::mt19937_64 rng(12);
  ParameterStore store;
  Linear fc(store, "fc", 6, 5);
  store.allocate(ctx.eng);
  fc.reset_parameters(ctx);
  check::randomize(fc.bias->value, rng);
  Tensor x = check::random_tensor(ctx, {3, 2, 6}, rng);
  auto forward = [&]() -> const Tensor& { return fc.forward(ctx, x); };
  Tensor r = check::random_tensor(ctx, forward().dims(), rng);
  const Tensor& dx = fc.backward(ctx, r);
  ctx.wait();
  check::check_gradients(ctx, forward, r,
                         {{"x", x.data(), x.numel(), dx.data()},
                          {"weight", fc.weight->value.data(), 30, fc.weight->grad.data()},
                          {"bias", fc.bias->value.data(), 5, fc.bias->grad.data()}});
  check::check_backward_overwrites(
      ctx, forward, [&]() -> const Tensor& { return fc.backward(ctx, r); }, store);
}

TEST_CASE("Linear rejects a wrong input width and backward before forward") {
  Context ctx(1);
  ParameterStore store;
  Linear fc(store, "fc", 4, 2);
  store.allocate(ctx.eng);
  Tensor bad(ctx.eng, {2, 3});
  CHECK_THROWS_AS(fc.forward(ctx, bad), Error);
  Tensor dy(ctx.eng, {2, 2});
  CHECK_THROWS_WITH_AS(fc.backward(ctx, dy), "Linear: backward called before forward", Error);
}

TEST_CASE("Linear keeps one plan per input shape") {
  Context ctx(1);
  std::mt19937_64 rng(13);
  ParameterStore store;
  Linear fc(store, "fc", 4, 3);
  store.allocate(ctx.eng);
  fc.reset_parameters(ctx);
  Tensor a = check::random_tensor(ctx, {8, 4}, rng), b = check::random_tensor(ctx, {2, 4}, rng);
  const Tensor& ya = fc.forward(ctx, a);
  const float* ya_data = ya.data();
  const Tensor& yb = fc.forward(ctx, b);
  ctx.wait();
  check::check_close("second shape", yb, naive_linear(b, fc));
  const Tensor& ya2 = fc.forward(ctx, a);
  ctx.wait();
  CHECK(ya2.data() == ya_data);  // the first plan was kept, not rebuilt
  check::check_close("first shape again", ya2, naive_linear(a, fc));
}

TEST_CASE("Linear in bf16: output and gradients within bf16 rounding of f32, weights kept f32") {
  if (!precision_supported(Precision::bf16)) {
    MESSAGE("skipped: bf16 needs a CPU with AVX-512");
    return;
  }
  Context ctx(1);
  std::mt19937_64 rng(14);
  ParameterStore store;
  Linear fc(store, "fc", 40, 24);
  store.allocate(ctx.eng);
  fc.reset_parameters(ctx);
  Tensor x = check::random_tensor(ctx, {3, 7, 40}, rng);
  Tensor r = check::random_tensor(ctx, {3, 7, 24}, rng);
  // f32 first; copies of everything bf16 must reproduce.
  Tensor y32(ctx.eng, {3, 7, 24}), dx32(ctx.eng, x.dims()), dw32(ctx.eng, {24, 40}),
      db32(ctx.eng, {24});
  y32.copy_from(fc.forward(ctx, x));
  dx32.copy_from(fc.backward(ctx, r));
  dw32.copy_from(fc.weight->grad);
  db32.copy_from(fc.bias->grad);
  Tensor w_before(ctx.eng, {24, 40});
  w_before.copy_from(fc.weight->value);

  fc.set_precision(Precision::bf16);
  const Tensor& y = fc.forward(ctx, x);
  const Tensor& dx = fc.backward(ctx, r);
  ctx.wait();
  auto relative_error = [](const Tensor& got, const Tensor& want) {
    double err = 0, ref = 0;
    for (int64_t i = 0; i < want.numel(); ++i) {
      err = std::max(err, double(std::abs(got[i] - want[i])));
      ref = std::max(ref, double(std::abs(want[i])));
    }
    return err / ref;
  };
  // bf16 keeps 8 significant bits: a relative rounding of 2^-9 per operand.
  CHECK(relative_error(y, y32) < 2e-2);
  CHECK(relative_error(dx, dx32) < 2e-2);
  CHECK(relative_error(fc.weight->grad, dw32) < 2e-2);
  CHECK(relative_error(fc.bias->grad, db32) < 1e-6);  // summed in f32 from f32 diff_dst
  CHECK(relative_error(y, y32) > 0.0);                // bf16 did run
  CHECK(relative_error(fc.weight->value, w_before) == 0.0);
}

TEST_CASE("LayerNorm forward matches a naive loop") {
  Context ctx(2);
  std::mt19937_64 rng(21);
  ParameterStore store;
  LayerNorm ln(store, "norm", 7);
  store.allocate(ctx.eng);
  check::randomize(ln.weight->value, rng, 0.5f, 1.5f);
  check::randomize(ln.bias->value, rng);
  Tensor x = check::random_tensor(ctx, {2, 3, 7}, rng, -2.0f, 3.0f);
  const Tensor& y = ln.forward(ctx, x);
  ctx.wait();
  check::check_close("LayerNorm", y, naive_layer_norm(x, ln), 1e-4, 1e-5);
}

TEST_CASE("LayerNorm hand-computed case") {
  Context ctx(2);
  ParameterStore store;
  LayerNorm ln(store, "norm", 3, 0.0f);
  store.allocate(ctx.eng);
  ln.reset_parameters();
  Tensor x(ctx.eng, {1, 3});
  x[0] = 1, x[1] = 2, x[2] = 3;  // mean 2, variance 2/3
  const Tensor& y = ln.forward(ctx, x);
  ctx.wait();
  CHECK(y[0] == doctest::Approx(-std::sqrt(1.5)).epsilon(1e-5));
  CHECK(y[1] == doctest::Approx(0.0).epsilon(1e-6));
  CHECK(y[2] == doctest::Approx(std::sqrt(1.5)).epsilon(1e-5));
}

TEST_CASE("LayerNorm backward matches finite differences and overwrites its gradients") {
  Context ctx(2);
  std::mt19937_64 rng(22);
  ParameterStore store;
  LayerNorm ln(store, "norm", 6);
  store.allocate(ctx.eng);
  check::randomize(ln.weight->value, rng, 0.5f, 1.5f);
  check::randomize(ln.bias->value, rng);
  Tensor x = check::random_tensor(ctx, {4, 6}, rng);
  auto forward = [&]() -> const Tensor& { return ln.forward(ctx, x); };
  Tensor r = check::random_tensor(ctx, forward().dims(), rng);
  const Tensor& dx = ln.backward(ctx, r);
  ctx.wait();
  check::check_gradients(ctx, forward, r,
                         {{"x", x.data(), x.numel(), dx.data()},
                          {"weight", ln.weight->value.data(), 6, ln.weight->grad.data()},
                          {"bias", ln.bias->value.data(), 6, ln.bias->grad.data()}});
  check::check_backward_overwrites(
      ctx, forward, [&]() -> const Tensor& { return ln.backward(ctx, r); }, store);
}

TEST_CASE("Gelu is the erf form, forward and backward") {
  Context ctx(3);
  std::mt19937_64 rng(31);
  Gelu act;
  Tensor x = check::random_tensor(ctx, {3, 5}, rng, -3.0f, 3.0f);
  const Tensor& y = act.forward(ctx, x);
  ctx.wait();
  std::vector<double> want(x.numel());
  for (int64_t i = 0; i < x.numel(); ++i) want[i] = gelu(x[i]);
  check::check_close("Gelu", y, want, 1e-5, 1e-6);

  Tensor one(ctx.eng, {1});
  one[0] = 1.0f;
  const Tensor& g1 = act.forward(ctx, one);
  ctx.wait();
  CHECK(g1[0] == doctest::Approx(0.8413447460685429).epsilon(1e-6));  // Φ(1)

  auto forward = [&]() -> const Tensor& { return act.forward(ctx, x); };
  Tensor r = check::random_tensor(ctx, forward().dims(), rng);
  const Tensor& dx = act.backward(ctx, r);
  ctx.wait();
  check::check_gradients(ctx, forward, r, {{"x", x.data(), x.numel(), dx.data()}});
}

TEST_CASE("Relu forward and backward") {
  Context ctx(4);
  std::mt19937_64 rng(41);
  Relu act;
  // Inputs kept away from the kink at 0, where the finite difference is meaningless.
  Tensor x = check::random_tensor(ctx, {4, 5}, rng, 0.1f, 2.0f);
  for (int64_t i = 0; i < x.numel(); i += 2) x[i] = -x[i];
  const Tensor& y = act.forward(ctx, x);
  ctx.wait();
  std::vector<double> want(x.numel());
  for (int64_t i = 0; i < x.numel(); ++i) want[i] = std::max(0.0f, x[i]);
  check::check_close("Relu", y, want, 0, 0);
  Relu hand;
  Tensor h(ctx.eng, {3});
  h[0] = -2.0f, h[1] = 0.0f, h[2] = 1.5f;
  const Tensor& hy = hand.forward(ctx, h);
  ctx.wait();
  CHECK(hy[0] == 0.0f);
  CHECK(hy[1] == 0.0f);
  CHECK(hy[2] == 1.5f);
  auto forward = [&]() -> const Tensor& { return act.forward(ctx, x); };
  Tensor r = check::random_tensor(ctx, forward().dims(), rng);
  const Tensor& dx = act.backward(ctx, r);
  ctx.wait();
  check::check_gradients(ctx, forward, r, {{"x", x.data(), x.numel(), dx.data()}});
}

TEST_CASE("Softmax over the last axis, forward and backward") {
  Context ctx(5);
  std::mt19937_64 rng(51);
  Softmax softmax;
  Tensor x = check::random_tensor(ctx, {2, 3, 6}, rng, -3.0f, 3.0f);
  const Tensor& y = softmax.forward(ctx, x);
  ctx.wait();
  check::check_close("Softmax", y, naive_softmax(x), 1e-5, 1e-7);

  Tensor hand(ctx.eng, {1, 3});
  hand[0] = 0.0f, hand[1] = std::log(2.0f), hand[2] = std::log(3.0f);
  Softmax s2;
  const Tensor& p = s2.forward(ctx, hand);
  ctx.wait();
  CHECK(p[0] == doctest::Approx(1.0 / 6));
  CHECK(p[1] == doctest::Approx(2.0 / 6));
  CHECK(p[2] == doctest::Approx(3.0 / 6));

  // Both backward paths against finite differences, and against each other.
  Tensor r = check::random_tensor(ctx, x.dims(), rng);
  std::vector<std::vector<float>> grads;
  for (Softmax::Backward kind : {Softmax::Backward::primitive, Softmax::Backward::composite}) {
    Softmax sm;
    sm.backward_kind = kind;
    auto forward = [&]() -> const Tensor& { return sm.forward(ctx, x); };
    forward();
    CHECK(std::string(sm.backward_used()) ==
          (kind == Softmax::Backward::primitive ? "primitive" : "composite"));
    const Tensor& dx = sm.backward(ctx, r);
    ctx.wait();
    grads.emplace_back(dx.data(), dx.data() + dx.numel());
    check::check_gradients(ctx, forward, r, {{"x", x.data(), x.numel(), dx.data()}});
  }
  for (size_t i = 0; i < grads[0].size(); ++i)
    CHECK(std::abs(grads[1][i] - grads[0][i]) <= 1e-6f);  // y, dy in [-1, 1]: rounding only
  // Over one token the composite's row sum would be empty: the primitive runs instead.
  Softmax one;
  one.backward_kind = Softmax::Backward::composite;
  const Tensor single = check::random_tensor(ctx, {4, 1}, rng);
  one.forward(ctx, single);
  CHECK(std::string(one.backward_used()) == "primitive");
}
