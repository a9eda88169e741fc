#include "engine/pooling.hpp"

namespace engine {

using dnnl::memory;

Pool2d::Pool2d(dnnl::algorithm algorithm, int64_t kernel, int64_t stride_, int64_t padding_,
               Layout layout_)
    : kernel_size(kernel),
      stride(stride_),
      padding(padding_),
      layout(layout_),
      algorithm_(algorithm) {
  require(kernel >= 0 && stride_ > 0 && padding_ >= 0 && (kernel == 0 || 2 * padding_ <= kernel),
          "Pool2d: kernel, stride and padding must be positive, padding at most half the kernel");
}

std::unique_ptr<Pool2d::Plan> Pool2d::build(Context& ctx, const Dims& src_dims) {
  const ImageShape s = image_shape(src_dims, layout);
  const int64_t kh = kernel_size ? kernel_size : s.h, kw = kernel_size ? kernel_size : s.w;
  const int64_t st = kernel_size ? stride : 1, pad = kernel_size ? padding : 0;
  const int64_t oh = (s.h + 2 * pad - kh) / st + 1, ow = (s.w + 2 * pad - kw) / st + 1;
  require(oh > 0 && ow > 0, "Pool2d: input " + to_string(src_dims) + " is smaller than the kernel");
  auto p = std::make_unique<Plan>();
  const ImageShape d{s.n, s.c, oh, ow};
  p->dst_tensor = Tensor(ctx.eng, tensor_dims(d, layout));
  p->diff_src_tensor = Tensor(ctx.eng, src_dims);
  const memory::desc src_md = image_desc(s, layout), dst_md = image_desc(d, layout);
  const Dims strides{st, st}, kernel{kh, kw}, pads{pad, pad};

  // Training propagation: max pooling keeps the argmax in a workspace for backward.
  dnnl::pooling_forward::primitive_desc fwd_pd(
      {dnnl::prop_kind::forward_training, algorithm_, src_md, dst_md, strides, kernel, pads, pads},
      ctx.eng);
  p->fwd = dnnl::pooling_forward(fwd_pd);
  p->bwd = dnnl::pooling_backward(
      {{algorithm_, src_md, dst_md, strides, kernel, pads, pads}, ctx.eng, fwd_pd});
  p->src = memory_over(ctx, src_md);
  p->dst = memory_over(ctx, dst_md, p->dst_tensor.data());
  p->diff_dst = memory_over(ctx, dst_md);
  p->diff_src = memory_over(ctx, src_md, p->diff_src_tensor.data());
  p->workspace = owned_memory(ctx, fwd_pd.workspace_desc());
  return p;
}

const Tensor& Pool2d::forward(Context& ctx, const Tensor& src) {
  require(src.dims().size() == 4,
          "Pool2d: input has shape " + to_string(src.dims()) + ", expected " + layout_name(layout));
  Plan& p = plans_.get(src.dims(), [&] { return build(ctx, src.dims()); });
  p.src.set_data_handle(src.data());
  p.fwd.execute(ctx.strm,
                {{DNNL_ARG_SRC, p.src}, {DNNL_ARG_DST, p.dst}, {DNNL_ARG_WORKSPACE, p.workspace}});
  return p.dst_tensor;
}

const Tensor& Pool2d::backward(Context& ctx, const Tensor& diff_dst) {
  Plan& p = plans_.current("Pool2d");
  check_same_dims(diff_dst.dims(), p.dst_tensor.dims(), "Pool2d", "diff_dst");
  p.diff_dst.set_data_handle(diff_dst.data());
  p.bwd.execute(ctx.strm, {{DNNL_ARG_DIFF_DST, p.diff_dst},
                           {DNNL_ARG_DIFF_SRC, p.diff_src},
                           {DNNL_ARG_WORKSPACE, p.workspace}});
  return p.diff_src_tensor;
}

}  // namespace engine
