// BatchNorm2d on NCHW tensors (torch.nn.BatchNorm2d: eps 1e-5, momentum 0.1, running variance
// updated with the unbiased batch variance). Training normalizes with the batch statistics;
// evaluation (training = false) with the running ones.
#pragma once

#include <string>

#include "engine/parameter_store.hpp"
#include "engine/plan.hpp"

namespace engine {

struct BatchNorm2d {
  BatchNorm2d(ParameterStore& store, const std::string& name, int64_t num_features,
              float eps = 1e-5f, float momentum = 0.1f, Layout layout = Layout::nchw);

  const Tensor& forward(Context& ctx, const Tensor& src);  // [B, C, H, W] (or NHWC) -> same
  // Overwrites the weight and bias gradients. In evaluation mode the running statistics are
  // constants, as in torch.
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);
  void reset_parameters();  // weight 1, bias 0, running mean 0, running variance 1

  int64_t num_features;
  float eps, momentum;
  Layout layout;
  bool training = true;
  // relu(bn(x)) in the one primitive (oneDNN's fuse_norm_relu; backward masks through its
  // workspace): torch's BatchNorm2d then ReLU, one pass over the activations instead of two
  // forward and two backward. Set before the first forward.
  bool fuse_relu = false;
  int64_t num_batches_tracked = 0;
  Parameter* weight;        // [C]
  Parameter* bias;          // [C]
  Parameter* running_mean;  // [C], a buffer
  Parameter* running_var;   // [C], a buffer

 private:
  struct Plan {
    dnnl::batch_normalization_forward fwd;
    dnnl::batch_normalization_backward bwd;
    dnnl::memory src, dst, mean, variance, scale, shift, diff_dst, diff_src, diff_scale, diff_shift,
        workspace;
    Tensor dst_tensor, diff_src_tensor, batch_mean, batch_variance;
  };
  std::unique_ptr<Plan> build(Context& ctx, const Dims& src_dims, bool train);
  PlanCache<Plan> plans_;
};

}  // namespace engine
