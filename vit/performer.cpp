#include "vit/performer.hpp"

#include <cmath>

namespace vit {

using dnnl::algorithm;
using dnnl::memory;
using dt = memory::data_type;
using engine::memory_over;
using engine::plain_desc;

namespace {

constexpr float kEpsilon = 1e-4f;  // performer-pytorch's kernel_epsilon

dnnl::matmul make_matmul(const dnnl::engine& eng, const memory::desc& src,
                         const memory::desc& weights, const memory::desc& dst, float scale = 1.0f,
                         const dnnl::post_ops& ops = {}) {
  dnnl::primitive_attr attr;
  if (scale != 1.0f) attr.set_output_scales(0, {scale});
  attr.set_post_ops(ops);
  return dnnl::matmul({{src, weights, dst}, attr, eng});
}

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
  dnnl::binary d_num, g_out, d_den, dq_u, dk_u, k_times_rs;
  dnnl::eltwise_forward q_less_eps, k_less_eps;
  dnnl::primitive gd_sum, rs_sum;
  dnnl::matmul d_phi_q, d_phi_q_den, d_kv, d_ksum, d_phi_k, d_v, d_q, d_k;
  // memories: inputs (handles set per call) and buffers
  memory q, k, v, w_t, w, phi_q, phi_k, phi_q_t, phi_k_t, k_sq, q_stab, k_stab, kv, kv_t, ksum,
      ksum_t, num, den, out;
  memory diff_out, d_num_m, g_out_m, gd, dden, dphi_q, dkv, dkv_t, dksum, dksum_row, dphi_k, u_q,
      u_k, rs, k_rs, diff_q, diff_k, diff_v;
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
  p->q_phi = make_binary(eng, algorithm::binary_sub, feat_md, row_md, feat_md, feature_ops(M));
  // φ(k'): exp(s k·ω − ‖k‖²/(2√d) − max over the image's and head's keys and features).
  p->k_features = make_matmul(eng, k.desc(), w_t_md, feat_md, s);
  p->k_square =
      make_reduction(eng, algorithm::reduction_norm_lp_power_p_sum, k.desc(), row_md, 2.0f);
  p->k_sq_scale =
      dnnl::eltwise_forward({{dnnl::prop_kind::forward_inference, algorithm::eltwise_linear, row_md,
                              0.5f / std::sqrt(float(d)), 0.0f},
                             eng});
  p->k_minus_square = make_binary(eng, algorithm::binary_sub, feat_md, row_md, feat_md);
  p->k_max = make_reduction(eng, algorithm::reduction_max, feat_md, stab_md);
  p->k_phi = make_binary(eng, algorithm::binary_sub, feat_md, stab_md, feat_md, feature_ops(M));
  // Σ_j φ(k_j) v_jᵀ, Σ_j φ(k_j), and per query their products with φ(q_i).
  p->kv_mm = make_matmul(eng, feat_t_md, v.desc(), kv_md);
  p->k_sum = make_reduction(eng, algorithm::reduction_sum, feat_md, ksum_md);
  p->num_mm = make_matmul(eng, feat_md, kv_md, heads_md);
  p->den_mm = make_matmul(eng, feat_md, ksum_t_md, row_md);
  p->divide = make_binary(eng, algorithm::binary_div, heads_md, row_md, heads_md);
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
  p->d_num = make_binary(eng, algorithm::binary_div, heads_md, row_md, heads_md);
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
  dnnl::post_ops add_ksum;
  add_ksum.append_binary(algorithm::binary_add, ksum_md);
  p->d_phi_k = make_matmul(eng, v.desc(), kv_t_md, feat_md, 1.0f, add_ksum);
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
  p->k_times_rs = make_binary(eng, algorithm::binary_mul, k.desc(), row_md, heads_md, scale_k);
  dnnl::post_ops add_k_term;
  add_k_term.append_binary(algorithm::binary_add, heads_md);
  p->d_k = make_matmul(eng, feat_md, w_md, k.desc(), s, add_k_term);
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
  p.q_features.execute(s,
                       {{DNNL_ARG_SRC, p.q}, {DNNL_ARG_WEIGHTS, p.w_t}, {DNNL_ARG_DST, p.phi_q}});
  execute(s, p.q_max, p.phi_q, p.q_stab);
  p.q_phi.execute(s,
                  {{DNNL_ARG_SRC_0, p.phi_q}, {DNNL_ARG_SRC_1, p.q_stab}, {DNNL_ARG_DST, p.phi_q}});
  p.k_features.execute(s,
                       {{DNNL_ARG_SRC, p.k}, {DNNL_ARG_WEIGHTS, p.w_t}, {DNNL_ARG_DST, p.phi_k}});
  execute(s, p.k_square, p.k, p.k_sq);  // ‖k‖², then ‖k‖²/(2√d)
  p.k_sq_scale.execute(s, {{DNNL_ARG_SRC, p.k_sq}, {DNNL_ARG_DST, p.k_sq}});
  p.k_minus_square.execute(
      s, {{DNNL_ARG_SRC_0, p.phi_k}, {DNNL_ARG_SRC_1, p.k_sq}, {DNNL_ARG_DST, p.phi_k}});
  execute(s, p.k_max, p.phi_k, p.k_stab);
  p.k_phi.execute(s,
                  {{DNNL_ARG_SRC_0, p.phi_k}, {DNNL_ARG_SRC_1, p.k_stab}, {DNNL_ARG_DST, p.phi_k}});
  p.kv_mm.execute(s, {{DNNL_ARG_SRC, p.phi_k_t}, {DNNL_ARG_WEIGHTS, p.v}, {DNNL_ARG_DST, p.kv}});
  execute(s, p.k_sum, p.phi_k, p.ksum);
  p.num_mm.execute(s, {{DNNL_ARG_SRC, p.phi_q}, {DNNL_ARG_WEIGHTS, p.kv}, {DNNL_ARG_DST, p.num}});
  p.den_mm.execute(s,
                   {{DNNL_ARG_SRC, p.phi_q}, {DNNL_ARG_WEIGHTS, p.ksum_t}, {DNNL_ARG_DST, p.den}});
  p.divide.execute(s, {{DNNL_ARG_SRC_0, p.num}, {DNNL_ARG_SRC_1, p.den}, {DNNL_ARG_DST, p.out}});
}

void FavorAttention::backward(Context& ctx, const Tensor& diff_out, const View& diff_q,
                              const View& diff_k, const View& diff_v) {
  engine::require(plan_ != nullptr, "FavorAttention: backward called before forward");
  Plan& p = *plan_;
  engine::check_same_dims(diff_out.dims(), p.out_tensor.dims(), "FavorAttention", "diff_out");
  dnnl::stream& s = ctx.strm;
  p.diff_out.set_data_handle(diff_out.data());
  p.diff_q.set_data_handle(diff_q.data);
  p.diff_k.set_data_handle(diff_k.data);
  p.diff_v.set_data_handle(diff_v.data);
  p.d_num.execute(
      s, {{DNNL_ARG_SRC_0, p.diff_out}, {DNNL_ARG_SRC_1, p.den}, {DNNL_ARG_DST, p.d_num_m}});
  p.g_out.execute(
      s, {{DNNL_ARG_SRC_0, p.diff_out}, {DNNL_ARG_SRC_1, p.out}, {DNNL_ARG_DST, p.g_out_m}});
  execute(s, p.gd_sum, p.g_out_m, p.gd);
  p.d_den.execute(s, {{DNNL_ARG_SRC_0, p.gd}, {DNNL_ARG_SRC_1, p.den}, {DNNL_ARG_DST, p.dden}});
  p.d_phi_q.execute(
      s, {{DNNL_ARG_SRC, p.d_num_m}, {DNNL_ARG_WEIGHTS, p.kv_t}, {DNNL_ARG_DST, p.dphi_q}});
  p.d_phi_q_den.execute(
      s, {{DNNL_ARG_SRC, p.dden}, {DNNL_ARG_WEIGHTS, p.ksum}, {DNNL_ARG_DST, p.dphi_q}});
  p.d_kv.execute(s,
                 {{DNNL_ARG_SRC, p.phi_q_t}, {DNNL_ARG_WEIGHTS, p.d_num_m}, {DNNL_ARG_DST, p.dkv}});
  p.d_ksum.execute(
      s, {{DNNL_ARG_SRC, p.phi_q_t}, {DNNL_ARG_WEIGHTS, p.dden}, {DNNL_ARG_DST, p.dksum}});
  p.d_phi_k.execute(s, {{DNNL_ARG_SRC, p.v},
                        {DNNL_ARG_WEIGHTS, p.dkv_t},
                        {DNNL_ARG_DST, p.dphi_k},
                        {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, p.dksum_row}});
  p.d_v.execute(s, {{DNNL_ARG_SRC, p.phi_k}, {DNNL_ARG_WEIGHTS, p.dkv}, {DNNL_ARG_DST, p.diff_v}});
  // Queries.
  p.q_less_eps.execute(s, {{DNNL_ARG_SRC, p.phi_q}, {DNNL_ARG_DST, p.u_q}});
  p.dq_u.execute(s, {{DNNL_ARG_SRC_0, p.dphi_q}, {DNNL_ARG_SRC_1, p.u_q}, {DNNL_ARG_DST, p.u_q}});
  p.d_q.execute(s, {{DNNL_ARG_SRC, p.u_q}, {DNNL_ARG_WEIGHTS, p.w}, {DNNL_ARG_DST, p.diff_q}});
  // Keys.
  p.k_less_eps.execute(s, {{DNNL_ARG_SRC, p.phi_k}, {DNNL_ARG_DST, p.u_k}});
  p.dk_u.execute(s, {{DNNL_ARG_SRC_0, p.dphi_k}, {DNNL_ARG_SRC_1, p.u_k}, {DNNL_ARG_DST, p.u_k}});
  execute(s, p.rs_sum, p.u_k, p.rs);
  p.k_times_rs.execute(s, {{DNNL_ARG_SRC_0, p.k}, {DNNL_ARG_SRC_1, p.rs}, {DNNL_ARG_DST, p.k_rs}});
  p.d_k.execute(s, {{DNNL_ARG_SRC, p.u_k},
                    {DNNL_ARG_WEIGHTS, p.w},
                    {DNNL_ARG_DST, p.diff_k},
                    {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, p.k_rs}});
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
