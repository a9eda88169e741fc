#include "vit/rollout.hpp"

#include <algorithm>
#include <numeric>

#include "engine/error.hpp"

namespace vit {

using dnnl::memory;
using engine::plain_desc;
using engine::require;

Tensor attention_rollout(Context& ctx, const std::vector<const Tensor*>& probs, int64_t prefix,
                         bool class_token, const RolloutOptions& options) {
  require(!probs.empty(), "attention rollout: no attention probabilities");
  const Dims dims = probs[0]->dims();
  require(dims.size() == 4 && dims[2] == dims[3],
          "attention rollout: probabilities must be [B, H, N, N], got " + engine::to_string(dims));
  const int64_t B = dims[0], H = dims[1], N = dims[2];
  require(
      prefix >= 0 && prefix < N && (!class_token || prefix >= 1),
      "attention rollout: " + std::to_string(prefix) + " prefix tokens of " + std::to_string(N));
  const std::string& fusion = options.head_fusion;
  require(fusion == "mean" || fusion == "max" || fusion == "min",
          "--head-fusion must be mean, max or min, got '" + fusion + "'");
  require(options.discard_ratio >= 0.0 && options.discard_ratio < 1.0,
          "--discard-ratio must be in [0, 1), got " + std::to_string(options.discard_ratio));
  for (const Tensor* p : probs)
    engine::check_same_dims(p->dims(), dims, "attention rollout", "probs");

  const dnnl::engine& eng = ctx.eng;
  const memory::desc heads_md = plain_desc(dims), fused_md = plain_desc({B, 1, N, N});
  const memory::desc rows_md = plain_desc({B, N, N}), sums_md = plain_desc({B, 1, N, 1});
  // The heads fused by a reduction (a copy for one head: oneDNN refuses an empty reduction).
  const dnnl::algorithm alg = fusion == "mean"  ? dnnl::algorithm::reduction_mean
                              : fusion == "max" ? dnnl::algorithm::reduction_max
                                                : dnnl::algorithm::reduction_min;
  const dnnl::primitive fuse =
      H == 1 ? dnnl::primitive(dnnl::reorder(memory(heads_md, eng), memory(fused_md, eng)))
             : dnnl::primitive(dnnl::reduction({{alg, heads_md, fused_md, 0.0f, 0.0f}, eng}));
  const int fuse_src = H == 1 ? DNNL_ARG_FROM : DNNL_ARG_SRC;
  const int fuse_dst = H == 1 ? DNNL_ARG_TO : DNNL_ARG_DST;
  Tensor fused(eng, {B, 1, N, N}), eye(eng, {1, 1, N, N}), sums(eng, {B, 1, N, 1});
  Tensor result(eng, {B, N, N}), next(eng, {B, N, N});
  for (int64_t i = 0; i < N; ++i) eye[i * N + i] = 1.0f;
  for (int64_t b = 0; b < B; ++b)  // the product starts as the identity
    for (int64_t i = 0; i < N; ++i) result[(b * N + i) * N + i] = 1.0f;
  const memory fused_mem(fused_md, eng, fused.data()),
      eye_mem(plain_desc({1, 1, N, N}), eng, eye.data());
  const memory sums_mem(sums_md, eng, sums.data());
  const dnnl::binary add_eye(
      {{dnnl::algorithm::binary_add, fused_md, eye_mem.get_desc(), fused_md}, eng});
  const dnnl::reduction row_sums(
      {{dnnl::algorithm::reduction_sum, fused_md, sums_md, 0.0f, 0.0f}, eng});
  const dnnl::binary normalise({{dnnl::algorithm::binary_div, fused_md, sums_md, fused_md}, eng});
  const dnnl::matmul product = engine::make_matmul(eng, rows_md, rows_md, rows_md, 1.0f);
  const memory fused_rows(rows_md, eng, fused.data());

  const int64_t drop = static_cast<int64_t>(options.discard_ratio * double(N * N));
  std::vector<int64_t> order(static_cast<size_t>(N * N));
  for (size_t l = 0; l < probs.size(); ++l) {
    const memory src(heads_md, eng, probs[l]->data());
    fuse.execute(ctx.strm, {{fuse_src, src}, {fuse_dst, fused_mem}});
    ctx.wait();
    // The lowest weights of each image's fused matrix, ties by position: a selection, which no
    // oneDNN primitive does.
    if (drop > 0)
      for (int64_t b = 0; b < B; ++b) {
        float* a = fused.data() + b * N * N;
        std::iota(order.begin(), order.end(), int64_t{0});
        std::nth_element(
            order.begin(), order.begin() + drop, order.end(),
            [a](int64_t x, int64_t y) { return a[x] < a[y] || (a[x] == a[y] && x < y); });
        for (int64_t i = 0; i < drop; ++i) a[order[i]] = 0.0f;
      }
    add_eye.execute(
        ctx.strm,
        {{DNNL_ARG_SRC_0, fused_mem}, {DNNL_ARG_SRC_1, eye_mem}, {DNNL_ARG_DST, fused_mem}});
    row_sums.execute(ctx.strm, {{DNNL_ARG_SRC, fused_mem}, {DNNL_ARG_DST, sums_mem}});
    normalise.execute(
        ctx.strm,
        {{DNNL_ARG_SRC_0, fused_mem}, {DNNL_ARG_SRC_1, sums_mem}, {DNNL_ARG_DST, fused_mem}});
    // This block's mixing applied after everything before it.
    product.execute(ctx.strm, {{DNNL_ARG_SRC, fused_rows},
                               {DNNL_ARG_WEIGHTS, memory(rows_md, eng, result.data())},
                               {DNNL_ARG_DST, memory(rows_md, eng, next.data())}});
    std::swap(result, next);
  }
  ctx.wait();

  const int64_t L = N - prefix;
  Tensor map(eng, {B, L});
  for (int64_t b = 0; b < B; ++b) {
    const float* r = result.data() + b * N * N;
    for (int64_t j = 0; j < L; ++j) {
      if (class_token) {
        map[b * L + j] = r[prefix + j];  // row 0: the cls token
        continue;
      }
      double s = 0;
      for (int64_t i = prefix; i < N; ++i) s += r[i * N + prefix + j];
      map[b * L + j] = float(s / double(L));
    }
  }
  return map;
}

}  // namespace vit
