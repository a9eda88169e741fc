// The safetensors container (8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the raw little-endian data), as written by the
// Python `safetensors` package, so model files open in the Python ecosystem unchanged.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
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

  // Reads and validates the whole file before trusting any size in it: the header length
  // (at most the format's 100 MB, inside the file), the JSON (objects nested at most as deep
  // as the format's, no duplicate keys), known dtypes, shapes whose byte count neither
  // overflows nor differs from the tensor's byte range, and byte ranges that lie inside the
  // data section, do not overlap and cover it exactly. Throws Error naming the file and the
  // problem. The data is memory-mapped, not read: a tensor's pages are read from disk (or the
  // page cache) when it is copied out, and released from this process right after, so
  // loading holds one copy of the weights, the model's. (A file truncated by another process
  // while mapped would fault; safetensors' own loaders share that.)
  explicit SafetensorsFile(const std::filesystem::path& path);
  // The same from bytes in memory; `name` is what errors call it (the fuzz target's entry).
  SafetensorsFile(std::string_view bytes, const std::string& name);

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::map<std::string, Entry>& entries() const { return entries_; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  // Copies a floating-point tensor (F32, or F16 or BF16 converted) as f32 after checking its
  // shape; the error names the tensor and both shapes.
  void read_f32(const std::string& name, const Dims& shape, float* dst) const;
  // Whether a dtype converts to f32 exactly (F32, F16, BF16).
  static bool is_float(const std::string& dtype);
  std::vector<int64_t> read_i64(const std::string& name) const;

 private:
  void parse_header(std::string_view text, uint64_t data_size, const std::string& where);
  const Entry& entry(const std::string& name) const;
  std::filesystem::path path_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, Entry> entries_;
  std::shared_ptr<const char> data_;  // the data section: mapped, or a copy of given bytes
  // Drops the pages of [begin, end) from this process (the mapping stays valid).
  void release(uint64_t begin, uint64_t end) const;
  uint64_t map_offset_ = 0;  // where the data section starts in the mapping (0: not mapped)
};

}  // namespace engine
