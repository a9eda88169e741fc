// libFuzzer target: a model file as untrusted bytes. Parsing it, reading every tensor and
// checking its metadata against its tensors must end in success or engine::Error: never a
// crash, an out-of-bounds read, or an allocation larger than the input allows.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "engine/error.hpp"
#include "engine/safetensors.hpp"
#include "models/registry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const engine::SafetensorsFile file(std::string_view(reinterpret_cast<const char*>(data), size),
                                       "fuzz.safetensors");
    std::vector<float> values;
    for (const auto& [name, entry] : file.entries()) {
      if (entry.dtype == "F32") {
        values.resize((entry.end - entry.begin) / sizeof(float));
        file.read_f32(name, entry.shape, values.data());
      } else if (entry.dtype == "I64") {
        file.read_i64(name);
      }
    }
    datasets::Preprocess preprocess;
    std::vector<std::string> classes;
    models::inspect_model(file, {"optimizer."}, preprocess, classes);
  } catch (const engine::Error&) {
  }
  return 0;
}
