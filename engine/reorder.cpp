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

}  // namespace engine
