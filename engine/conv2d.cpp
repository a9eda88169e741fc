#include "engine/conv2d.hpp"

#include <cmath>
#include <string>

#include "engine/init.hpp"

namespace engine {

using dnnl::memory;

Conv2d::Conv2d(ParameterStore& store, const std::string& name, int64_t in, int64_t out,
               int64_t kernel, int64_t stride_, int64_t padding_, bool has_bias, Layout layout_)
    : in_channels(in),
      out_channels(out),
      kernel_size(kernel),
      stride(stride_),
      padding(padding_),
      layout(layout_) {
  require(in > 0 && out > 0 && kernel > 0 && stride_ > 0 && padding_ >= 0,
          "Conv2d '" + name + "': channels, kernel and stride must be positive");
  weight = &store.add(name + ".weight", {out, in, kernel, kernel});
  bias = has_bias ? &store.add(name + ".bias", {out}, /*decay=*/false) : nullptr;
}

void Conv2d::reset_parameters(Context& ctx) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(in_channels * kernel_size * kernel_size));
  uniform(ctx, weight->value, -bound, bound);
  if (bias) uniform(ctx, bias->value, -bound, bound);
}

std::unique_ptr<Conv2d::Plan> Conv2d::build(Context& ctx, const Dims& src_dims) {
  const ImageShape s = image_shape(src_dims, layout);
  const int64_t oh = (s.h + 2 * padding - kernel_size) / stride + 1;
  const int64_t ow = (s.w + 2 * padding - kernel_size) / stride + 1;
  require(oh > 0 && ow > 0, "Conv2d: input " + to_string(src_dims) + " is smaller than the kernel");
  auto p = std::make_unique<Plan>();
  const ImageShape d{s.n, out_channels, oh, ow};
  p->dst_tensor = Tensor(ctx.eng, tensor_dims(d, layout));
  p->diff_src_tensor = Tensor(ctx.eng, src_dims);

  const memory::desc src_md = image_desc(s, layout), dst_md = image_desc(d, layout);
  const memory::desc w_md = plain_desc(weight->dims);  // the parameter: OIHW
  const memory::desc w_any =
      layout == Layout::nchw
          ? w_md
          : memory::desc(weight->dims, memory::data_type::f32, memory::format_tag::any);
  const memory::desc b_md = bias ? plain_desc({out_channels}) : memory::desc();
  const Dims strides{stride, stride}, pad{padding, padding};
  const auto algo = dnnl::algorithm::convolution_direct;

  dnnl::convolution_forward::primitive_desc fwd_pd(
      {dnnl::prop_kind::forward_training, algo, src_md, w_any, b_md, dst_md, strides, pad, pad},
      ctx.eng);
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd(
      {algo, src_md, w_any, dst_md, strides, pad, pad}, ctx.eng, fwd_pd);
  // The iterator behind next_impl() points at the op descriptor: keep it alive by name.
  const dnnl::convolution_backward_weights::desc bwd_weights_desc(algo, src_md, w_any, b_md, dst_md,
                                                                  strides, pad, pad);
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd(bwd_weights_desc, ctx.eng,
                                                                    fwd_pd);
  // oneDNN 2.6's jit_1x1 backward-weights kernel, on a strided NHWC input with fewer channels
  // than its 16-wide channel block, copies the input to unit stride past the end of its buffer
  // (oneDNN issue #6035): wrong gradients, or a hang, with several threads. Take the next
  // implementation for that case.
  if (layout == Layout::nhwc && kernel_size == 1 && stride > 1 && in_channels < 16) {
    auto is_1x1 = [&] {
      return std::string(bwd_weights_pd.impl_info_str()).find("1x1") != std::string::npos;
    };
    while (is_1x1())
      require(bwd_weights_pd.next_impl(),
              "Conv2d: oneDNN offers no backward-weights kernel for "
              "a strided 1x1 NHWC convolution but a faulty one");
  }
  p->fwd = dnnl::convolution_forward(fwd_pd);
  p->bwd_data = dnnl::convolution_backward_data(bwd_data_pd);
  p->bwd_weights = dnnl::convolution_backward_weights(bwd_weights_pd);

  p->src = memory_over(ctx, src_md);
  p->weight = memory_over(ctx, w_md, weight->value.data());
  p->dst = memory_over(ctx, dst_md, p->dst_tensor.data());
  p->diff_dst = memory_over(ctx, dst_md);
  p->diff_src = memory_over(ctx, src_md, p->diff_src_tensor.data());
  p->diff_weight = memory_over(ctx, w_md, weight->grad.data());
  if (bias) {
    p->bias = memory_over(ctx, b_md, bias->value.data());
    p->diff_bias = memory_over(ctx, b_md, bias->grad.data());
  }
  auto weight_copy = [&](const memory::desc& want, const memory& param, bool into_param) {
    if (want == w_md) return WeightCopy{param, {}};
    memory mem = owned_memory(ctx, want);
    return WeightCopy{mem, into_param ? dnnl::reorder(mem, param) : dnnl::reorder(param, mem)};
  };
  p->fwd_weight = weight_copy(fwd_pd.weights_desc(), p->weight, false);
  p->bwd_data_weight = bwd_data_pd.weights_desc() == fwd_pd.weights_desc()
                           ? WeightCopy{p->fwd_weight.mem, {}}  // already reordered by forward
                           : weight_copy(bwd_data_pd.weights_desc(), p->weight, false);
  p->bwd_diff_weight = weight_copy(bwd_weights_pd.diff_weights_desc(), p->diff_weight, true);
  return p;
}

const Tensor& Conv2d::forward(Context& ctx, const Tensor& src) {
  const int64_t c = src.dims().size() == 4 ? image_shape(src.dims(), layout).c : -1;
  require(c == in_channels, "Conv2d: input has shape " + to_string(src.dims()) + ", expected " +
                                layout_name(layout) + " with C = " + std::to_string(in_channels));
  Plan& p = plans_.get(src.dims(), [&] { return build(ctx, src.dims()); });
  p.src.set_data_handle(src.data());
  if (p.fwd_weight.reorder) p.fwd_weight.reorder.execute(ctx.strm, p.weight, p.fwd_weight.mem);
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, p.src}, {DNNL_ARG_WEIGHTS, p.fwd_weight.mem}, {DNNL_ARG_DST, p.dst}};
  if (bias) args[DNNL_ARG_BIAS] = p.bias;
  p.fwd.execute(ctx.strm, args);
  return p.dst_tensor;
}

const Tensor& Conv2d::backward(Context& ctx, const Tensor& diff_dst) {
  Plan& p = plans_.current("Conv2d");
  check_same_dims(diff_dst.dims(), p.dst_tensor.dims(), "Conv2d", "diff_dst");
  p.diff_dst.set_data_handle(diff_dst.data());
  if (input_gradient) {
    if (p.bwd_data_weight.reorder)
      p.bwd_data_weight.reorder.execute(ctx.strm, p.weight, p.bwd_data_weight.mem);
    p.bwd_data.execute(ctx.strm, {{DNNL_ARG_DIFF_DST, p.diff_dst},
                                  {DNNL_ARG_WEIGHTS, p.bwd_data_weight.mem},
                                  {DNNL_ARG_DIFF_SRC, p.diff_src}});
  }
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, p.src},
                                       {DNNL_ARG_DIFF_DST, p.diff_dst},
                                       {DNNL_ARG_DIFF_WEIGHTS, p.bwd_diff_weight.mem}};
  if (bias) args[DNNL_ARG_DIFF_BIAS] = p.diff_bias;
  p.bwd_weights.execute(ctx.strm, args);
  if (p.bwd_diff_weight.reorder)
    p.bwd_diff_weight.reorder.execute(ctx.strm, p.bwd_diff_weight.mem, p.diff_weight);
  return p.diff_src_tensor;
}

}  // namespace engine
