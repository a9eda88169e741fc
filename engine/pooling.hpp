// 2-D pooling on NCHW tensors: MaxPool2d and AvgPool2d (torch's defaults: average counts the
// zero padding), and global average pooling (kernel = the whole input, output [B, C, 1, 1]).
#pragma once

#include "engine/plan.hpp"

namespace engine {

class Pool2d {
 public:
  // kernel_size 0 pools the whole H×W plane, whatever its size.
  Pool2d(dnnl::algorithm algorithm, int64_t kernel_size, int64_t stride, int64_t padding,
         Layout layout = Layout::nchw);

  // [B, C, H, W] -> [B, C, H', W'], or the same in NHWC.
  const Tensor& forward(Context& ctx, const Tensor& src);
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);

  int64_t kernel_size, stride, padding;
  Layout layout;

 private:
  struct Plan {
    dnnl::pooling_forward fwd;
    dnnl::pooling_backward bwd;
    dnnl::memory src, dst, diff_dst, diff_src, workspace;
    Tensor dst_tensor, diff_src_tensor;
  };
  std::unique_ptr<Plan> build(Context& ctx, const Dims& src_dims);
  dnnl::algorithm algorithm_;
  PlanCache<Plan> plans_;
};

struct MaxPool2d : Pool2d {
  MaxPool2d(int64_t kernel_size, int64_t stride, int64_t padding = 0, Layout layout = Layout::nchw)
      : Pool2d(dnnl::algorithm::pooling_max, kernel_size, stride, padding, layout) {}
};

struct AvgPool2d : Pool2d {
  AvgPool2d(int64_t kernel_size, int64_t stride, int64_t padding = 0, Layout layout = Layout::nchw)
      : Pool2d(dnnl::algorithm::pooling_avg_include_padding, kernel_size, stride, padding, layout) {
  }
};

// torch.nn.AdaptiveAvgPool2d(1).
struct GlobalAvgPool2d : Pool2d {
  explicit GlobalAvgPool2d(Layout layout = Layout::nchw)
      : Pool2d(dnnl::algorithm::pooling_avg_exclude_padding, 0, 1, 0, layout) {}
};

}  // namespace engine
