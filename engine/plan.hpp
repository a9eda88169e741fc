// Shared plumbing for layers: primitives are built once per input shape and kept, so a layer
// that sees the training batch, a last partial batch and the evaluation batch holds three
// plans and switches between them without rebuilding anything.
#pragma once

#include <algorithm>
#include <map>
#include <memory>
#include <string>

#include <oneapi/dnnl/dnnl.hpp>

#include "engine/context.hpp"
#include "engine/error.hpp"
#include "engine/tensor.hpp"

namespace engine {

template <class Plan>
class PlanCache {
 public:
  // `build()` returns a std::unique_ptr<Plan>; it runs only for a key not seen before.
  template <class Build>
  Plan& get(const Dims& key, Build&& build) {
    auto it = plans_.find(key);
    if (it == plans_.end()) it = plans_.emplace(key, build()).first;
    current_ = it->second.get();
    return *current_;
  }
  // Forgets every plan (a layer switched precision).
  void clear() {
    plans_.clear();
    current_ = nullptr;
  }
  size_t size() const { return plans_.size(); }
  // The plan of the last forward: what backward must use.
  Plan& current(const char* layer) const {
    require(current_ != nullptr, std::string(layer) + ": backward called before forward");
    return *current_;
  }

 private:
  std::map<Dims, std::unique_ptr<Plan>> plans_;
  Plan* current_ = nullptr;
};

inline dnnl::memory::desc plain_desc(const Dims& dims) {
  return dnnl::memory::desc(dims, dnnl::memory::data_type::f32, row_major_strides(dims));
}

// A oneDNN memory over caller-owned data; a null handle is set later with set_data_handle.
inline dnnl::memory memory_over(const Context& ctx, const dnnl::memory::desc& desc,
                                float* data = nullptr) {
  return dnnl::memory(desc, ctx.eng, data != nullptr ? static_cast<void*>(data) : DNNL_MEMORY_NONE);
}

// A matmul primitive dst = scale · src·weights, then `ops`.
inline dnnl::matmul make_matmul(const dnnl::engine& eng, const dnnl::memory::desc& src,
                                const dnnl::memory::desc& weights, const dnnl::memory::desc& dst,
                                float scale = 1.0f, const dnnl::post_ops& ops = {}) {
  dnnl::primitive_attr attr;
  if (scale != 1.0f) attr.set_output_scales(0, {scale});
  attr.set_post_ops(ops);
  return dnnl::matmul({{src, weights, dst}, attr, eng});
}

// A scratch or workspace buffer the size a primitive descriptor asks for (none if zero).
inline dnnl::memory owned_memory(const Context& ctx, const dnnl::memory::desc& desc) {
  return dnnl::memory(desc, ctx.eng);
}

// Σ over the rows of a [rows, cols] matrix, as 1ᵀ·X: a GEMV. The batch sum behind bias and
// positional-table gradients; oneDNN's reduction refuses rows = 1, a matmul does not.
struct RowSum {
  RowSum() = default;
  RowSum(const Context& ctx, int64_t rows, int64_t cols)
      : ones_tensor(ctx.eng, {1, rows}),
        ones(memory_over(ctx, plain_desc({1, rows}), ones_tensor.data())),
        prim({dnnl::matmul::desc(plain_desc({1, rows}), plain_desc({rows, cols}),
                                 plain_desc({1, cols})),
              ctx.eng}) {
    std::fill_n(ones_tensor.data(), rows, 1.0f);
  }
  // src [rows, cols] -> dst [1, cols], overwritten.
  void operator()(Context& ctx, const dnnl::memory& src, const dnnl::memory& dst) const {
    prim.execute(ctx.strm, {{DNNL_ARG_SRC, ones}, {DNNL_ARG_WEIGHTS, src}, {DNNL_ARG_DST, dst}});
  }

  Tensor ones_tensor;
  dnnl::memory ones;
  dnnl::matmul prim;
};

// How a 4-D image tensor is laid out in memory: torch's default NCHW ([B, C, H, W] row-major)
// or channels-last NHWC ([B, H, W, C] row-major). Both are plain; oneDNN 2.6 runs convolution
// with NCHW through im2col + GEMM but has direct AVX-512 kernels for NHWC, about twice as fast
// on a small ResNet (../shared/DESIGN.md).
enum class Layout { nchw, nhwc };

struct ImageShape {
  int64_t n, c, h, w;
};
inline ImageShape image_shape(const Dims& d, Layout layout) {
  return layout == Layout::nchw ? ImageShape{d[0], d[1], d[2], d[3]}
                                : ImageShape{d[0], d[3], d[1], d[2]};
}
inline Dims tensor_dims(const ImageShape& s, Layout layout) {
  return layout == Layout::nchw ? Dims{s.n, s.c, s.h, s.w} : Dims{s.n, s.h, s.w, s.c};
}
// oneDNN always takes the logical dims in N, C, H, W order; the tag says where they sit.
inline dnnl::memory::desc image_desc(const ImageShape& s, Layout layout) {
  return dnnl::memory::desc(
      {s.n, s.c, s.h, s.w}, dnnl::memory::data_type::f32,
      layout == Layout::nchw ? dnnl::memory::format_tag::nchw : dnnl::memory::format_tag::nhwc);
}
inline const char* layout_name(Layout layout) {
  return layout == Layout::nchw ? "[B, C, H, W]" : "[B, H, W, C]";
}

inline void check_same_dims(const Dims& got, const Dims& want, const char* layer,
                            const char* what) {
  require(got == want, std::string(layer) + ": " + what + " has shape " + to_string(got) +
                           ", expected " + to_string(want));
}

}  // namespace engine
