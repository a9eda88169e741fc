#include "engine/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "engine/error.hpp"
#include "engine/file.hpp"
#include "engine/tensor.hpp"

namespace engine {

namespace {

constexpr uint64_t kMaxHeader = 100'000'000;  // the format's own cap

uint64_t dtype_size(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "I64" || dtype == "F64") return 8;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16") return 2;
  if (dtype == "U8" || dtype == "I8" || dtype == "BOOL") return 1;
  return 0;
}

std::string errno_text() {
  return std::strerror(errno);
}

// The header length from the first 8 bytes, checked against the format's cap and the file size
// before anything is allocated for it.
uint64_t header_length(const unsigned char* first8, uint64_t file_size, const std::string& where) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(first8[i]) << (8 * i);
  if (n < 2 || n > kMaxHeader || n > file_size - 8)
    throw Error(where + ": not a safetensors file (header length " + std::to_string(n) +
                " does not fit a file of " + std::to_string(file_size) + " bytes)");
  return n;
}

// IEEE binary16 -> binary32, exactly: sign, then normal numbers re-biased, subnormals normalised,
// infinities and NaNs (payload kept) widened.
uint32_t half_to_float_bits(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  if (exponent == 0x1f) return sign | 0x7f800000 | (mantissa << 13);
  if (exponent == 0) {
    if (mantissa == 0) return sign;
    exponent = 1;
    while (!(mantissa & 0x400)) mantissa <<= 1, --exponent;  // normalise the subnormal
    mantissa &= 0x3ff;
  }
  return sign | ((exponent + 112) << 23) | (mantissa << 13);
}

}  // namespace

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::vector<uint64_t> sizes;
  for (const TensorToWrite& t : tensors) {
    const uint64_t bytes = static_cast<uint64_t>(product(t.shape)) * dtype_size(t.dtype);
    require(bytes > 0, "write_safetensors: tensor '" + t.name + "' is empty or of unknown dtype");
    header[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    sizes.push_back(bytes);
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  const uint64_t n = text.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));

  std::vector<Bytes> pieces{{len, 8}, {text.data(), text.size()}};
  for (size_t i = 0; i < tensors.size(); ++i) pieces.push_back({tensors[i].data, sizes[i]});
  write_file_atomic(path, pieces);
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : path_(path) {
  const std::string where = "'" + path.string() + "'";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw Error(where + ": no such model file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(where + ": cannot open: " + errno_text());
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  if (ec || file_size < 8) throw Error(where + ": not a safetensors file (too short)");
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  const uint64_t n = header_length(len, file_size, where);
  std::string text(n, '\0');
  in.read(text.data(), static_cast<std::streamsize>(n));
  if (!in) throw Error(where + ": truncated header");
  // Every range is checked against the file's real size before the data is touched.
  const uint64_t data_size = file_size - 8 - n;
  parse_header(text, data_size, where);
  if (data_size == 0) return;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(where + ": cannot open: " + errno_text());
  void* base = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const std::string why = errno_text();
  ::close(fd);  // the mapping keeps the file
  if (base == MAP_FAILED) throw Error(where + ": cannot map: " + why);
  ::madvise(base, file_size, MADV_SEQUENTIAL);
  map_offset_ = 8 + n;
  data_ =
      std::shared_ptr<const char>(static_cast<const char*>(base) + map_offset_,
                                  [base, file_size](const char*) { ::munmap(base, file_size); });
}

SafetensorsFile::SafetensorsFile(std::string_view bytes, const std::string& name) : path_(name) {
  const std::string where = "'" + name + "'";
  if (bytes.size() < 8) throw Error(where + ": not a safetensors file (too short)");
  const uint64_t n =
      header_length(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), where);
  const uint64_t data_size = bytes.size() - 8 - n;
  parse_header(bytes.substr(8, n), data_size, where);
  char* copy = new char[data_size + 1];
  std::memcpy(copy, bytes.data() + 8 + n, data_size);
  data_ = std::shared_ptr<const char>(copy, std::default_delete<char[]>());
}

bool SafetensorsFile::is_float(const std::string& dtype) {
  return dtype == "F32" || dtype == "F16" || dtype == "BF16";
}

void SafetensorsFile::release(uint64_t begin, uint64_t end) const {
  if (map_offset_ == 0) return;
  // Whole pages inside the range only: a neighbour's bytes may share its first and last page.
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t first = (map_offset_ + begin + page - 1) / page * page;
  const uint64_t last = (map_offset_ + end) / page * page;
  if (last > first)
    ::madvise(const_cast<char*>(data_.get() - map_offset_ + first), last - first, MADV_DONTNEED);
}

void SafetensorsFile::parse_header(std::string_view text, uint64_t data_size,
                                   const std::string& where) {
  // The header is one object of objects: {"name": {"dtype", "shape": [...], "data_offsets":
  // [...]}, "__metadata__": {"key": "value"}}. Anything nested deeper is refused while parsing,
  // so a hostile header cannot drive the parser's recursion, and duplicate keys are refused
  // (JSON parsers differ on which one wins; the Python loader rejects them too).
  if (text.empty() || text.front() != '{')
    throw Error(where + ": not a safetensors file (header does not start with '{')");
  constexpr int kMaxDepth = 3;
  std::vector<std::set<std::string>> keys;
  std::string problem;
  const auto limits = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if ((event == Event::object_start || event == Event::array_start) && depth >= kMaxDepth) {
      problem = "header nests deeper than a safetensors header";
      throw Error(problem);
    }
    if (event == Event::object_start) keys.emplace_back();
    if (event == Event::object_end && !keys.empty()) keys.pop_back();
    if (event == Event::key && !keys.empty() &&
        !keys.back().insert(parsed.get<std::string>()).second) {
      problem = "duplicate key '" + parsed.get<std::string>() + "' in the header";
      throw Error(problem);
    }
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text.begin(), text.end(), limits);
  } catch (const Error&) {
    throw Error(where + ": not a safetensors file (" + problem + ")");
  } catch (const nlohmann::json::exception&) {
    throw Error(where + ": not a safetensors file (header is not JSON)");
  }
  if (!header.is_object())
    throw Error(where + ": not a safetensors file (header is not an object)");

  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) throw Error(where + ": __metadata__ is not an object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) throw Error(where + ": __metadata__ '" + k + "' is not a string");
        metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string bad = where + ": tensor '" + name + "' ";
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") ||
        !value.contains("data_offsets") || !value["dtype"].is_string() ||
        !value["shape"].is_array() || !value["data_offsets"].is_array() ||
        value["data_offsets"].size() != 2)
      throw Error(bad + "has a malformed entry");
    Entry e;
    e.dtype = value["dtype"].get<std::string>();
    const uint64_t elem = dtype_size(e.dtype);
    if (elem == 0) throw Error(bad + "has unknown dtype '" + e.dtype + "'");
    uint64_t count = 1;
    for (const auto& d : value["shape"]) {
      if (!d.is_number_unsigned()) throw Error(bad + "has a malformed shape");
      const uint64_t v = d.get<uint64_t>();
      if (v > uint64_t(INT64_MAX)) throw Error(bad + "has a shape that overflows");
      if (v != 0 && count > UINT64_MAX / v / elem) throw Error(bad + "has a shape that overflows");
      count *= v;
      e.shape.push_back(static_cast<int64_t>(v));
    }
    for (const auto& o : value["data_offsets"])
      if (!o.is_number_unsigned()) throw Error(bad + "has malformed data_offsets");
    e.begin = value["data_offsets"][0].get<uint64_t>();
    e.end = value["data_offsets"][1].get<uint64_t>();
    if (e.begin > e.end || e.end > data_size)
      throw Error(bad + "lies outside the data section (file truncated?)");
    if (e.end - e.begin != count * elem)
      throw Error(bad + "has " + std::to_string(e.end - e.begin) + " bytes for shape " +
                  to_string(e.shape));
    ranges.emplace_back(e.begin, e.end);
    entries_.emplace(name, std::move(e));  // names are unique: the parser refused duplicates
  }
  std::sort(ranges.begin(), ranges.end());
  uint64_t covered = 0;
  for (const auto& [b, e] : ranges) {
    if (b != covered) throw Error(where + ": tensor byte ranges overlap or leave gaps");
    covered = e;
  }
  if (covered != data_size)
    throw Error(where + ": " + std::to_string(data_size - covered) +
                " bytes after the last tensor (not a safetensors file?)");
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw Error("'" + path_.string() + "': no tensor '" + name + "'");
  return it->second;
}

void SafetensorsFile::read_f32(const std::string& name, const Dims& shape, float* dst) const {
  const Entry& e = entry(name);
  if (!is_float(e.dtype))
    throw Error("'" + path_.string() + "': tensor '" + name + "' is " + e.dtype +
                ", expected F32, F16 or BF16");
  if (e.shape != shape)
    throw Error("'" + path_.string() + "': tensor '" + name + "' has shape " + to_string(e.shape) +
                ", the model expects " + to_string(shape));
  const char* src = data_.get() + e.begin;
  if (e.end == e.begin) return;
  if (e.dtype == "F32") {
    std::memcpy(dst, src, e.end - e.begin);
  } else {
    // oneDNN 2.6's reorder from f16/bf16 to f32 is its reference loop here: 7 s for ViT-B/16's
    // 86 M weights. Both conversions are exact bit manipulations, done in place.
    const int64_t n = static_cast<int64_t>((e.end - e.begin) / 2);
    const bool bf16 = e.dtype == "BF16";
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      const uint32_t bits = bf16 ? uint32_t(h) << 16 : half_to_float_bits(h);
      std::memcpy(dst + i, &bits, 4);
    }
  }
  release(e.begin, e.end);
}

std::vector<int64_t> SafetensorsFile::read_i64(const std::string& name) const {
  const Entry& e = entry(name);
  if (e.dtype != "I64")
    throw Error("'" + path_.string() + "': tensor '" + name + "' is " + e.dtype + ", expected I64");
  std::vector<int64_t> v((e.end - e.begin) / 8);
  if (!v.empty()) std::memcpy(v.data(), data_.get() + e.begin, e.end - e.begin);
  return v;
}

}  // namespace engine
