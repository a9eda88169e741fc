// The runtime every layer is handed explicitly: one oneDNN CPU engine and stream, the seeded
// random generator (initialisation, dropout, data order) and the thread count.
#pragma once

#include <cstdint>
#include <random>
#include <string>

#include <oneapi/dnnl/dnnl.hpp>

namespace engine {

struct Context {
  // threads <= 0 keeps OpenMP's default (all cores, or OMP_NUM_THREADS).
  explicit Context(uint64_t seed = 0, int threads = 0);

  dnnl::engine eng;
  dnnl::stream strm;
  std::mt19937_64 rng;
  int threads;

  void wait() { strm.wait(); }
};

// "oneDNN 2.6.3 (git hash ...)" and the ISA its kernels dispatch to, e.g. "avx512_core_bf16".
std::string onednn_version();
std::string onednn_isa();

}  // namespace engine
