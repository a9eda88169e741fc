// Conv2d, BatchNorm2d and pooling: naive loops, hand cases, finite differences, NHWC = NCHW.
#include <algorithm>
#include <cmath>

#include <doctest/doctest.h>

#include "check.hpp"
#include "engine/batch_norm.hpp"
#include "engine/conv2d.hpp"
#include "engine/eltwise.hpp"
#include "engine/pooling.hpp"

using namespace engine;

namespace {

std::vector<double> naive_conv(const Tensor& x, const Conv2d& conv) {
  const int64_t B = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const int64_t O = conv.out_channels, k = conv.kernel_size, s = conv.stride, pad = conv.padding;
  const int64_t OH = (H + 2 * pad - k) / s + 1, OW = (W + 2 * pad - k) / s + 1;
  std::vector<double> y(B * O * OH * OW);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          double acc = conv.bias ? conv.bias->value[o] : 0.0;
          for (int64_t c = 0; c < C; ++c)
            for (int64_t i = 0; i < k; ++i)
              for (int64_t j = 0; j < k; ++j) {
                const int64_t h = oh * s - pad + i, w = ow * s - pad + j;
                if (h < 0 || h >= H || w < 0 || w >= W) continue;
                acc += double(x[((b * C + c) * H + h) * W + w]) *
                       conv.weight->value[((o * C + c) * k + i) * k + j];
              }
          y[((b * O + o) * OH + oh) * OW + ow] = acc;
        }
  return y;
}

// max, or average counting padding (torch's default), over k×k windows.
std::vector<double> naive_pool(const Tensor& x, bool max, int64_t k, int64_t s, int64_t pad) {
  const int64_t B = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const int64_t OH = (H + 2 * pad - k) / s + 1, OW = (W + 2 * pad - k) / s + 1;
  std::vector<double> y(B * C * OH * OW);
  for (int64_t bc = 0; bc < B * C; ++bc)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        double acc = max ? -1e300 : 0.0;
        for (int64_t i = 0; i < k; ++i)
          for (int64_t j = 0; j < k; ++j) {
            const int64_t h = oh * s - pad + i, w = ow * s - pad + j;
            if (h < 0 || h >= H || w < 0 || w >= W) continue;
            const double v = x[(bc * H + h) * W + w];
            acc = max ? std::max(acc, v) : acc + v;
          }
        y[(bc * OH + oh) * OW + ow] = max ? acc : acc / double(k * k);
      }
  return y;
}

// Distinct values spaced far more than the finite-difference step, so no max changes sides.
void spaced_values(const Tensor& t, std::mt19937_64& rng) {
  std::vector<float> v(t.numel());
  for (size_t i = 0; i < v.size(); ++i) v[i] = -1.0f + 2.0f * float(i) / float(v.size());
  std::shuffle(v.begin(), v.end(), rng);
  std::copy(v.begin(), v.end(), t.data());
}

}  // namespace

TEST_CASE("Conv2d forward matches a naive loop, with stride and padding") {
  Context ctx(1);
  std::mt19937_64 rng(71);
  ParameterStore store;
  Conv2d conv(store, "conv", 3, 4, 3, 2, 1);
  Conv2d plain(store, "plain", 3, 2, 3, 1, 0, false);
  store.allocate(ctx.eng);
  conv.reset_parameters(ctx);
  plain.reset_parameters(ctx);
  Tensor x = check::random_tensor(ctx, {2, 3, 7, 6}, rng);
  const Tensor& y = conv.forward(ctx, x);
  ctx.wait();
  CHECK(y.dims() == Dims{2, 4, 4, 3});
  check::check_close("Conv2d stride 2 pad 1", y, naive_conv(x, conv));
  const Tensor& y2 = plain.forward(ctx, x);
  ctx.wait();
  CHECK(y2.dims() == Dims{2, 2, 5, 4});
  check::check_close("Conv2d no bias", y2, naive_conv(x, plain));
}

TEST_CASE("Conv2d hand-computed case: a 3x3 box filter with zero padding") {
  Context ctx(1);
  ParameterStore store;
  Conv2d conv(store, "conv", 1, 1, 3, 1, 1);
  store.allocate(ctx.eng);
  std::fill_n(conv.weight->value.data(), 9, 1.0f);
  conv.bias->value[0] = 0.5f;
  Tensor x(ctx.eng, {1, 1, 3, 3});
  std::fill_n(x.data(), 9, 1.0f);
  const Tensor& y = conv.forward(ctx, x);
  ctx.wait();
  const float want[] = {4, 6, 4, 6, 9, 6, 4, 6, 4};  // neighbours inside the image
  for (int i = 0; i < 9; ++i) CHECK(y[i] == want[i] + 0.5f);
}

TEST_CASE("Conv2d backward matches finite differences and overwrites its gradients") {
  Context ctx(1);
  std::mt19937_64 rng(72);
  ParameterStore store;
  Conv2d conv(store, "conv", 2, 3, 3, 2, 1);
  store.allocate(ctx.eng);
  conv.reset_parameters(ctx);
  Tensor x = check::random_tensor(ctx, {2, 2, 5, 5}, rng);
  auto forward = [&]() -> const Tensor& { return conv.forward(ctx, x); };
  Tensor r = check::random_tensor(ctx, forward().dims(), rng);
  const Tensor& dx = conv.backward(ctx, r);
  ctx.wait();
  check::check_gradients(
      ctx, forward, r,
      {{"x", x.data(), x.numel(), dx.data()},
       {"weight", conv.weight->value.data(), conv.weight->value.numel(), conv.weight->grad.data()},
       {"bias", conv.bias->value.data(), 3, conv.bias->grad.data()}});
  check::check_backward_overwrites(
      ctx, forward, [&]() -> const Tensor& { return conv.backward(ctx, r); }, store);
}

TEST_CASE("BatchNorm2d training: batch statistics, running statistics as torch") {
  Context ctx(2);
  std::mt19937_64 rng(81);
  ParameterStore store;
  BatchNorm2d bn(store, "bn", 3);
  store.allocate(ctx.eng);
  bn.reset_parameters();
  check::randomize(bn.weight->value, rng, 0.5f, 1.5f);
  check::randomize(bn.bias->value, rng);
  Tensor x = check::random_tensor(ctx, {4, 3, 2, 3}, rng, -1.0f, 3.0f);
  const Tensor& y = bn.forward(ctx, x);
  ctx.wait();
  const int64_t C = 3, HW = 6, n = 4 * HW;
  std::vector<double> want(x.numel()), mean(C, 0.0), var(C, 0.0);
  for (int64_t i = 0; i < x.numel(); ++i) mean[(i / HW) % C] += x[i] / double(n);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = (i / HW) % C;
    var[c] += (x[i] - mean[c]) * (x[i] - mean[c]) / double(n);
  }
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = (i / HW) % C;
    want[i] =
        (x[i] - mean[c]) / std::sqrt(var[c] + bn.eps) * bn.weight->value[c] + bn.bias->value[c];
  }
  check::check_close("BatchNorm2d", y, want, 1e-4, 1e-5);
  for (int64_t c = 0; c < C; ++c) {
    CHECK(bn.running_mean->value[c] == doctest::Approx(0.1 * mean[c]).epsilon(1e-5));
    CHECK(bn.running_var->value[c] ==
          doctest::Approx(0.9 + 0.1 * var[c] * n / (n - 1)).epsilon(1e-5));  // unbiased
  }
  CHECK(bn.num_batches_tracked == 1);

  SUBCASE("evaluation normalizes with the running statistics") {
    bn.training = false;
    const Tensor& e = bn.forward(ctx, x);
    ctx.wait();
    std::vector<double> want_eval(x.numel());
    for (int64_t i = 0; i < x.numel(); ++i) {
      const int64_t c = (i / HW) % C;
      want_eval[i] = (x[i] - bn.running_mean->value[c]) /
                         std::sqrt(double(bn.running_var->value[c]) + bn.eps) *
                         bn.weight->value[c] +
                     bn.bias->value[c];
    }
    check::check_close("BatchNorm2d eval", e, want_eval, 1e-4, 1e-5);
    CHECK(bn.num_batches_tracked == 1);
  }
}

TEST_CASE("BatchNorm2d hand-computed case") {
  Context ctx(2);
  ParameterStore store;
  BatchNorm2d bn(store, "bn", 1, 0.0f);
  store.allocate(ctx.eng);
  bn.reset_parameters();
  Tensor x(ctx.eng, {2, 1, 1, 1});
  x[0] = 1.0f, x[1] = 3.0f;  // mean 2, biased variance 1, unbiased 2
  const Tensor& y = bn.forward(ctx, x);
  ctx.wait();
  CHECK(y[0] == doctest::Approx(-1.0));
  CHECK(y[1] == doctest::Approx(1.0));
  CHECK(bn.running_mean->value[0] == doctest::Approx(0.2));
  CHECK(bn.running_var->value[0] == doctest::Approx(0.9 * 1.0 + 0.1 * 2.0));
}

TEST_CASE("BatchNorm2d backward matches finite differences, training and evaluation") {
  Context ctx(2);
  std::mt19937_64 rng(82);
  ParameterStore store;
  BatchNorm2d bn(store, "bn", 2);
  store.allocate(ctx.eng);
  bn.reset_parameters();
  check::randomize(bn.weight->value, rng, 0.5f, 1.5f);
  check::randomize(bn.bias->value, rng);
  check::randomize(bn.running_mean->value, rng);
  check::randomize(bn.running_var->value, rng, 0.5f, 2.0f);
  Tensor x = check::random_tensor(ctx, {3, 2, 2, 2}, rng);
  for (bool training : {true, false}) {
    CAPTURE(training);
    bn.training = training;
    // Evaluation treats the running statistics as constants, as torch does.
    auto forward = [&]() -> const Tensor& { return bn.forward(ctx, x); };
    Tensor r = check::random_tensor(ctx, forward().dims(), rng);
    const Tensor& dx = bn.backward(ctx, r);
    ctx.wait();
    check::check_gradients(ctx, forward, r,
                           {{"x", x.data(), x.numel(), dx.data()},
                            {"weight", bn.weight->value.data(), 2, bn.weight->grad.data()},
                            {"bias", bn.bias->value.data(), 2, bn.bias->grad.data()}});
    check::check_backward_overwrites(
        ctx, forward, [&]() -> const Tensor& { return bn.backward(ctx, r); }, store);
  }
}

TEST_CASE("BatchNorm2d with fuse_relu equals BatchNorm2d then ReLU, forward and backward") {
  Context ctx(2);
  std::mt19937_64 rng(83);
  ParameterStore store_a, store_b;
  BatchNorm2d fused(store_a, "bn", 4, 1e-5f, 0.1f, Layout::nhwc);
  BatchNorm2d plain(store_b, "bn", 4, 1e-5f, 0.1f, Layout::nhwc);
  fused.fuse_relu = true;
  Relu relu;
  store_a.allocate(ctx.eng);
  store_b.allocate(ctx.eng);
  fused.reset_parameters();
  check::randomize(fused.weight->value, rng, 0.5f, 1.5f);
  check::randomize(fused.bias->value, rng);
  check::randomize(fused.running_var->value, rng, 0.5f, 2.0f);
  plain.reset_parameters();
  std::copy_n(store_a.values(), store_a.size(), store_b.values());
  Tensor x = check::random_tensor(ctx, {3, 5, 5, 4}, rng);  // NHWC
  for (bool training : {true, false}) {
    CAPTURE(training);
    fused.training = plain.training = training;
    const Tensor& y_fused = fused.forward(ctx, x);
    const Tensor& y_plain = relu.forward(ctx, plain.forward(ctx, x));
    Tensor r = check::random_tensor(ctx, x.dims(), rng);
    const Tensor& dx_fused = fused.backward(ctx, r);
    const Tensor& dx_plain = plain.backward(ctx, relu.backward(ctx, r));
    ctx.wait();
    auto wide = [](const Tensor& t) {
      const std::vector<float> v = check::copy_of(t);
      return std::vector<double>(v.begin(), v.end());
    };
    check::check_close("fused forward", y_fused, wide(y_plain), 1e-6, 1e-6);
    check::check_close("fused diff_src", dx_fused, wide(dx_plain), 1e-5, 1e-6);
    check::check_close("fused diff_weight", fused.weight->grad, wide(plain.weight->grad), 1e-5,
                       1e-6);
    check::check_close("fused diff_bias", fused.bias->grad, wide(plain.bias->grad), 1e-5, 1e-6);
  }
}

TEST_CASE("MaxPool2d and AvgPool2d match naive loops and finite differences") {
  Context ctx(3);
  std::mt19937_64 rng(91);
  Tensor x(ctx.eng, {2, 3, 5, 5});
  spaced_values(x, rng);
  for (bool max : {true, false}) {
    CAPTURE(max);
    Pool2d pool = max ? Pool2d(MaxPool2d(3, 2, 1)) : Pool2d(AvgPool2d(3, 2, 1));
    const Tensor& y = pool.forward(ctx, x);
    ctx.wait();
    CHECK(y.dims() == Dims{2, 3, 3, 3});
    check::check_close("pool", y, naive_pool(x, max, 3, 2, 1), 1e-6, 1e-6);
    auto forward = [&]() -> const Tensor& { return pool.forward(ctx, x); };
    Tensor r = check::random_tensor(ctx, y.dims(), rng);
    const Tensor& dx = pool.backward(ctx, r);
    ctx.wait();
    check::check_gradients(ctx, forward, r, {{"x", x.data(), x.numel(), dx.data()}});
  }
}

TEST_CASE("Pooling hand-computed cases and global average pooling") {
  Context ctx(3);
  Tensor x(ctx.eng, {1, 1, 2, 2});
  x[0] = 1, x[1] = 5, x[2] = 3, x[3] = -2;
  MaxPool2d maxpool(2, 2);
  const Tensor& m = maxpool.forward(ctx, x);
  ctx.wait();
  CHECK(m.dims() == Dims{1, 1, 1, 1});
  CHECK(m[0] == 5.0f);
  GlobalAvgPool2d gap;
  const Tensor& g = gap.forward(ctx, x);
  ctx.wait();
  CHECK(g[0] == doctest::Approx(7.0 / 4));

  std::mt19937_64 rng(92);
  Tensor big = check::random_tensor(ctx, {2, 3, 4, 5}, rng);
  const Tensor& gb = gap.forward(ctx, big);
  ctx.wait();
  CHECK(gb.dims() == Dims{2, 3, 1, 1});
  std::vector<double> want(6, 0.0);
  for (int64_t i = 0; i < big.numel(); ++i) want[i / 20] += big[i] / 20.0;
  check::check_close("global average", gb, want);
  auto forward = [&]() -> const Tensor& { return gap.forward(ctx, big); };
  Tensor r = check::random_tensor(ctx, gb.dims(), rng);
  const Tensor& dx = gap.backward(ctx, r);
  ctx.wait();
  check::check_gradients(ctx, forward, r, {{"x", big.data(), big.numel(), dx.data()}});
}

namespace {

// [B, C, H, W] <-> [B, H, W, C] copies, by index.
std::vector<float> to_nhwc(const std::vector<float>& x, const Dims& nchw) {
  const int64_t B = nchw[0], C = nchw[1], H = nchw[2], W = nchw[3];
  std::vector<float> y(x.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w)
          y[((b * H + h) * W + w) * C + c] = x[((b * C + c) * H + h) * W + w];
  return y;
}

Tensor nhwc_copy(Context& ctx, const Tensor& x) {
  const Dims& d = x.dims();
  Tensor y(ctx.eng, {d[0], d[2], d[3], d[1]});
  const std::vector<float> v = to_nhwc(check::copy_of(x), d);
  std::copy(v.begin(), v.end(), y.data());
  return y;
}

void check_same(const std::string& what, const std::vector<float>& got,
                const std::vector<float>& want) {
  check::check_close(what, got.data(), std::vector<double>(want.begin(), want.end()), 1e-4, 1e-5);
}

}  // namespace

TEST_CASE("NHWC layers compute what their NCHW twins compute, forward and backward") {
  Context ctx(31);
  std::mt19937_64 rng(131);
  const Dims x_dims{2, 3, 7, 6};
  Tensor x = check::random_tensor(ctx, x_dims, rng);
  Tensor x_nhwc = nhwc_copy(ctx, x);

  // Each layer pair shares its parameters: the NHWC one's store gets the NCHW one's values.
  auto run = [&](const char* name, auto& nchw, auto& nhwc, ParameterStore& a, ParameterStore& b) {
    INFO(name);
    if (a.allocated()) std::copy_n(a.values(), a.size(), b.values());
    const Tensor& y = nchw.forward(ctx, x);
    const Tensor& y_nhwc = nhwc.forward(ctx, x_nhwc);
    ctx.wait();
    const Dims y_dims = y.dims();
    REQUIRE(y_nhwc.dims() == Dims{y_dims[0], y_dims[2], y_dims[3], y_dims[1]});
    check_same(std::string(name) + " forward", check::copy_of(y_nhwc),
               to_nhwc(check::copy_of(y), y_dims));
    Tensor r = check::random_tensor(ctx, y_dims, rng);
    Tensor r_nhwc = nhwc_copy(ctx, r);
    const std::vector<float> dx = check::copy_of(nchw.backward(ctx, r));
    const std::vector<float> dx_nhwc = check::copy_of(nhwc.backward(ctx, r_nhwc));
    ctx.wait();
    check_same(std::string(name) + " diff_src", dx_nhwc, to_nhwc(dx, x_dims));
    if (a.allocated())
      check_same(std::string(name) + " parameter gradients", check::copy_of(b.grads(), b.size()),
                 check::copy_of(a.grads(), a.size()));
  };

  ParameterStore conv_a, conv_b;
  Conv2d conv(conv_a, "conv", 3, 5, 3, 2, 1, true);
  Conv2d conv_nhwc(conv_b, "conv", 3, 5, 3, 2, 1, true, Layout::nhwc);
  conv_a.allocate(ctx.eng);
  conv_b.allocate(ctx.eng);
  conv.reset_parameters(ctx);
  run("Conv2d", conv, conv_nhwc, conv_a, conv_b);
  run("Conv2d again (the weight copies are refreshed)", conv, conv_nhwc, conv_a, conv_b);

  ParameterStore bn_a, bn_b;
  BatchNorm2d bn(bn_a, "bn", 3);
  BatchNorm2d bn_nhwc(bn_b, "bn", 3, 1e-5f, 0.1f, Layout::nhwc);
  bn_a.allocate(ctx.eng);
  bn_b.allocate(ctx.eng);
  bn.reset_parameters();
  check::randomize(bn_a["bn.weight"].value, rng, 0.5f, 1.5f);
  check::randomize(bn_a["bn.bias"].value, rng);
  run("BatchNorm2d", bn, bn_nhwc, bn_a, bn_b);
  check_same("running variance", check::copy_of(bn_b["bn.running_var"].value),
             check::copy_of(bn_a["bn.running_var"].value));

  ParameterStore none_a, none_b;  // pooling has no parameters
  MaxPool2d max(3, 2, 1), max_nhwc(3, 2, 1, Layout::nhwc);
  run("MaxPool2d", max, max_nhwc, none_a, none_b);
  GlobalAvgPool2d gap, gap_nhwc(Layout::nhwc);
  run("GlobalAvgPool2d", gap, gap_nhwc, none_a, none_b);
}

TEST_CASE("NHWC 1x1 stride-2 convolution (ResNet's downsample) with few input channels") {
  // oneDNN 2.6's jit_1x1 backward-weights kernel writes past its reduce-to-unit-stride buffer
  // when NHWC has fewer input channels than its channel block (oneDNN issue #6035): with two
  // threads the weight gradient comes out wrong, or the process hangs. Conv2d steers around
  // that kernel; this checks the gradient against a loop, repeatedly, with two threads.
  Context ctx(32, 2);
  std::mt19937_64 rng(132);
  for (const int64_t C : {3, 4, 12}) {
    ParameterStore store;
    const int64_t O = 8, B = 8, H = 16, s = 2, OH = H / s;
    Conv2d conv(store, "downsample", C, O, 1, s, 0, false, Layout::nhwc);
    store.allocate(ctx.eng);
    conv.reset_parameters(ctx);
    Tensor x = check::random_tensor(ctx, {B, H, H, C}, rng);
    const Dims y_dims{B, OH, OH, O};
    Tensor r = check::random_tensor(ctx, y_dims, rng);
    // dW[o, c] = Σ r[b, i, j, o] · x[b, s·i, s·j, c]; dx[b, s·i, s·j, c] = Σ_o r · W[o, c].
    std::vector<double> want(O * C, 0.0), want_dx(x.numel(), 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < OH; ++i)
        for (int64_t j = 0; j < OH; ++j)
          for (int64_t o = 0; o < O; ++o)
            for (int64_t c = 0; c < C; ++c) {
              const double ro = r[((b * OH + i) * OH + j) * O + o];
              const int64_t xi = ((b * H + s * i) * H + s * j) * C + c;
              want[o * C + c] += ro * x[xi];
              want_dx[xi] += ro * conv.weight->value[o * C + c];
            }
    for (int round = 0; round < 4; ++round) {
      INFO("C = " << C << ", round " << round);
      REQUIRE(conv.forward(ctx, x).dims() == y_dims);
      const Tensor& dx = conv.backward(ctx, r);
      ctx.wait();
      check::check_close("weight gradient", conv.weight->grad, want);
      check::check_close("input gradient", dx, want_dx);
    }
  }
}
