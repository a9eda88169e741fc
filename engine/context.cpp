#include "engine/context.hpp"

#include <omp.h>

namespace engine {

Context::Context(uint64_t seed, int num_threads)
    : eng(dnnl::engine::kind::cpu, 0), strm(eng), rng(seed), threads(num_threads) {
  // oneDNN's CPU runtime is OpenMP (Debian's build), so this sets its thread count too.
  if (threads > 0) omp_set_num_threads(threads);
  threads = omp_get_max_threads();
}

Tensor Context::shared_buffer(const std::string& slot, const Dims& dims) {
  Tensor& owned = shared_[slot + to_string(dims)];
  if (owned.empty()) owned = Tensor(eng, dims);
  return Tensor::view(eng, owned.data(), dims);
}

Tensor gradient_buffer(Context& ctx, const std::string& slot, const Dims& dims) {
  return slot.empty() ? Tensor(ctx.eng, dims) : ctx.shared_buffer(slot, dims);
}

std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  std::string s = "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                  std::to_string(v->patch);
  const std::string hash = v->hash;
  if (!hash.empty() && hash != "N/A") s += " (git " + hash + ")";
  return s;
}

std::string onednn_isa() {
  using isa = dnnl::cpu_isa;
  switch (dnnl::get_effective_cpu_isa()) {
    case isa::sse41:
      return "sse41";
    case isa::avx:
      return "avx";
    case isa::avx2:
      return "avx2";
    case isa::avx2_vnni:
      return "avx2_vnni";
    case isa::avx512_mic:
      return "avx512_mic";
    case isa::avx512_mic_4ops:
      return "avx512_mic_4ops";
    case isa::avx512_core:
      return "avx512_core";
    case isa::avx512_core_vnni:
      return "avx512_core_vnni";
    case isa::avx512_core_bf16:
      return "avx512_core_bf16";
    case isa::avx512_core_amx:
      return "avx512_core_amx";
    case isa::all:
      return "all";
  }
  return "unknown";
}

}  // namespace engine
