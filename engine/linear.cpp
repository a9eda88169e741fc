#include "engine/linear.hpp"

#include <algorithm>
#include <cmath>

#include "engine/init.hpp"

namespace engine {

using dnnl::memory;

Linear::Linear(ParameterStore& store, const std::string& name, int64_t in, int64_t out,
               bool has_bias, Dims weight_shape)
    : in_features(in), out_features(out) {
  require(in > 0 && out > 0, "Linear '" + name + "': features must be positive");
  if (weight_shape.empty()) weight_shape = {out, in};
  require(weight_shape[0] == out && product(weight_shape) == out * in,
          "Linear '" + name + "': weight shape " + to_string(weight_shape) + " is not [" +
              std::to_string(out) + ", " + std::to_string(in) + "] reshaped");
  weight = &store.add(name + ".weight", weight_shape);
  bias = has_bias ? &store.add(name + ".bias", {out}, /*decay=*/false) : nullptr;
}

void Linear::reset_parameters(Context& ctx) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(in_features));
  uniform(ctx, weight->value, -bound, bound);
  if (bias) uniform(ctx, bias->value, -bound, bound);
}

void Linear::set_precision(Precision p) {
  if (p == precision) return;
  precision = p;
  plans_.clear();  // built for the other precision
}

std::unique_ptr<Linear::Plan> Linear::build(Context& ctx, const Dims& src_dims) {
  const int64_t M = product(src_dims) / in_features;
  const int64_t I = in_features, O = out_features;
  const memory::data_type low = data_type(precision);
  const bool bf16 = precision == Precision::bf16;
  auto p = std::make_unique<Plan>();
  Dims dst_dims = src_dims;
  dst_dims.back() = O;
  p->dst_tensor = Tensor(ctx.eng, dst_dims);
  p->diff_src_tensor = gradient_buffer(ctx, grad_slot, src_dims);

  // Operand descriptors in the matmul type; results and bias are f32.
  const memory::desc src_md({M, I}, low, Dims{I, 1}), dst_md = plain_desc({M, O});
  const memory::desc w_md({O, I}, low, Dims{I, 1});    // whatever weight->dims says, same bytes
  const memory::desc w_t_md({I, O}, low, Dims{1, I});  // Wᵀ as a view
  const memory::desc dd_md({M, O}, low, Dims{O, 1});
  const memory::desc dd_t_md({O, M}, low, Dims{1, O});  // diff_dstᵀ
  const memory::desc b_md = plain_desc({1, O});

  p->fwd = dnnl::matmul(
      {dnnl::matmul::desc(src_md, w_t_md, bias ? b_md : memory::desc(), dst_md), ctx.eng});
  p->bwd_data = dnnl::matmul({dnnl::matmul::desc(dd_md, w_md, plain_desc({M, I})), ctx.eng});
  p->bwd_weights = dnnl::matmul({dnnl::matmul::desc(dd_t_md, src_md, plain_desc({O, I})), ctx.eng});
  if (bias) p->bwd_bias = RowSum(ctx, M, O);

  p->dst = memory_over(ctx, dst_md, p->dst_tensor.data());
  p->diff_src = memory_over(ctx, plain_desc({M, I}), p->diff_src_tensor.data());
  p->diff_weight = memory_over(ctx, plain_desc({O, I}), weight->grad.data());
  if (bf16) {
    // Owned bf16 copies; the transposed views share their buffers.
    p->src = owned_memory(ctx, src_md);
    p->weight = owned_memory(ctx, w_md);
    p->diff_dst = owned_memory(ctx, dd_md);
    p->weight_t = dnnl::memory(w_t_md, ctx.eng, p->weight.get_data_handle());
    p->diff_dst_t = dnnl::memory(dd_t_md, ctx.eng, p->diff_dst.get_data_handle());
    p->src_f32 = memory_over(ctx, plain_desc({M, I}));
    p->weight_f32 = memory_over(ctx, plain_desc({O, I}), weight->value.data());
    p->diff_dst_f32 = memory_over(ctx, dst_md);
    p->src_to_low = dnnl::reorder(p->src_f32, p->src);
    p->weight_to_low = dnnl::reorder(p->weight_f32, p->weight);
    p->diff_dst_to_low = dnnl::reorder(p->diff_dst_f32, p->diff_dst);
  } else {
    p->src = memory_over(ctx, src_md);
    p->weight = memory_over(ctx, w_md, weight->value.data());
    p->weight_t = memory_over(ctx, w_t_md, weight->value.data());
    p->diff_dst = memory_over(ctx, dd_md);
    p->diff_dst_t = memory_over(ctx, dd_t_md);
    p->diff_dst_f32 = p->diff_dst;
  }
  if (bias) {
    p->bias = memory_over(ctx, b_md, bias->value.data());
    p->diff_bias = memory_over(ctx, b_md, bias->grad.data());
  }
  return p;
}

const Tensor& Linear::forward(Context& ctx, const Tensor& src) {
  require(src.dim(-1) == in_features, "Linear: input has shape " + to_string(src.dims()) +
                                          ", expected last axis " + std::to_string(in_features));
  Plan& p = plans_.get(src.dims(), [&] { return build(ctx, src.dims()); });
  if (precision == Precision::bf16) {
    p.src_f32.set_data_handle(src.data());
    p.src_to_low.execute(ctx.strm, p.src_f32, p.src);
    p.weight_to_low.execute(ctx.strm, p.weight_f32, p.weight);
  } else {
    p.src.set_data_handle(src.data());
  }
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, p.src}, {DNNL_ARG_WEIGHTS, p.weight_t}, {DNNL_ARG_DST, p.dst}};
  if (bias) args[DNNL_ARG_BIAS] = p.bias;
  p.fwd.execute(ctx.strm, args);
  return p.dst_tensor;
}

const Tensor& Linear::backward(Context& ctx, const Tensor& diff_dst) {
  Plan& p = plans_.current("Linear");
  check_same_dims(diff_dst.dims(), p.dst_tensor.dims(), "Linear", "diff_dst");
  if (precision == Precision::bf16) {
    p.diff_dst_f32.set_data_handle(diff_dst.data());
    p.diff_dst_to_low.execute(ctx.strm, p.diff_dst_f32, p.diff_dst);
  } else {
    p.diff_dst.set_data_handle(diff_dst.data());
    p.diff_dst_t.set_data_handle(diff_dst.data());
  }
  if (input_gradient)
    p.bwd_data.execute(
        ctx.strm,
        {{DNNL_ARG_SRC, p.diff_dst}, {DNNL_ARG_WEIGHTS, p.weight}, {DNNL_ARG_DST, p.diff_src}});
  p.bwd_weights.execute(
      ctx.strm,
      {{DNNL_ARG_SRC, p.diff_dst_t}, {DNNL_ARG_WEIGHTS, p.src}, {DNNL_ARG_DST, p.diff_weight}});
  if (bias) p.bwd_bias(ctx, p.diff_dst_f32, p.diff_bias);
  return p.diff_src_tensor;
}

Linear::Fused Linear::fused(FusedBuild& f, const memory::desc& src, const memory::desc& dst,
                            const dnnl::post_ops& ops, int64_t first, int64_t rows, float scale,
                            const Parameter* out_scale) const {
  if (rows < 0) rows = out_features;
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  const memory::desc weights({in_features, rows}, src.data_type(), memory::format_tag::any);
  const memory::desc bias_md = bias ? plain_desc({1, rows}) : memory::desc();
  const dnnl::matmul::primitive_desc pd({src, weights, bias_md, dst}, attr, f.ctx.eng);
  Fused out;
  out.prim = f.matmul(pd);
  out.weight = f.packed.linear(f.ctx, *weight, pd.weights_desc(), first, rows, scale, out_scale);
  if (bias) out.bias = f.packed.vector(f.ctx, *bias, first, rows, scale, out_scale);
  return out;
}

void Linear::Fused::run(dnnl::stream& s, const memory& src, const memory& dst) const {
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weight}, {DNNL_ARG_DST, dst}};
  if (bias) args[DNNL_ARG_BIAS] = bias;
  prim.execute(s, args);
}

}  // namespace engine
