// The runtime every layer is handed explicitly: one oneDNN CPU engine and stream, the seeded
// random generator (initialisation, dropout, data order), the thread count, and the gradient
// buffers that layers of the same role in different blocks share.
#pragma once

#include <cstdint>
#include <map>
#include <random>
#include <string>

#include <oneapi/dnnl/dnnl.hpp>

#include "engine/tensor.hpp"

namespace engine {

struct Context {
  // threads <= 0 keeps OpenMP's default (all cores, or OMP_NUM_THREADS).
  explicit Context(uint64_t seed = 0, int threads = 0);

  dnnl::engine eng;
  dnnl::stream strm;
  std::mt19937_64 rng;
  int threads;

  void wait() { strm.wait(); }

  // A [dims] buffer owned here, the same for every caller with the same slot and dims (a view
  // is returned). For gradients that no two callers need at once: a block's backward is over
  // before the block below it starts, so one set of gradient buffers serves every block.
  Tensor shared_buffer(const std::string& slot, const Dims& dims);

 private:
  std::map<std::string, Tensor> shared_;
};

// A layer's gradient output: its own buffer when `slot` is empty, else ctx's shared one.
Tensor gradient_buffer(Context& ctx, const std::string& slot, const Dims& dims);

// "oneDNN 2.6.3 (git hash ...)" and the ISA its kernels dispatch to, e.g. "avx512_core_bf16".
std::string onednn_version();
std::string onednn_isa();

}  // namespace engine
