// Reorder (strided copies), BroadcastAdd (x + pos_embed) and DropPath.
#include <doctest/doctest.h>

#include "check.hpp"
#include "engine/binary.hpp"
#include "engine/reorder.hpp"

using namespace engine;

TEST_CASE("Reorder copies a slice into place and back, and transposes heads to tokens") {
  Context ctx(1);
  std::mt19937_64 rng(141);
  const int64_t B = 2, L = 3, D = 4, N = L + 1;
  Tensor patches = check::random_tensor(ctx, {B, L, D}, rng);
  Tensor tokens(ctx.eng, {B, N, D});
  const View rows{tokens.data() + D, {B, L, D}, {N * D, D, 1}};  // tokens[:, 1:, :]
  Reorder copy;
  copy(ctx, patches.as_view(), rows);
  ctx.wait();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < D; ++i) CHECK(tokens[b * N * D + i] == 0.0f);  // cls row untouched
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l)
      for (int64_t i = 0; i < D; ++i)
        CHECK(tokens[(b * N + l + 1) * D + i] == patches[(b * L + l) * D + i]);
  Tensor back(ctx.eng, {B, L, D});
  copy(ctx, rows, back.as_view());
  ctx.wait();
  CHECK(check::copy_of(back) == check::copy_of(patches));

  // [B, H, N, d] dense -> [B, N, H, d] storage: what attention does before its projection.
  const int64_t H = 2, d = 2;
  Tensor heads = check::random_tensor(ctx, {B, H, N, d}, rng);
  Tensor merged(ctx.eng, {B, N, H * d});
  copy(ctx, heads.as_view(), View{merged.data(), {B, H, N, d}, {N * H * d, d, H * d, 1}});
  ctx.wait();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < d; ++j)
          CHECK(merged[((b * N + n) * H + h) * d + j] == heads[((b * H + h) * N + n) * d + j]);
}

TEST_CASE("BroadcastAdd adds a table to every sample; its gradient is the batch sum") {
  Context ctx(2);
  std::mt19937_64 rng(142);
  for (int64_t B : {1, 3}) {
    CAPTURE(B);
    Tensor x = check::random_tensor(ctx, {B, 4, 5}, rng);
    Tensor table = check::random_tensor(ctx, {1, 4, 5}, rng);
    BroadcastAdd add;
    const Tensor& y = add.forward(ctx, x, table);
    ctx.wait();
    std::vector<double> want(x.numel());
    for (int64_t i = 0; i < x.numel(); ++i) want[i] = double(x[i]) + table[i % 20];
    check::check_close("x + table", y, want, 1e-7, 0);
    auto forward = [&]() -> const Tensor& { return add.forward(ctx, x, table); };
    Tensor r = check::random_tensor(ctx, y.dims(), rng);
    Tensor d_table(ctx.eng, {1, 4, 5});
    add.backward(ctx, r, d_table);
    ctx.wait();
    // x's gradient is diff_dst itself (no code computes it); the table's is the batch sum.
    std::vector<double> sum(table.numel());
    for (int64_t i = 0; i < r.numel(); ++i) sum[i % 20] += r[i];
    check::check_close("Σ_b diff_dst[b]", d_table, sum, 1e-6, 1e-6);
    check::check_gradients(ctx, forward, r,
                           {{"table", table.data(), table.numel(), d_table.data()}});
  }
}

TEST_CASE("DropPath drops whole samples and scales the kept ones") {
  Context ctx(3);
  std::mt19937_64 rng(143);
  const int64_t B = 400;
  Tensor x(ctx.eng, {B, 3, 2});
  std::fill_n(x.data(), x.numel(), 1.0f);
  DropPath drop(0.25f);
  const Tensor& y = drop.forward(ctx, x);
  ctx.wait();
  int dropped = 0;
  for (int64_t b = 0; b < B; ++b) {
    const float v = y[b * 6];
    for (int64_t i = 1; i < 6; ++i) CHECK(y[b * 6 + i] == v);  // one decision per sample
    if (v == 0.0f)
      ++dropped;
    else
      CHECK(v == doctest::Approx(1.0 / 0.75));
  }
  CHECK(double(dropped) / B == doctest::Approx(0.25).epsilon(0.3));
  Tensor small = check::random_tensor(ctx, {6, 2, 3}, rng);
  auto forward = [&]() -> const Tensor& {
    ctx.rng.seed(99);
    return drop.forward(ctx, small);
  };
  Tensor r = check::random_tensor(ctx, forward().dims(), rng);
  const Tensor& dx = drop.backward(ctx, r);
  ctx.wait();
  check::check_gradients(ctx, forward, r, {{"x", small.data(), small.numel(), dx.data()}});
  drop.training = false;
  CHECK(&drop.forward(ctx, small) == &small);
}
