#include "vit/performer.hpp"

#include <cmath>

namespace vit {

using dnnl::algorithm;
using dnnl::memory;
using dt = memory::data_type;
using engine::make_matmul;
using engine::memory_over;
using engine::plain_desc;

namespace {

constexpr float kEpsilon = 1e-4f;  // performer-pytorch's kernel_epsilon

dnnl::binary make_binary(const dnnl::engine& eng, algorithm alg, const memory::desc& src0,
                         const memory::desc& src1, const memory::desc& dst,
                         const dnnl::post_ops& ops = {}) {
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  return dnnl::binary({{alg, src0, src1, dst}, attr, eng});
}

// A reduction from src to dst over the axes where dst is 1; a copy when there are none (oneDNN's
// reduction refuses src of dst's shape: one token, or one feature).
dnnl::primitive make_reduction(const dnnl::engine& eng, algorithm alg, const memory::desc& src,
                               const memory::desc& dst, float p = 0.0f) {
  if (src.dims() == dst.dims()) return dnnl::reorder(memory(src, eng), memory(dst, eng));
  return dnnl::reduction({{alg, src, dst, p, 0.0f}, eng});
}

void execute(dnnl::stream& s, const dnnl::primitive& p, const memory& src, const memory& dst) {
  p.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}});
}

// φ from the exponents u: (exp(u) + ε)/√M as post-ops of the primitive that computes u.
dnnl::post_ops feature_ops(int64_t M) {
  dnnl::post_ops ops;
  const float c = 1.0f / std::sqrt(float(M));
  ops.append_eltwise(1.0f, algorithm::eltwise_exp, 0.0f, 0.0f);
  ops.append_eltwise(1.0f, algorithm::eltwise_linear, c, c * kEpsilon);
  return ops;
}

}  // namespace

struct FavorAttention::Plan {
  bool training = false;
  // forward
  dnnl::matmul q_features, k_features, kv_mm, num_mm, den_mm;
  dnnl::primitive q_max, k_square, k_max, k_sum;
  dnnl::eltwise_forward k_sq_scale;
  dnnl::binary q_phi, k_minus_square, k_phi, divide;
  // backward
  dnnl::binary d_num, g_out, d_den, dq_u, dk_u, k_times_rs, add_dksum, add_k_term;
  dnnl::reorder k_to_dense, dk_to_diff;
  dnnl::eltwise_forward q_less_eps, k_less_eps;
  dnnl::primitive gd_sum, rs_sum;
  dnnl::matmul d_phi_q, d_phi_q_den, d_kv, d_ksum, d_phi_k, d_v, d_q, d_k;
  // memories: inputs (handles set per call) and buffers
  memory q, k, v, w_t, w, phi_q, phi_k, phi_q_t, phi_k_t, k_sq, q_stab, k_stab, kv, kv_t, ksum,
      ksum_t, num, den, out;
  memory diff_out, d_num_m, g_out_m, gd, dden, dphi_q, dkv, dkv_t, dksum, dksum_row, dphi_k, u_q,
      u_k, rs, k_rs, diff_q, diff_k, diff_v;
  // The same buffers seen as rows, [B·H·N, ·] or [B·H, ·]: oneDNN 2.6's jit binary broadcasts a
  // [rows, 1] column over [rows, cols], not [B, H, N, 1] over [B, H, N, M] (its reference
  // kernel made Performer 30× slower than exact attention at N = 50).
  memory phi_q_rows, q_stab_rows, phi_k_rows, k_sq_rows, phi_k_images, k_stab_images, num_rows,
      den_rows, out_rows, diff_out_rows, d_num_rows, dphi_k_3, dksum_3, k_dense, k_dense_rows,
      rs_rows, k_rs_rows, dk_tmp, dk_tmp_rows;
  Tensor out_tensor;
  std::vector<Tensor> owned;  // the buffers behind the memories above
};

FavorAttention::FavorAttention(ParameterStore& store, const std::string& prefix, const VitConfig& c)
    : heads(c.num_heads),
      head_dim(c.head_dim()),
      features(c.attn_features),
      w(&store.add_buffer(prefix + ".performer_w", {c.attn_features, c.head_dim()})) {}

FavorAttention::~FavorAttention() = default;

void FavorAttention::redraw(std::mt19937_64& rng) {
  // Orthogonal random features (performer-pytorch's gaussian_orthogonal_random_matrix, scaling
  // 0): Gram-Schmidt on blocks of d Gaussian rows, each row then scaled to the norm of a fresh
  // Gaussian vector, so that the rows are marginally N(0, I) and orthogonal within a block.
  const int64_t M = features, d = head_dim;
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> block(size_t(d * d));
  for (int64_t first = 0; first < M; first += d) {
    for (double& x : block) x = normal(rng);
    for (int64_t i = 0; i < d; ++i) {
      double* r = &block[size_t(i * d)];
      for (int64_t j = 0; j < i; ++j) {
        const double* o = &block[size_t(j * d)];
        double dot = 0;
        for (int64_t e = 0; e < d; ++e) dot += r[e] * o[e];
        for (int64_t e = 0; e < d; ++e) r[e] -= dot * o[e];
      }
      double norm = 0;
      for (int64_t e = 0; e < d; ++e) norm += r[e] * r[e];
      norm = std::sqrt(norm);
      for (int64_t e = 0; e < d; ++e) r[e] /= norm;
    }
    for (int64_t i = 0; i < d && first + i < M; ++i) {
      double length = 0;
      for (int64_t e = 0; e < d; ++e) {
        const double g = normal(rng);
        length += g * g;
      }
      length = std::sqrt(length);
      for (int64_t e = 0; e < d; ++e)
        w->value[(first + i) * d + e] = float(block[size_t(i * d + e)] * length);
    }
  }
}

std::unique_ptr<FavorAttention::Plan> FavorAttention::build(Context& ctx, const View& q,
                                                            const View& k, const View& v,
                                                            bool training) const {
  const int64_t B = q.dims[0], H = heads, N = q.dims[2], d = head_dim, M = features;
  engine::require(q.dims == Dims({B, H, N, d}) && k.dims == q.dims && v.dims == q.dims,
                  "FavorAttention: q, k and v must be [B, H, N, d] with H, d of the model");
  const dnnl::engine& eng = ctx.eng;
  auto p = std::make_unique<Plan>();
  p->training = training;
  auto buffer = [&](const Dims& dims) {
    p->owned.emplace_back(eng, dims);
    return memory_over(ctx, plain_desc(dims), p->owned.back().data());
  };
  const float s = 1.0f / std::pow(float(d), 0.25f);  // q' = q/d^¼
  const memory::desc feat_md = plain_desc({B, H, N, M}),
                     feat_t_md({B, H, M, N}, dt::f32, {H * N * M, N * M, 1, M});
  const memory::desc w_t_md({1, 1, d, M}, dt::f32, {M * d, M * d, 1, d}),
      w_md = plain_desc({1, 1, M, d});
  const memory::desc row_md = plain_desc({B, H, N, 1}), heads_md = plain_desc({B, H, N, d});
  const memory::desc stab_md = plain_desc({B, H, 1, 1}), ksum_md = plain_desc({B, H, 1, M});
  const memory::desc ksum_t_md({B, H, M, 1}, dt::f32, {H * M, M, 1, 1});
  const memory::desc kv_md = plain_desc({B, H, M, d}),
                     kv_t_md({B, H, d, M}, dt::f32, {H * M * d, M * d, 1, d});

  p->q = memory_over(ctx, q.desc());
  p->k = memory_over(ctx, k.desc());
  p->v = memory_over(ctx, v.desc());
  p->w_t = memory_over(ctx, w_t_md, w->value.data());
  p->w = memory_over(ctx, w_md, w->value.data());
  p->phi_q = buffer({B, H, N, M});
  p->phi_k = buffer({B, H, N, M});
  p->phi_q_t = memory_over(ctx, feat_t_md, static_cast<float*>(p->phi_q.get_data_handle()));
  p->phi_k_t = memory_over(ctx, feat_t_md, static_cast<float*>(p->phi_k.get_data_handle()));
  p->k_sq = buffer({B, H, N, 1});
  p->q_stab = buffer({B, H, N, 1});
  p->k_stab = buffer({B, H, 1, 1});
  p->kv = buffer({B, H, M, d});
  p->kv_t = memory_over(ctx, kv_t_md, static_cast<float*>(p->kv.get_data_handle()));
  p->ksum = buffer({B, H, 1, M});
  p->ksum_t = memory_over(ctx, ksum_t_md, static_cast<float*>(p->ksum.get_data_handle()));
  p->num = buffer({B, H, N, d});
  p->den = buffer({B, H, N, 1});
  p->out_tensor = Tensor(eng, {B, H, N, d});
  p->out = memory_over(ctx, heads_md, p->out_tensor.data());

  // φ(q') up to its row's constant: exp(s q·ω − max_m) (the ‖q‖²/2 cancels with it).
  p->q_features = make_matmul(eng, q.desc(), w_t_md, feat_md, s);
  p->q_max = make_reduction(eng, algorithm::reduction_max, feat_md, row_md);
  const int64_t X = B * H * N;
  auto rows = [&](const memory& m, const Dims& dims) {
    return memory_over(ctx, plain_desc(dims), static_cast<float*>(m.get_data_handle()));
  };
  p->phi_q_rows = rows(p->phi_q, {X, M});
  p->q_stab_rows = rows(p->q_stab, {X, 1});
  p->phi_k_rows = rows(p->phi_k, {X, M});
  p->k_sq_rows = rows(p->k_sq, {X, 1});
  p->phi_k_images = rows(p->phi_k, {B * H, N * M});
  p->k_stab_images = rows(p->k_stab, {B * H, 1});
  p->num_rows = rows(p->num, {X, d});
  p->den_rows = rows(p->den, {X, 1});
  p->out_rows = rows(p->out, {X, d});
  const memory::desc feat_rows = plain_desc({X, M}), col = plain_desc({X, 1});
  const memory::desc head_rows = plain_desc({X, d});
  p->q_phi = make_binary(eng, algorithm::binary_sub, feat_rows, col, feat_rows, feature_ops(M));
  // φ(k'): exp(s k·ω − ‖k‖²/(2√d) − max over the image's and head's keys and features).
  p->k_features = make_matmul(eng, k.desc(), w_t_md, feat_md, s);
  p->k_square =
      make_reduction(eng, algorithm::reduction_norm_lp_power_p_sum, k.desc(), row_md, 2.0f);
  p->k_sq_scale =
      dnnl::eltwise_forward({{dnnl::prop_kind::forward_inference, algorithm::eltwise_linear, row_md,
                              0.5f / std::sqrt(float(d)), 0.0f},
                             eng});
  p->k_minus_square = make_binary(eng, algorithm::binary_sub, feat_rows, col, feat_rows);
  p->k_max = make_reduction(eng, algorithm::reduction_max, feat_md, stab_md);
  p->k_phi = make_binary(eng, algorithm::binary_sub, plain_desc({B * H, N * M}),
                         plain_desc({B * H, 1}), plain_desc({B * H, N * M}), feature_ops(M));
  // Σ_j φ(k_j) v_jᵀ, Σ_j φ(k_j), and per query their products with φ(q_i).
  p->kv_mm = make_matmul(eng, feat_t_md, v.desc(), kv_md);
  p->k_sum = make_reduction(eng, algorithm::reduction_sum, feat_md, ksum_md);
  p->num_mm = make_matmul(eng, feat_md, kv_md, heads_md);
  p->den_mm = make_matmul(eng, feat_md, ksum_t_md, row_md);
  p->divide = make_binary(eng, algorithm::binary_div, head_rows, col, head_rows);
  if (!training) return p;

  p->diff_out = memory_over(ctx, heads_md);
  p->d_num_m = buffer({B, H, N, d});
  p->g_out_m = buffer({B, H, N, d});
  p->gd = buffer({B, H, N, 1});
  p->dden = buffer({B, H, N, 1});
  p->dphi_q = buffer({B, H, N, M});
  p->dkv = buffer({B, H, M, d});
  p->dkv_t = memory_over(ctx, kv_t_md, static_cast<float*>(p->dkv.get_data_handle()));
  p->dksum = buffer({B, H, M, 1});
  p->dksum_row = memory_over(ctx, ksum_md, static_cast<float*>(p->dksum.get_data_handle()));
  p->dphi_k = buffer({B, H, N, M});
  p->u_q = buffer({B, H, N, M});
  p->u_k = buffer({B, H, N, M});
  p->rs = buffer({B, H, N, 1});
  p->k_rs = buffer({B, H, N, d});
  p->diff_q = memory_over(ctx, q.desc());
  p->diff_k = memory_over(ctx, k.desc());
  p->diff_v = memory_over(ctx, v.desc());
  // out = num/den: dnum = g/den, dden = −Σ_e g·out / den.
  p->diff_out_rows = memory_over(ctx, head_rows);
  p->d_num_rows = rows(p->d_num_m, {X, d});
  p->d_num = make_binary(eng, algorithm::binary_div, head_rows, col, head_rows);
  p->g_out = make_binary(eng, algorithm::binary_mul, heads_md, heads_md, heads_md);
  p->gd_sum = make_reduction(eng, algorithm::reduction_sum, heads_md, row_md);
  dnnl::post_ops negate;
  negate.append_eltwise(1.0f, algorithm::eltwise_linear, -1.0f, 0.0f);
  p->d_den = make_binary(eng, algorithm::binary_div, row_md, row_md, row_md, negate);
  // dφq = dnum·kvᵀ + dden·ksum, dkv = φqᵀ·dnum, dksum = φqᵀ·dden.
  p->d_phi_q = make_matmul(eng, heads_md, kv_t_md, feat_md);
  dnnl::post_ops accumulate;
  accumulate.append_sum(1.0f);
  p->d_phi_q_den = make_matmul(eng, row_md, ksum_md, feat_md, 1.0f, accumulate);
  p->d_kv = make_matmul(eng, feat_t_md, heads_md, kv_md);
  p->d_ksum = make_matmul(eng, feat_t_md, row_md, ksum_t_md);
  // dφk = v·dkvᵀ + dksumᵀ, dv = φk·dkv.
  p->d_phi_k = make_matmul(eng, v.desc(), kv_t_md, feat_md);
  p->dphi_k_3 = rows(p->dphi_k, {B * H, N, M});
  p->dksum_3 = rows(p->dksum, {B * H, 1, M});
  p->add_dksum = make_binary(eng, algorithm::binary_add, p->dphi_k_3.get_desc(),
                             p->dksum_3.get_desc(), p->dphi_k_3.get_desc());
  p->d_v = make_matmul(eng, feat_md, kv_md, v.desc());
  // Through φ = (exp(u) + ε)/√M: du = dφ·(φ − ε/√M); the stabilisers are constants.
  const float c = 1.0f / std::sqrt(float(M));
  p->q_less_eps = dnnl::eltwise_forward({{dnnl::prop_kind::forward_inference,
                                          algorithm::eltwise_linear, feat_md, 1.0f, -c * kEpsilon},
                                         eng});
  p->k_less_eps = p->q_less_eps;
  p->dq_u = make_binary(eng, algorithm::binary_mul, feat_md, feat_md, feat_md);
  p->dk_u = p->dq_u;
  // dq = s·du_q·W; dk = s·du_k·W − (Σ_m du_k)·k/√d.
  p->d_q = make_matmul(eng, feat_md, w_md, q.desc(), s);
  p->rs_sum = make_reduction(eng, algorithm::reduction_sum, feat_md, row_md);
  dnnl::post_ops scale_k;
  scale_k.append_eltwise(1.0f, algorithm::eltwise_linear, -1.0f / std::sqrt(float(d)), 0.0f);
  p->k_dense = buffer({B, H, N, d});  // k copied dense in forward
  p->k_dense_rows = rows(p->k_dense, {X, d});
  p->k_to_dense = dnnl::reorder(p->k, p->k_dense);
  p->rs_rows = rows(p->rs, {X, 1});
  p->k_rs_rows = rows(p->k_rs, {X, d});
  p->k_times_rs = make_binary(eng, algorithm::binary_mul, head_rows, col, head_rows, scale_k);
  p->dk_tmp = buffer({B, H, N, d});
  p->dk_tmp_rows = rows(p->dk_tmp, {X, d});
  p->d_k = make_matmul(eng, feat_md, w_md, heads_md, s);
  p->add_k_term = make_binary(eng, algorithm::binary_add, head_rows, head_rows, head_rows);
  p->dk_to_diff = dnnl::reorder(p->dk_tmp, p->diff_k);
  return p;
}

const Tensor& FavorAttention::forward(Context& ctx, const View& q, const View& k, const View& v) {
  Dims key = q.dims;
  for (const Dims* part : {&q.strides, &k.strides, &v.strides})
    key.insert(key.end(), part->begin(), part->end());
  if (!plan_ || key != plan_key_) plan_ = build(ctx, q, k, v, /*training=*/true), plan_key_ = key;
  Plan& p = *plan_;
  p.q.set_data_handle(q.data);
  p.k.set_data_handle(k.data);
  p.v.set_data_handle(v.data);
  run_forward(ctx.strm, p);
  return p.out_tensor;
}

void FavorAttention::Fused::run(dnnl::stream& s) const {
  run_forward(s, *static_cast<Plan*>(plan.get()));
}

void FavorAttention::run_forward(dnnl::stream& s, Plan& p) {
  auto mm = [&](const dnnl::matmul& m, const memory& a, const memory& b, const memory& c) {
    m.execute(s, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
  };
  auto bin = [&](const dnnl::binary& b, const memory& a, const memory& c, const memory& dst) {
    b.execute(s, {{DNNL_ARG_SRC_0, a}, {DNNL_ARG_SRC_1, c}, {DNNL_ARG_DST, dst}});
  };
  mm(p.q_features, p.q, p.w_t, p.phi_q);
  execute(s, p.q_max, p.phi_q, p.q_stab);
  bin(p.q_phi, p.phi_q_rows, p.q_stab_rows, p.phi_q_rows);
  mm(p.k_features, p.k, p.w_t, p.phi_k);
  execute(s, p.k_square, p.k, p.k_sq);  // ‖k‖², then ‖k‖²/(2√d)
  p.k_sq_scale.execute(s, {{DNNL_ARG_SRC, p.k_sq}, {DNNL_ARG_DST, p.k_sq}});
  bin(p.k_minus_square, p.phi_k_rows, p.k_sq_rows, p.phi_k_rows);
  execute(s, p.k_max, p.phi_k, p.k_stab);
  bin(p.k_phi, p.phi_k_images, p.k_stab_images, p.phi_k_images);
  mm(p.kv_mm, p.phi_k_t, p.v, p.kv);
  execute(s, p.k_sum, p.phi_k, p.ksum);
  mm(p.num_mm, p.phi_q, p.kv, p.num);
  mm(p.den_mm, p.phi_q, p.ksum_t, p.den);
  bin(p.divide, p.num_rows, p.den_rows, p.out_rows);
  if (p.training) p.k_to_dense.execute(s, p.k, p.k_dense);
}

void FavorAttention::backward(Context& ctx, const Tensor& diff_out, const View& diff_q,
                              const View& diff_k, const View& diff_v) {
  engine::require(plan_ != nullptr, "FavorAttention: backward called before forward");
  Plan& p = *plan_;
  engine::check_same_dims(diff_out.dims(), p.out_tensor.dims(), "FavorAttention", "diff_out");
  dnnl::stream& s = ctx.strm;
  auto mm = [&](const dnnl::matmul& m, const memory& a, const memory& b, const memory& c) {
    m.execute(s, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
  };
  auto bin = [&](const dnnl::binary& b, const memory& a, const memory& c, const memory& dst) {
    b.execute(s, {{DNNL_ARG_SRC_0, a}, {DNNL_ARG_SRC_1, c}, {DNNL_ARG_DST, dst}});
  };
  p.diff_out.set_data_handle(diff_out.data());
  p.diff_out_rows.set_data_handle(diff_out.data());
  p.diff_q.set_data_handle(diff_q.data);
  p.diff_k.set_data_handle(diff_k.data);
  p.diff_v.set_data_handle(diff_v.data);
  bin(p.d_num, p.diff_out_rows, p.den_rows, p.d_num_rows);
  bin(p.g_out, p.diff_out, p.out, p.g_out_m);
  execute(s, p.gd_sum, p.g_out_m, p.gd);
  bin(p.d_den, p.gd, p.den, p.dden);
  mm(p.d_phi_q, p.d_num_m, p.kv_t, p.dphi_q);
  mm(p.d_phi_q_den, p.dden, p.ksum, p.dphi_q);  // accumulates
  mm(p.d_kv, p.phi_q_t, p.d_num_m, p.dkv);
  mm(p.d_ksum, p.phi_q_t, p.dden, p.dksum);
  mm(p.d_phi_k, p.v, p.dkv_t, p.dphi_k);
  bin(p.add_dksum, p.dphi_k_3, p.dksum_3, p.dphi_k_3);
  mm(p.d_v, p.phi_k, p.dkv, p.diff_v);
  // Queries.
  p.q_less_eps.execute(s, {{DNNL_ARG_SRC, p.phi_q}, {DNNL_ARG_DST, p.u_q}});
  bin(p.dq_u, p.dphi_q, p.u_q, p.u_q);
  mm(p.d_q, p.u_q, p.w, p.diff_q);
  // Keys.
  p.k_less_eps.execute(s, {{DNNL_ARG_SRC, p.phi_k}, {DNNL_ARG_DST, p.u_k}});
  bin(p.dk_u, p.dphi_k, p.u_k, p.u_k);
  execute(s, p.rs_sum, p.u_k, p.rs);
  bin(p.k_times_rs, p.k_dense_rows, p.rs_rows, p.k_rs_rows);
  mm(p.d_k, p.u_k, p.w, p.dk_tmp);
  bin(p.add_k_term, p.dk_tmp_rows, p.k_rs_rows, p.dk_tmp_rows);
  p.dk_to_diff.execute(s, p.dk_tmp, p.diff_k);
}

FavorAttention::Fused FavorAttention::fused(FusedBuild& f, const memory& q, const memory& k,
                                            const memory& v) const {
  auto view = [](const memory& m) {
    const memory::desc md = m.get_desc();
    const auto& blk = md.data.format_desc.blocking;
    Dims strides(blk.strides, blk.strides + md.data.ndims);
    return View{static_cast<float*>(m.get_data_handle()), md.dims(), strides};
  };
  std::shared_ptr<Plan> plan = build(f.ctx, view(q), view(k), view(v), /*training=*/false);
  plan->q.set_data_handle(q.get_data_handle());
  plan->k.set_data_handle(k.get_data_handle());
  plan->v.set_data_handle(v.get_data_handle());
  Fused out;
  out.out = &plan->out_tensor;
  out.plan = plan;
  return out;
}

}  // namespace vit
