#include "vit/additive_scores.hpp"

namespace vit {

using dnnl::memory;
using dt = memory::data_type;
using engine::make_matmul;
using engine::memory_over;
using engine::plain_desc;

AdditiveScores::AdditiveScores(ParameterStore& store, const std::string& prefix, const VitConfig& c,
                               float alpha)
    : heads(c.num_heads),
      head_dim(c.head_dim()),
      dim(c.additive_dim()),
      alpha(alpha),
      w_q(&store.add(prefix + ".additive_q", {c.num_heads, c.additive_dim(), c.head_dim()})),
      w_k(&store.add(prefix + ".additive_k", {c.num_heads, c.additive_dim(), c.head_dim()})),
      w(&store.add(prefix + ".additive_w", {c.num_heads, c.additive_dim()})) {}

void AdditiveScores::init_weights(Context& ctx) {
  for (engine::Parameter* p : {w_q, w_k, w}) engine::trunc_normal(ctx, p->value, 0.0f, 0.02f);
}

std::unique_ptr<AdditiveScores::Plan> AdditiveScores::build(Context& ctx, const View& q,
                                                            const View& k) {
  const int64_t B = q.dims[0], H = heads, Nq = q.dims[2], Nk = k.dims[2], d = head_dim, A = dim;
  engine::require(q.dims == Dims({B, H, Nq, d}) && k.dims == Dims({B, H, Nk, d}),
                  "AdditiveScores: q " + engine::to_string(q.dims) + " and k " +
                      engine::to_string(k.dims) + " are not [B, H, N, d] with H, d of the model");
  const dnnl::engine& eng = ctx.eng;
  auto p = std::make_unique<Plan>();
  // The weights in the layouts the matmuls read, broadcast over the images.
  const memory::desc w_q_t_md({1, H, d, A}, dt::f32, {H * A * d, A * d, 1, d});  // W_qᵀ
  const memory::desc w_q_md = plain_desc({1, H, A, d});
  const memory::desc w_col_md = plain_desc({1, H, A, 1}), w_row_md = plain_desc({1, H, 1, A});
  const memory::desc a_md = plain_desc({B, H, Nq, A}), b_md = plain_desc({B, H, Nk, A});
  // a broadcast over the keys and b over the queries (strides of 0), each copied dense by a
  // reorder before one dense binary add: oneDNN 2.6 has a jit binary for neither broadcast,
  // and its reference one took 98 % of the step (1.25 s for 8 images at N = 50; now 8 ms).
  const memory::desc a_wide_md({B, H, Nq, Nk, A}, dt::f32, {H * Nq * A, Nq * A, A, 0, 1});
  const memory::desc b_wide_md({B, H, Nq, Nk, A}, dt::f32, {H * Nk * A, Nk * A, 0, A, 1});
  const memory::desc t_md = plain_desc({B, H, Nq, Nk, A}),
                     t_rows_md = plain_desc({B, H, Nq * Nk, A});
  const memory::desc col_md = plain_desc({B, H, Nq * Nk, 1}),
                     row_md = plain_desc({B, H, 1, Nq * Nk});

  p->a_mm = make_matmul(eng, q.desc(), w_q_t_md, a_md);
  p->b_mm = make_matmul(eng, k.desc(), w_q_t_md, b_md);
  dnnl::post_ops tanh_op;
  tanh_op.append_eltwise(1.0f, dnnl::algorithm::eltwise_tanh, 0.0f, 0.0f);
  dnnl::primitive_attr tanh_attr;
  tanh_attr.set_post_ops(tanh_op);
  p->sum_tanh = dnnl::binary({{dnnl::algorithm::binary_add, t_md, t_md, t_md}, tanh_attr, eng});
  p->s_mm = make_matmul(eng, t_rows_md, w_col_md, col_md, alpha);

  p->d_t_mm = make_matmul(eng, col_md, w_row_md, t_rows_md, alpha);
  const dnnl::eltwise_forward::primitive_desc tanh_hint(
      {dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_tanh_use_dst_for_bwd, t_md, 0.0f,
       0.0f},
      eng);
  p->tanh_bwd = dnnl::eltwise_backward(
      {{dnnl::algorithm::eltwise_tanh_use_dst_for_bwd, t_md, t_md, 0.0f, 0.0f}, eng, tanh_hint});
  p->d_w_mm = make_matmul(eng, row_md, t_rows_md, plain_desc({B, H, 1, A}), alpha);
  const memory::desc d_a_md = plain_desc({B, H, Nq, 1, A}), d_b_md = plain_desc({B, H, 1, Nk, A});
  // Σ over the keys and over the queries as 1ᵀ·dT, matmuls with a row of ones broadcast over
  // the batch axes: oneDNN 2.6's reduction has no jit kernel for these axes (its reference one
  // took 85 % of a training step).
  const int64_t most = std::max(Nq, Nk);
  p->ones = Tensor(eng, {most});
  std::fill_n(p->ones.data(), most, 1.0f);
  p->ones_k = memory_over(ctx, plain_desc({1, 1, 1, 1, Nk}), p->ones.data());
  p->ones_q = memory_over(ctx, plain_desc({1, 1, 1, Nq}), p->ones.data());
  p->sum_keys = make_matmul(eng, p->ones_k.get_desc(), t_md, d_a_md);
  p->d_t_wide = memory_over(ctx, plain_desc({B, H, Nq, Nk * A}));
  p->sum_queries =
      make_matmul(eng, p->ones_q.get_desc(), p->d_t_wide.get_desc(), plain_desc({B, H, 1, Nk * A}));
  p->d_q_mm = make_matmul(eng, a_md, w_q_md, q.desc());
  p->d_k_mm = make_matmul(eng, b_md, w_q_md, k.desc());
  // daᵀ·q and dbᵀ·k per image, then Σ over the images.
  const memory::desc d_a_t_md({B, H, A, Nq}, dt::f32, {H * Nq * A, Nq * A, 1, A});
  const memory::desc d_b_t_md({B, H, A, Nk}, dt::f32, {H * Nk * A, Nk * A, 1, A});
  const memory::desc per_image_md = plain_desc({B, H, A, d});
  p->d_wq_mm = make_matmul(eng, d_a_t_md, q.desc(), per_image_md);
  p->d_wk_mm = make_matmul(eng, d_b_t_md, k.desc(), per_image_md);
  p->sum_images_w = engine::RowSum(ctx, B, H * A);
  p->sum_images_wq = engine::RowSum(ctx, B, H * A * d);

  p->scores = Tensor(eng, {B, H, Nq, Nk});
  p->t_buf = Tensor(eng, {B, H, Nq, Nk, A});
  p->d_t_buf = Tensor(eng, {B, H, Nq, Nk, A});
  p->d_a_buf = Tensor(eng, {B, H, Nq, A});
  p->d_b_buf = Tensor(eng, {B, H, Nk, A});
  p->d_t_wide.set_data_handle(p->d_t_buf.data());
  p->d_w_buf = Tensor(eng, {B, H * A});
  p->d_wq_buf = Tensor(eng, {B, H * A * d});
  p->d_wk_buf = Tensor(eng, {B, H * A * d});
  // a and b are scratch: backward needs T only.
  p->a = memory(a_md, eng);
  p->b = memory(b_md, eng);
  p->a_wide = memory(a_wide_md, eng, p->a.get_data_handle());
  p->b_wide = memory(b_wide_md, eng, p->b.get_data_handle());

  p->q = memory_over(ctx, q.desc());
  p->k = memory_over(ctx, k.desc());
  p->w_q_t = memory_over(ctx, w_q_t_md, w_q->value.data());
  p->w_k_t = memory_over(ctx, w_q_t_md, w_k->value.data());
  p->w_q_mem = memory_over(ctx, w_q_md, w_q->value.data());
  p->w_k_mem = memory_over(ctx, w_q_md, w_k->value.data());
  p->w_col = memory_over(ctx, w_col_md, w->value.data());
  p->w_row = memory_over(ctx, w_row_md, w->value.data());
  p->t = memory_over(ctx, t_md, p->t_buf.data());
  p->t_rows = memory_over(ctx, t_rows_md, p->t_buf.data());
  p->scores_col = memory_over(ctx, col_md, p->scores.data());
  p->diff_scores_col = memory_over(ctx, col_md);
  p->diff_scores_row = memory_over(ctx, row_md);
  p->d_t = memory_over(ctx, t_md, p->d_t_buf.data());
  p->d_t_rows = memory_over(ctx, t_rows_md, p->d_t_buf.data());
  p->d_a = memory_over(ctx, d_a_md, p->d_a_buf.data());
  p->d_b = memory_over(ctx, d_b_md, p->d_b_buf.data());
  p->d_b_wide = memory_over(ctx, plain_desc({B, H, 1, Nk * A}), p->d_b_buf.data());
  p->d_a_t = memory_over(ctx, d_a_t_md, p->d_a_buf.data());
  p->d_b_t = memory_over(ctx, d_b_t_md, p->d_b_buf.data());
  p->diff_q = memory_over(ctx, q.desc());
  p->diff_k = memory_over(ctx, k.desc());
  p->d_w_images = memory_over(ctx, plain_desc({B, H * A}), p->d_w_buf.data());
  p->d_w_heads = memory_over(ctx, plain_desc({B, H, 1, A}), p->d_w_buf.data());
  p->d_wq_images = memory_over(ctx, plain_desc({B, H * A * d}), p->d_wq_buf.data());
  p->d_wk_images = memory_over(ctx, plain_desc({B, H * A * d}), p->d_wk_buf.data());
  p->d_w_sum = memory_over(ctx, plain_desc({1, H * A}));
  p->d_wq_sum = memory_over(ctx, plain_desc({1, H * A * d}));
  p->d_wk_sum = memory_over(ctx, plain_desc({1, H * A * d}));
  p->b_dense_buf = Tensor(eng, {B, H, Nq, Nk, A});
  p->b_dense = memory_over(ctx, t_md, p->b_dense_buf.data());
  p->spread_a = dnnl::reorder(p->a_wide, p->t);
  p->spread_b = dnnl::reorder(p->b_wide, p->b_dense);
  return p;
}

const Tensor& AdditiveScores::forward(Context& ctx, const View& q, const View& k) {
  Dims key = q.dims;
  for (const Dims* part : {&q.strides, &k.dims, &k.strides})
    key.insert(key.end(), part->begin(), part->end());
  Plan& p = plans_.get(key, [&] { return build(ctx, q, k); });
  p.q.set_data_handle(q.data);
  p.k.set_data_handle(k.data);
  dnnl::stream& s = ctx.strm;
  p.a_mm.execute(s, {{DNNL_ARG_SRC, p.q}, {DNNL_ARG_WEIGHTS, p.w_q_t}, {DNNL_ARG_DST, p.a}});
  p.b_mm.execute(s, {{DNNL_ARG_SRC, p.k}, {DNNL_ARG_WEIGHTS, p.w_k_t}, {DNNL_ARG_DST, p.b}});
  p.spread_a.execute(s, p.a_wide, p.t);
  p.spread_b.execute(s, p.b_wide, p.b_dense);
  p.sum_tanh.execute(s, {{DNNL_ARG_SRC_0, p.t}, {DNNL_ARG_SRC_1, p.b_dense}, {DNNL_ARG_DST, p.t}});
  p.s_mm.execute(
      s, {{DNNL_ARG_SRC, p.t_rows}, {DNNL_ARG_WEIGHTS, p.w_col}, {DNNL_ARG_DST, p.scores_col}});
  return p.scores;
}

void AdditiveScores::backward(Context& ctx, const Tensor& diff_scores, const View& diff_q,
                              const View& diff_k) {
  Plan& p = plans_.current("AdditiveScores");
  engine::check_same_dims(diff_scores.dims(), p.scores.dims(), "AdditiveScores", "diff_scores");
  dnnl::stream& s = ctx.strm;
  p.diff_scores_col.set_data_handle(diff_scores.data());
  p.diff_scores_row.set_data_handle(diff_scores.data());
  // ∂s/∂w = alpha·T, so dw = alpha Σ ds·T; dT = alpha·ds·w, then through tanh: (1 − T²)·dT.
  p.d_w_mm.execute(s, {{DNNL_ARG_SRC, p.diff_scores_row},
                       {DNNL_ARG_WEIGHTS, p.t_rows},
                       {DNNL_ARG_DST, p.d_w_heads}});
  p.d_w_sum.set_data_handle(w->grad.data());
  p.sum_images_w(ctx, p.d_w_images, p.d_w_sum);
  p.d_t_mm.execute(
      s,
      {{DNNL_ARG_SRC, p.diff_scores_col}, {DNNL_ARG_WEIGHTS, p.w_row}, {DNNL_ARG_DST, p.d_t_rows}});
  p.tanh_bwd.execute(s,
                     {{DNNL_ARG_DST, p.t}, {DNNL_ARG_DIFF_DST, p.d_t}, {DNNL_ARG_DIFF_SRC, p.d_t}});
  p.sum_keys.execute(s,
                     {{DNNL_ARG_SRC, p.ones_k}, {DNNL_ARG_WEIGHTS, p.d_t}, {DNNL_ARG_DST, p.d_a}});
  p.sum_queries.execute(
      s, {{DNNL_ARG_SRC, p.ones_q}, {DNNL_ARG_WEIGHTS, p.d_t_wide}, {DNNL_ARG_DST, p.d_b_wide}});
  p.diff_q.set_data_handle(diff_q.data);
  p.diff_k.set_data_handle(diff_k.data);
  p.d_q_mm.execute(
      s, {{DNNL_ARG_SRC, p.d_a}, {DNNL_ARG_WEIGHTS, p.w_q_mem}, {DNNL_ARG_DST, p.diff_q}});
  p.d_k_mm.execute(
      s, {{DNNL_ARG_SRC, p.d_b}, {DNNL_ARG_WEIGHTS, p.w_k_mem}, {DNNL_ARG_DST, p.diff_k}});
  p.d_wq_mm.execute(
      s, {{DNNL_ARG_SRC, p.d_a_t}, {DNNL_ARG_WEIGHTS, p.q}, {DNNL_ARG_DST, p.d_wq_images}});
  p.d_wq_sum.set_data_handle(w_q->grad.data());
  p.sum_images_wq(ctx, p.d_wq_images, p.d_wq_sum);
  p.d_wk_mm.execute(
      s, {{DNNL_ARG_SRC, p.d_b_t}, {DNNL_ARG_WEIGHTS, p.k}, {DNNL_ARG_DST, p.d_wk_images}});
  p.d_wk_sum.set_data_handle(w_k->grad.data());
  p.sum_images_wq(ctx, p.d_wk_images, p.d_wk_sum);
}

AdditiveScores::Fused AdditiveScores::fused(FusedBuild& f, const std::vector<memory>& q_heads,
                                            const std::vector<memory>& k_heads,
                                            const memory& scores, const dnnl::post_ops& ops) const {
  const dnnl::engine& eng = f.ctx.eng;
  const memory::dims qd = q_heads.front().get_desc().dims();
  const int64_t G = qd[0], H = heads, N = qd[2], d = head_dim, A = dim;
  Fused p;
  p.q = q_heads, p.k = k_heads;
  const memory::desc w_q_t_md({1, H, d, A}, dt::f32, {H * A * d, A * d, 1, d});
  const memory::desc w_col_md = plain_desc({1, H, A, 1});
  const memory::desc ab_md = plain_desc({G, H, N, A});
  const memory::desc a_wide_md({G, H, N, N, A}, dt::f32, {H * N * A, N * A, A, 0, 1});
  const memory::desc b_wide_md({G, H, N, N, A}, dt::f32, {H * N * A, N * A, 0, A, 1});
  const memory::desc t_md = plain_desc({G, H, N, N, A}), t_rows_md = plain_desc({G, H, N * N, A});
  const memory::desc col_md({G, H, N * N, 1}, scores.get_desc().data_type(),
                            {H * N * N, N * N, 1, 1});
  // The weights straight from the store: f32, and followed as they change.
  p.w_q_t = memory(w_q_t_md, eng, w_q->value.data());
  p.w_k_t = memory(w_q_t_md, eng, w_k->value.data());
  p.w_col = memory(w_col_md, eng, w->value.data());
  p.a = f.buffer("additive.a", ab_md);
  p.a_wide = memory(a_wide_md, eng, p.a.get_data_handle());
  p.b = f.buffer("additive.b", ab_md);
  p.b_wide = memory(b_wide_md, eng, p.b.get_data_handle());
  p.b_dense = f.buffer("additive.b_dense", t_md);
  p.t = f.buffer("additive.t", t_md);
  p.t_rows = memory(t_rows_md, eng, p.t.get_data_handle());
  p.a_mm = f.matmul({{q_heads.front().get_desc(), w_q_t_md, ab_md}, eng});
  p.b_mm = f.matmul({{k_heads.front().get_desc(), w_q_t_md, ab_md}, eng});
  dnnl::post_ops tanh_op;
  tanh_op.append_eltwise(1.0f, dnnl::algorithm::eltwise_tanh, 0.0f, 0.0f);
  dnnl::primitive_attr tanh_attr;
  tanh_attr.set_post_ops(tanh_op);
  p.spread_a = dnnl::reorder(p.a_wide, p.t);
  p.spread_b = dnnl::reorder(p.b_wide, p.b_dense);
  p.sum_tanh = dnnl::binary({{dnnl::algorithm::binary_add, t_md, t_md, t_md}, tanh_attr, eng});
  dnnl::primitive_attr attr;
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  attr.set_post_ops(ops);
  p.s_mm = f.matmul({{t_rows_md, w_col_md, col_md}, attr, eng});
  p.scores_col = memory(col_md, eng, scores.get_data_handle());
  return p;
}

void AdditiveScores::Fused::run(dnnl::stream& s, size_t group) const {
  a_mm.execute(s, {{DNNL_ARG_SRC, q[group]}, {DNNL_ARG_WEIGHTS, w_q_t}, {DNNL_ARG_DST, a}});
  b_mm.execute(s, {{DNNL_ARG_SRC, k[group]}, {DNNL_ARG_WEIGHTS, w_k_t}, {DNNL_ARG_DST, b}});
  spread_a.execute(s, {{DNNL_ARG_FROM, a_wide}, {DNNL_ARG_TO, t}});
  spread_b.execute(s, {{DNNL_ARG_FROM, b_wide}, {DNNL_ARG_TO, b_dense}});
  sum_tanh.execute(s, {{DNNL_ARG_SRC_0, t}, {DNNL_ARG_SRC_1, b_dense}, {DNNL_ARG_DST, t}});
  s_mm.execute(s, {{DNNL_ARG_SRC, t_rows}, {DNNL_ARG_WEIGHTS, w_col}, {DNNL_ARG_DST, scores_col}});
}

}  // namespace vit
