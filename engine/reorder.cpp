#include "engine/reorder.hpp"

namespace engine {

void Reorder::operator()(Context& ctx, const View& src, const View& dst) {
  check_same_dims(dst.dims, src.dims, "Reorder", "dst");
  Dims key = src.dims;
  key.insert(key.end(), src.strides.begin(), src.strides.end());
  key.insert(key.end(), dst.strides.begin(), dst.strides.end());
  Plan& p = plans_.get(key, [&] {
    auto plan = std::make_unique<Plan>();
    plan->src = memory_over(ctx, src.desc());
    plan->dst = memory_over(ctx, dst.desc());
    dnnl::primitive_attr attr;
    if (accumulate) {
      dnnl::post_ops ops;
      ops.append_sum(1.0f);
      attr.set_post_ops(ops);
    }
    plan->prim = dnnl::reorder(plan->src, plan->dst, attr);
    return plan;
  });
  p.src.set_data_handle(src.data);
  p.dst.set_data_handle(dst.data);
  p.prim.execute(ctx.strm, p.src, p.dst);
}

const Tensor& ToNhwc::operator()(Context& ctx, const Tensor& nchw) {
  require(nchw.dims().size() == 4,
          "ToNhwc: images have shape " + to_string(nchw.dims()) + ", expected [B, C, H, W]");
  const int64_t B = nchw.dim(0), C = nchw.dim(1), H = nchw.dim(2), W = nchw.dim(3);
  if (C == 1) return view_ = nchw.reshaped({B, H, W, 1});
  Tensor& nhwc = buffers_.get(nchw.dims(), [&] {
    return std::make_unique<Tensor>(ctx.eng, Dims{B, H, W, C});
  });
  transpose_(ctx, View{nchw.data(), {B, H, W, C}, {C * H * W, W, 1, H * W}}, nhwc.as_view());
  return nhwc;
}

}  // namespace engine
