// Copies a tensor between two layouts of the same logical shape with a oneDNN reorder: a
// strided slice made dense (the cls row of the tokens), a dense block written into a slice (the
// patch tokens after the cls row), a transpose made real (attention heads back to tokens). The
// gradient of a copy is the copy the other way, so backward is the same call with the
// arguments swapped.
#pragma once

#include "engine/plan.hpp"

namespace engine {

class Reorder {
 public:
  // accumulate: dst += src (a sum post-op), the adjoint of a gather whose copies overlap.
  explicit Reorder(bool accumulate = false) : accumulate(accumulate) {}
  void operator()(Context& ctx, const View& src, const View& dst);

  bool accumulate;

 private:
  struct Plan {
    dnnl::reorder prim;
    dnnl::memory src, dst;
  };
  PlanCache<Plan> plans_;
};

// Images [B, C, H, W] (torch's NCHW) as channels-last [B, H, W, C] for the NHWC convolutions:
// one channel is the same bytes (a view), more are transposed into a buffer kept per shape.
// The result stays valid until the next call.
class ToNhwc {
 public:
  const Tensor& operator()(Context& ctx, const Tensor& nchw);

 private:
  Reorder transpose_;
  PlanCache<Tensor> buffers_;
  Tensor view_;
};

}  // namespace engine
