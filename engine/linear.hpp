// Linear: dst = src·Wᵀ + b over the last axis, any leading axes (torch.nn.Linear).
// With Precision::bf16 the three matmuls take bf16 copies of their operands (made each call,
// as torch.autocast does) and write f32: the weights, gradients and optimizer stay f32.
#pragma once

#include <string>

#include "engine/fused.hpp"
#include "engine/parameter_store.hpp"
#include "engine/plan.hpp"
#include "engine/precision.hpp"

namespace engine {

struct Linear {
  // weight_shape: how the weight is named in the state dict when it is not [out, in], e.g.
  // timm's patch_embed.proj.weight [D, C, P, P]; same memory, same matrix.
  Linear(ParameterStore& store, const std::string& name, int64_t in_features, int64_t out_features,
         bool bias = true, Dims weight_shape = {});

  // src [..., in] -> dst [..., out]. src must stay alive until backward.
  const Tensor& forward(Context& ctx, const Tensor& src);
  // diff_dst [..., out] -> diff_src [..., in]; overwrites the weight and bias gradients.
  // Without input_gradient the returned tensor is not written.
  const Tensor& backward(Context& ctx, const Tensor& diff_dst);
  // torch's default: weight and bias uniform in ±1/√in_features.
  void reset_parameters(Context& ctx);
  void set_precision(Precision p);

  // Fused inference: dst = src·Wᵀ + b, then `ops` (GELU, a residual sum), the weights packed
  // for the kernel (format_tag::any) in src's data type, the bias f32; the training path must
  // read them through a transposed view, which costs the kernel a copy on every call. With
  // rows >= 0 only output features [first, first + rows), and all times `scale` (the bias
  // too): attention's q, k and v from its one qkv weight, q's with 1/√d folded in. With
  // out_scale [out], output feature j is also multiplied by out_scale[j] (a LayerScale folded
  // into the layer before it).
  struct Fused {
    dnnl::matmul prim;
    dnnl::memory weight, bias;  // bias: empty when the layer has none
    void run(dnnl::stream& s, const dnnl::memory& src, const dnnl::memory& dst) const;
  };
  Fused fused(FusedBuild& f, const dnnl::memory::desc& src, const dnnl::memory::desc& dst,
              const dnnl::post_ops& ops = dnnl::post_ops(), int64_t first = 0, int64_t rows = -1,
              float scale = 1.0f, const Parameter* out_scale = nullptr) const;

  int64_t in_features, out_features;
  bool input_gradient = true;  // false: backward skips diff_src (the network's first layer)
  std::string grad_slot;       // non-empty: diff_src shared through Context::shared_buffer
  Parameter* weight;           // [out, in]
  Parameter* bias;             // [out], or nullptr
  Precision precision = Precision::f32;

 private:
  struct Plan {
    dnnl::matmul fwd, bwd_data, bwd_weights;
    RowSum bwd_bias;  // the bias gradient, M = 1 included
    // The matmul operands: the f32 tensors themselves, or their bf16 copies.
    dnnl::memory src, weight, weight_t, diff_dst, diff_dst_t;
    dnnl::memory bias, dst, diff_src, diff_weight, diff_bias;  // always f32
    // bf16 only: the caller's f32 tensors and the reorders that convert them.
    dnnl::memory src_f32, weight_f32, diff_dst_f32;
    dnnl::reorder src_to_low, weight_to_low, diff_dst_to_low;
    Tensor dst_tensor, diff_src_tensor;  // [..., out], [..., in]
  };
  std::unique_ptr<Plan> build(Context& ctx, const Dims& src_dims);
  PlanCache<Plan> plans_;
};

}  // namespace engine
