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

inline dnnl::memory::data_type data_type(Precision p) {
  return p == Precision::f32 ? dnnl::memory::data_type::f32 : dnnl::memory::data_type::bf16;
}

}  // namespace engine
