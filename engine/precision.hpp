// The number format of the matmuls: f32, or bf16 on CPUs with AVX-512 (native with
// AVX512_BF16), where weights and activations feeding a matmul are bf16 and everything that
// accumulates (matmul sums, the residual stream, LayerNorm, softmax, the head) stays f32.
#pragma once

#include <string>

#include <oneapi/dnnl/dnnl.hpp>

#include "engine/error.hpp"

namespace engine {

enum class Precision { f32, bf16 };

inline const char* precision_name(Precision p) {
  return p == Precision::f32 ? "f32" : "bf16";
}

inline Precision parse_precision(const std::string& name) {
  if (name == "f32") return Precision::f32;
  if (name == "bf16") return Precision::bf16;
  throw Error("unknown precision '" + name + "' (expected f32 or bf16)");
}

// oneDNN 2.6 runs bf16 matmuls on AVX-512 CPUs only (natively with AVX512_BF16).
inline bool precision_supported(Precision p) {
  if (p == Precision::f32) return true;
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  return isa == dnnl::cpu_isa::avx512_core || isa == dnnl::cpu_isa::avx512_core_vnni ||
         isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx ||
         isa == dnnl::cpu_isa::all;
}

inline void require_supported(Precision p) {
  require(precision_supported(p), std::string(precision_name(p)) +
                                      " needs a CPU with AVX-512; this one has none (use f32)");
}

inline dnnl::memory::data_type data_type(Precision p) {
  return p == Precision::f32 ? dnnl::memory::data_type::f32 : dnnl::memory::data_type::bf16;
}

}  // namespace engine
