// Dropout, the residual Add and Accumulate, LayerScale, and SoftmaxCrossEntropy.
#include <cmath>

#include <doctest/doctest.h>

#include "check.hpp"
#include "engine/binary.hpp"
#include "engine/cross_entropy.hpp"
#include "engine/layer_scale.hpp"

using namespace engine;

TEST_CASE("Dropout zeroes a fraction p, scales the rest, and is the identity in evaluation") {
  Context ctx(5);
  Tensor x(ctx.eng, {200, 100});
  std::fill_n(x.data(), x.numel(), 1.0f);
  Dropout drop(0.3f);
  const Tensor& y = drop.forward(ctx, x);
  ctx.wait();
  int64_t zeros = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    if (y[i] == 0.0f)
      ++zeros;
    else
      CHECK(y[i] == doctest::Approx(1.0 / 0.7));
  }
  CHECK(double(zeros) / double(y.numel()) == doctest::Approx(0.3).epsilon(0.05));

  drop.training = false;
  CHECK(&drop.forward(ctx, x) == &x);
  Tensor r(ctx.eng, {200, 100});
  CHECK(&drop.backward(ctx, r) == &r);
  Dropout none(0.0f);
  CHECK(&none.forward(ctx, x) == &x);
  CHECK_THROWS_AS(Dropout(1.0f), Error);
}

TEST_CASE("Dropout backward applies the forward's mask; a seed fixes the mask") {
  Context ctx(6);
  std::mt19937_64 rng(101);
  Dropout drop(0.5f);
  Tensor x = check::random_tensor(ctx, {4, 8}, rng);
  auto forward = [&]() -> const Tensor& {
    ctx.rng.seed(1234);
    return drop.forward(ctx, x);
  };
  const auto first = check::copy_of(forward());
  CHECK(check::copy_of(forward()) == first);
  Tensor r = check::random_tensor(ctx, x.dims(), rng);
  const Tensor& dx = drop.backward(ctx, r);
  ctx.wait();
  check::check_gradients(ctx, forward, r, {{"x", x.data(), x.numel(), dx.data()}});
}

TEST_CASE("Add and Accumulate") {
  Context ctx(7);
  std::mt19937_64 rng(111);
  Tensor a = check::random_tensor(ctx, {3, 4}, rng), b = check::random_tensor(ctx, {3, 4}, rng);
  Add add;
  const Tensor& c = add.forward(ctx, a, b);
  ctx.wait();
  std::vector<double> want(a.numel());
  for (int64_t i = 0; i < a.numel(); ++i) want[i] = double(a[i]) + b[i];
  check::check_close("a + b", c, want, 1e-7, 0);
  // Both inputs' gradient is diff_dst: checked against finite differences of Σ (a + b)·R.
  Tensor r = check::random_tensor(ctx, c.dims(), rng);
  const Tensor& d = add.backward(r);
  auto forward = [&]() -> const Tensor& { return add.forward(ctx, a, b); };
  check::check_gradients(
      ctx, forward, r,
      {{"a", a.data(), a.numel(), d.data()}, {"b", b.data(), b.numel(), d.data()}});

  Accumulate acc;
  const auto a0 = check::copy_of(a);
  acc(ctx, a, b);
  acc(ctx, a, b);
  ctx.wait();
  for (int64_t i = 0; i < a.numel(); ++i) CHECK(a[i] == doctest::Approx(a0[i] + 2.0 * b[i]));
  Tensor wrong(ctx.eng, {4, 3});
  CHECK_THROWS_AS(add.forward(ctx, a, wrong), Error);
}

TEST_CASE("LayerScale: x times a per-channel gamma that starts at init_values, gradients by FD") {
  Context ctx(6);
  std::mt19937_64 rng(106);
  ParameterStore store;
  LayerScale ls(store, "ls1", 3, 1e-5f);
  store.allocate(ctx.eng);
  ls.reset_parameters();
  CHECK(store["ls1.gamma"].dims == Dims{3});
  CHECK_FALSE(store["ls1.gamma"].decay);
  for (int i = 0; i < 3; ++i) CHECK(ls.gamma->value[i] == 1e-5f);
  ls.gamma->value[0] = 2.0f, ls.gamma->value[1] = -1.0f, ls.gamma->value[2] = 0.5f;
  Tensor x(ctx.eng, {2, 1, 3});
  for (int i = 0; i < 6; ++i) x[i] = float(i + 1);
  const Tensor& y = ls.forward(ctx, x);
  ctx.wait();
  const float want[] = {2, -2, 1.5f, 8, -5, 3};
  for (int i = 0; i < 6; ++i) CHECK(y[i] == want[i]);

  Tensor big = check::random_tensor(ctx, {4, 5, 3}, rng);
  auto forward = [&]() -> const Tensor& { return ls.forward(ctx, big); };
  Tensor r = check::random_tensor(ctx, forward().dims(), rng);
  const Tensor& dx = ls.backward(ctx, r);
  ctx.wait();
  check::check_gradients(ctx, forward, r,
                         {{"x", big.data(), big.numel(), dx.data()},
                          {"gamma", ls.gamma->value.data(), 3, ls.gamma->grad.data()}});
  check::check_backward_overwrites(
      ctx, forward, [&]() -> const Tensor& { return ls.backward(ctx, r); }, store);
}

TEST_CASE("SoftmaxCrossEntropy hand-computed cases") {
  Context ctx(8);
  SoftmaxCrossEntropy ce;
  Tensor z(ctx.eng, {1, 4});
  CHECK(ce.forward(ctx, z, std::vector<int>{2}) == doctest::Approx(std::log(4.0)));
  Tensor z2(ctx.eng, {1, 2});
  z2[1] = std::log(3.0f);  // probabilities 1/4, 3/4
  CHECK(ce.forward(ctx, z2, std::vector<int>{1}) == doctest::Approx(-std::log(0.75)));
  // Smoothing 0.1 over K = 2: targets (0.95, 0.05) for label 0, (0.05, 0.95) for label 1.
  SoftmaxCrossEntropy smooth(0.1f);
  CHECK(smooth.forward(ctx, z2, std::vector<int>{0}) ==
        doctest::Approx(-(0.95 * std::log(0.25) + 0.05 * std::log(0.75))));
  CHECK(smooth.forward(ctx, z2, std::vector<int>{1}) ==
        doctest::Approx(-(0.05 * std::log(0.25) + 0.95 * std::log(0.75))));
  const Tensor& g = ce.backward(ctx);
  ctx.wait();
  CHECK(g[0] == doctest::Approx(0.25));
  CHECK(g[1] == doctest::Approx(-0.25));
  CHECK_THROWS_AS(ce.forward(ctx, z2, std::vector<int>{2}), Error);
  CHECK_THROWS_AS(ce.forward(ctx, z2, std::vector<int>{0, 1}), Error);
}

TEST_CASE("SoftmaxCrossEntropy matches a naive loop, with smoothing and soft targets") {
  Context ctx(9);
  std::mt19937_64 rng(121);
  const int64_t B = 3, K = 5;
  Tensor z = check::random_tensor(ctx, {B, K}, rng, -3.0f, 3.0f);
  const std::vector<int> labels{4, 0, 2};
  Tensor soft(ctx.eng, {B, K});  // a mixup of two labels per row
  for (int64_t b = 0; b < B; ++b) {
    soft[b * K + labels[b]] += 0.7f;
    soft[b * K + (labels[b] + 1) % K] += 0.3f;
  }
  for (float eps : {0.0f, 0.1f}) {
    CAPTURE(eps);
    SoftmaxCrossEntropy ce(eps);
    for (bool use_soft : {false, true}) {
      CAPTURE(use_soft);
      double want = 0;
      for (int64_t b = 0; b < B; ++b) {
        double mx = -1e300, s = 0;
        for (int64_t k = 0; k < K; ++k) mx = std::max(mx, double(z[b * K + k]));
        for (int64_t k = 0; k < K; ++k) s += std::exp(z[b * K + k] - mx);
        for (int64_t k = 0; k < K; ++k) {
          const double t0 = use_soft ? soft[b * K + k] : (k == labels[b] ? 1.0 : 0.0);
          const double t = (1 - eps) * t0 + eps / K;
          want -= t * (z[b * K + k] - mx - std::log(s));
        }
      }
      want /= B;
      auto loss = [&] {
        return double(use_soft ? ce.forward(ctx, z, soft) : ce.forward(ctx, z, labels));
      };
      CHECK(loss() == doctest::Approx(want).epsilon(1e-6));
      const Tensor& dz = ce.backward(ctx);
      ctx.wait();
      check::check_scalar_gradients(loss, {{"logits", z.data(), z.numel(), dz.data()}});
    }
  }
}

TEST_CASE("the finite-difference check: kinks are few and checked one-sided, never trusted") {
  // |x| at six points: the central difference at the kink x = 0 is 0, its one-sided ones -1, 1.
  const std::vector<double> numeric{1, -1, 1, 0, -1, 1}, left{1, -1, 1, -1, -1, 1},
      right{1, -1, 1, 1, -1, 1};
  // Any subgradient in [-1, 1] at the kink is right; one outside it, or a wrong gradient at a
  // smooth point, is wrong.
  CHECK(check::compare_gradient({1, -1, 1, 0.5f, -1, 1}, numeric, left, right).ok());
  CHECK_FALSE(check::compare_gradient({1, -1, 1, 3, -1, 1}, numeric, left, right).ok());
  CHECK_FALSE(check::compare_gradient({1, -1, -1, 0.5f, -1, 1}, numeric, left, right).ok());
  // Two kinks of six elements are too many to trust the check (one is allowed under 20).
  const std::vector<double> two_kinks{1, 0, 1, 0, -1, 1};
  const std::vector<double> left2{1, -1, 1, -1, -1, 1}, right2{1, 1, 1, 1, -1, 1};
  const check::GradientComparison c =
      check::compare_gradient({1, 0.5f, 1, 0.5f, -1, 1}, two_kinks, left2, right2);
  CHECK(c.skipped == 2);
  CHECK(c.allowed == 1);
  CHECK_FALSE(c.ok());
  // A single-element target may never be skipped.
  CHECK_FALSE(check::compare_gradient({0.5f}, {0.0}, {-1.0}, {1.0}).ok());
}
