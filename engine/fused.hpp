// The machinery of fused inference, shared by every module's inference piece: a module builds a
// FusedStep once per batch size (its primitives bound to their buffers) beside its training
// forward and backward, reading its parameters through its own Parameter handles:
//  - PackedWeights holds the converted copies of parameters that inference primitives read (a
//    matmul weight packed into the layout its kernel asked for, in bf16 or f32, a block of its
//    rows, scaled; a table derived from several parameters), one copy for every plan that asks
//    for the same, refilled when the store's version changes;
//  - FusedBuild hands a module the engine, the packed weights, the matmul precision and the
//    activation buffers, shared by slot name: the blocks run one after another, so one set of
//    buffers serves them all.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/context.hpp"
#include "engine/parameter_store.hpp"
#include "engine/precision.hpp"

namespace engine {

// One module's part of an inference pass, its primitives and buffers bound at build time.
struct FusedStep {
  virtual ~FusedStep() = default;
  virtual void run(dnnl::stream& s) = 0;
};

class PackedWeights {
 public:
  explicit PackedWeights(const ParameterStore& store) : store_(store) {}

  // Output features [first, first + rows) of a torch Linear weight [out, in] (rows < 0: all),
  // times `scale` and, per output feature j, times out_scale[j] when given, as a matmul's
  // weights [in, rows] in layout `md` (and md's data type).
  dnnl::memory linear(Context& ctx, const Parameter& weight, const dnnl::memory::desc& md,
                      int64_t first = 0, int64_t rows = -1, float scale = 1.0f,
                      const Parameter* out_scale = nullptr);
  // A convolution's weight [O, C, k, k] (torch's OIHW) in the layout `md` its kernel asked for,
  // output channel o multiplied by scales()[o], which is called at every refill (a BatchNorm
  // folded in).
  dnnl::memory conv(Context& ctx, const Parameter& weight, const dnnl::memory::desc& md,
                    std::function<std::vector<float>()> scales);
  // f32 [1, n]: elements [first, first + n) of a parameter times `scale` (and elementwise
  // times out_scale[first..] when given). Unscaled, a view of the store itself (no copy).
  dnnl::memory vector(Context& ctx, const Parameter& p, int64_t first, int64_t n,
                      float scale = 1.0f, const Parameter* out_scale = nullptr);
  // An f32 table of md's size that `fill` computes from the parameters; `owner` and `tag`
  // identify it, so that plans of every batch size share one.
  dnnl::memory derived(Context& ctx, const void* owner, int tag, const dnnl::memory::desc& md,
                       std::function<void(float*)> fill);

  // Refills every copy made from an older version of the store; before each pass.
  void refresh(Context& ctx);
  // Bytes of packed matmul weights and scaled vectors held (views and derived tables aside).
  int64_t weight_bytes() const;

 private:
  struct Entry {
    const void* source;  // the Parameter, or a derived table's owner
    int64_t first, rows;
    float scale;
    int tag;  // -1: packed weight, -2: vector, -3: convolution weight, else a derived table's
    const Parameter* out_scale;
    dnnl::memory::desc md;
    dnnl::memory mem;
    std::function<void(Context&, const dnnl::memory&)> fill;
    std::optional<uint64_t> version;  // of the store it was filled from
  };
  dnnl::memory find_or_add(Context& ctx, Entry e);

  const ParameterStore& store_;
  std::vector<Entry> entries_;
};

struct FusedBuild {
  Context& ctx;
  PackedWeights& packed;
  Precision precision;  // of the matmul operands
  int64_t images;       // B: the batch this plan runs
  // Activation buffers by slot, owned by the plan being built.
  std::map<std::string, dnnl::memory>& buffers;

  dnnl::memory::data_type low() const { return data_type(precision); }
  bool bf16() const { return precision == Precision::bf16; }
  // The plan's buffer of this slot: allocated on first request, the same memory after (the
  // layout must then match).
  dnnl::memory buffer(const std::string& slot, const dnnl::memory::desc& md);
  // One matmul primitive for every request with the same operands and attributes: the blocks'
  // matmuls are the same shapes, and each primitive object keeps its own scratchpad (the f32
  // gemm's accumulator: 2.4 MB for ViT-Ti's fc1), so twelve copies cost memory and cache.
  dnnl::matmul matmul(const dnnl::matmul::primitive_desc& pd);
  std::vector<std::pair<std::string, dnnl::matmul>>& matmuls;
  // Storage shared by the plans of every batch size up to `capacity` images, by slot: a plan
  // of n images takes a view over the start of it, since one plan runs at a time. Without it
  // (or for a slot that outgrows it), the plan owns its buffers. A server's batches come in
  // every size: 64 plans of their own each held 1..64 images' activations (measured: RSS from
  // 190 to 300 MB at --max-batch 64).
  std::map<std::string, dnnl::memory>* shared = nullptr;
  int64_t capacity = 0;
};

// A plain row-major (or strided) descriptor.
dnnl::memory::desc fused_desc(const Dims& dims, dnnl::memory::data_type type,
                              const Dims& strides = {});
// A memory over `base`'s buffer, `offset` elements of md's type in: a view, no copy.
dnnl::memory fused_view(const dnnl::engine& eng, const dnnl::memory::desc& md,
                        const dnnl::memory& base, int64_t offset = 0);

}  // namespace engine
