// The safetensors container (8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the raw little-endian data), as written by the
// Python `safetensors` package, so model files open in the Python ecosystem unchanged.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "engine/tensor.hpp"

namespace engine {

struct TensorToWrite {
  std::string name;
  std::string dtype;  // "F32" or "I64"
  Dims shape;
  const void* data;
};

// Writes to a temporary file beside `path`, flushes it to disk, then renames it over `path`:
// a crash or a full disk never leaves a half-written file in its place.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata);

class SafetensorsFile {
 public:
  struct Entry {
    std::string dtype;
    Dims shape;
    uint64_t begin = 0, end = 0;  // byte range inside the data section
  };

  // Reads and validates the whole file: header length and JSON, known dtypes, byte ranges
  // inside the data section, non-overlapping, and matching each shape. Throws Error naming the
  // file and the problem.
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::map<std::string, Entry>& entries() const { return entries_; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  // Copies an F32 tensor after checking its shape; the error names the tensor and both shapes.
  void read_f32(const std::string& name, const Dims& shape, float* dst) const;
  std::vector<int64_t> read_i64(const std::string& name) const;

 private:
  const Entry& entry(const std::string& name) const;
  std::filesystem::path path_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, Entry> entries_;
  std::vector<char> data_;
};

}  // namespace engine
