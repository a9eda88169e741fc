// BatchedMatmul on plain tensors and on strided views: transposes and the attention heads of
// a fused qkv buffer, read and written in place.
#include <doctest/doctest.h>

#include "check.hpp"
#include "engine/batched_matmul.hpp"

using namespace engine;

namespace {

// alpha · A·B over the last two axes, every operand addressed through its strides.
std::vector<double> naive_matmul(const View& a, const View& b, double alpha) {
  const size_t r = a.dims.size();
  const int64_t M = a.dims[r - 2], K = a.dims[r - 1], N = b.dims[r - 1];
  const int64_t batch = product(a.dims) / (M * K);
  std::vector<double> c(batch * M * N);
  for (int64_t t = 0; t < batch; ++t) {
    int64_t a_off = 0, b_off = 0, rest = t;
    for (int i = static_cast<int>(r) - 3; i >= 0; --i) {
      const int64_t idx = rest % a.dims[i];
      rest /= a.dims[i];
      a_off += idx * a.strides[i];
      b_off += idx * b.strides[i];
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k)
          s += double(a.data[a_off + m * a.strides[r - 2] + k * a.strides[r - 1]]) *
               b.data[b_off + k * b.strides[r - 2] + n * b.strides[r - 1]];
        c[(t * M + m) * N + n] = alpha * s;
      }
  }
  return c;
}

}  // namespace

TEST_CASE("BatchedMatmul on plain tensors, and a hand-computed case") {
  Context ctx(1);
  std::mt19937_64 rng(61);
  Tensor a = check::random_tensor(ctx, {2, 3, 4}, rng),
         b = check::random_tensor(ctx, {2, 4, 5}, rng);
  BatchedMatmul mm;
  const Tensor& c = mm.forward(ctx, a.as_view(), b.as_view());
  ctx.wait();
  CHECK(c.dims() == Dims{2, 3, 5});
  check::check_close("A·B", c, naive_matmul(a.as_view(), b.as_view(), 1.0));

  Tensor x(ctx.eng, {1, 2, 2}), y(ctx.eng, {1, 2, 2});
  const float xv[] = {1, 2, 3, 4}, yv[] = {5, 6, 7, 8};
  std::copy(xv, xv + 4, x.data());
  std::copy(yv, yv + 4, y.data());
  BatchedMatmul hand(0.5f);
  const Tensor& z = hand.forward(ctx, x.as_view(), y.as_view());
  ctx.wait();
  CHECK(z[0] == 0.5f * 19);
  CHECK(z[1] == 0.5f * 22);
  CHECK(z[2] == 0.5f * 43);
  CHECK(z[3] == 0.5f * 50);
}

TEST_CASE("BatchedMatmul reads a transpose as a strided view") {
  Context ctx(1);
  std::mt19937_64 rng(62);
  Tensor a = check::random_tensor(ctx, {3, 4, 2}, rng);  // stored as Aᵀ
  Tensor b = check::random_tensor(ctx, {3, 4, 5}, rng);
  BatchedMatmul mm(0.25f);
  const View at = a.as_view().transposed();  // [3, 2, 4]
  const Tensor& c = mm.forward(ctx, at, b.as_view());
  ctx.wait();
  CHECK(c.dims() == Dims{3, 2, 5});
  check::check_close("Aᵀ·B", c, naive_matmul(at, b.as_view(), 0.25));

  // Gradients written back into the transposed storage of A.
  auto forward = [&]() -> const Tensor& { return mm.forward(ctx, at, b.as_view()); };
  Tensor r = check::random_tensor(ctx, c.dims(), rng);
  Tensor da(ctx.eng, a.dims()), db(ctx.eng, b.dims());
  mm.backward(ctx, r, da.as_view().transposed(), db.as_view());
  ctx.wait();
  check::check_gradients(
      ctx, forward, r,
      {{"a", a.data(), a.numel(), da.data()}, {"b", b.data(), b.numel(), db.data()}});
}

TEST_CASE("BatchedMatmul forward and backward on the heads of a fused qkv buffer") {
  // qkv [B, N, 3, H, d] as a Linear would produce it; q, k, v of head h are strided views.
  const int64_t B = 2, N = 3, H = 2, d = 4, D = H * d;
  Context ctx(1);
  std::mt19937_64 rng(63);
  Tensor qkv = check::random_tensor(ctx, {B, N, 3 * D}, rng);
  Tensor diff_qkv(ctx.eng, {B, N, 3 * D});
  auto head_view = [&](const Tensor& t, int which) {
    return View{t.data() + which * D, {B, H, N, d}, {N * 3 * D, d, 3 * D, 1}};
  };
  const float scale = 1.0f / std::sqrt(float(d));
  BatchedMatmul qk(scale), av;
  // out = (scale·q·kᵀ)·v: attention without the softmax, to check both matmuls in place.
  auto forward = [&]() -> const Tensor& {
    const Tensor& scores = qk.forward(ctx, head_view(qkv, 0), head_view(qkv, 1).transposed());
    return av.forward(ctx, scores.as_view(), head_view(qkv, 2));
  };
  const Tensor& out = forward();
  ctx.wait();
  CHECK(out.dims() == Dims{B, H, N, d});
  const std::vector<double> scores_ref =
      naive_matmul(head_view(qkv, 0), head_view(qkv, 1).transposed(), scale);
  std::vector<float> scores_f(scores_ref.begin(), scores_ref.end());
  const View scores_view{scores_f.data(), {B, H, N, N}, row_major_strides({B, H, N, N})};
  check::check_close("attention heads", out, naive_matmul(scores_view, head_view(qkv, 2), 1.0),
                     1e-5, 1e-5);

  Tensor r = check::random_tensor(ctx, out.dims(), rng);
  Tensor diff_scores(ctx.eng, {B, H, N, N});
  av.backward(ctx, r, diff_scores.as_view(), head_view(diff_qkv, 2));
  qk.backward(ctx, diff_scores, head_view(diff_qkv, 0), head_view(diff_qkv, 1).transposed());
  ctx.wait();
  check::check_gradients(ctx, forward, r, {{"qkv", qkv.data(), qkv.numel(), diff_qkv.data()}});

  SUBCASE("backward writes, never accumulates") {
    forward();
    av.backward(ctx, r, diff_scores.as_view(), head_view(diff_qkv, 2));
    qk.backward(ctx, diff_scores, head_view(diff_qkv, 0), head_view(diff_qkv, 1).transposed());
    ctx.wait();
    const auto first = check::copy_of(diff_qkv);
    av.backward(ctx, r, diff_scores.as_view(), head_view(diff_qkv, 2));
    qk.backward(ctx, diff_scores, head_view(diff_qkv, 0), head_view(diff_qkv, 1).transposed());
    ctx.wait();
    CHECK(check::copy_of(diff_qkv) == first);
  }
}

TEST_CASE("BatchedMatmul rejects mismatched operands") {
  Context ctx(1);
  Tensor a(ctx.eng, {2, 3, 4}), b(ctx.eng, {2, 5, 6}), c(ctx.eng, {3, 4, 6});
  BatchedMatmul mm;
  CHECK_THROWS_AS(mm.forward(ctx, a.as_view(), b.as_view()), Error);
  CHECK_THROWS_AS(mm.forward(ctx, a.as_view(), c.as_view()), Error);
}
