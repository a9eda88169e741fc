// The safetensors container: a round trip, and the errors a bad file must give.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <doctest/doctest.h>

#include "engine/error.hpp"
#include "engine/safetensors.hpp"

using namespace engine;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("vit_test_" + std::to_string(::getpid()) + "_" + std::to_string(std::rand()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}

std::string header_file(const std::string& json, const std::string& data) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char((json.size() >> (8 * i)) & 0xff);
  return s + json + data;
}

}  // namespace

TEST_CASE("safetensors round trip with metadata, F32 and I64") {
  TempDir dir;
  const fs::path file = dir.path / "m.safetensors";
  const float w[6] = {1, 2, 3, 4, 5, 6};
  const int64_t steps[1] = {42};
  write_safetensors(file, {{"a.weight", "F32", {2, 3}, w}, {"n", "I64", {1}, steps}},
                    {{"config", "{\"depth\": 2}"}});
  CHECK_FALSE(fs::exists(dir.path / ("m.safetensors.tmp" + std::to_string(::getpid()))));
  SafetensorsFile f(file);
  CHECK(f.metadata().at("config") == "{\"depth\": 2}");
  float back[6] = {};
  f.read_f32("a.weight", {2, 3}, back);
  CHECK(std::equal(back, back + 6, w));
  CHECK(f.read_i64("n") == std::vector<int64_t>{42});
  CHECK_THROWS_WITH_AS(f.read_f32("a.weight", {3, 2}, back),
                       doctest::Contains("has shape [2, 3], the model expects [3, 2]"), Error);
  CHECK_THROWS_WITH_AS(f.read_f32("missing", {1}, back), doctest::Contains("no tensor 'missing'"),
                       Error);
  CHECK_THROWS_WITH_AS(f.read_f32("n", {1}, back),
                       doctest::Contains("is I64, expected F32, F16 or BF16"), Error);
}

TEST_CASE("safetensors: F16 and BF16 tensors read as f32, exactly, from a mapped file or bytes") {
  TempDir dir;
  const fs::path file = dir.path / "half.safetensors";
  // IEEE half: 1, -2, the smallest subnormal 2^-24, the largest finite 65504, 1/3 rounded
  // (0x3555 = 0.333251953125), +inf. bfloat16 is the top half of an f32: 1, -3, 2^-126, 1/3's
  // 0x3EAB = 0.333984375.
  const uint16_t half[6] = {0x3C00, 0xC000, 0x0001, 0x7BFF, 0x3555, 0x7C00};
  const uint16_t bf16[4] = {0x3F80, 0xC040, 0x0080, 0x3EAB};
  const float half_want[6] = {1.0f, -2.0f, 0x1p-24f, 65504.0f, 0.333251953125f, INFINITY};
  const float bf16_want[4] = {1.0f, -3.0f, 0x1p-126f, 0.333984375f};
  write_safetensors(file, {{"h", "F16", {2, 3}, half}, {"b", "BF16", {4}, bf16}}, {});
  std::ifstream in(file, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const SafetensorsFile mapped(file), copied(bytes, "half.safetensors");
  for (const SafetensorsFile* f : {&mapped, &copied})
    for (int round = 0; round < 2; ++round) {  // the mapped pages come back after being released
      float h[6] = {}, b[4] = {};
      f->read_f32("h", {2, 3}, h);
      f->read_f32("b", {4}, b);
      for (int i = 0; i < 6; ++i) CHECK(h[i] == half_want[i]);
      for (int i = 0; i < 4; ++i) CHECK(b[i] == bf16_want[i]);
    }
  CHECK(SafetensorsFile::is_float("BF16"));
  CHECK_FALSE(SafetensorsFile::is_float("I64"));
}

TEST_CASE("safetensors rejects malformed files with a message naming the file") {
  TempDir dir;
  const fs::path p = dir.path / "bad.safetensors";
  auto rejects = [&](const std::string& bytes, const char* why) {
    write_bytes(p, bytes);
    CHECK_THROWS_WITH_AS(SafetensorsFile{p}, doctest::Contains(why), Error);
  };
  CHECK_THROWS_WITH_AS(SafetensorsFile{dir.path / "none.safetensors"},
                       doctest::Contains("no such model file"), Error);
  rejects("", "too short");
  rejects("PNG\x0d\x0a\x1a\x0a...", "header length");
  rejects(header_file("{\"a\":", ""), "not JSON");
  rejects(header_file(R"({"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})", "xxxx"),
          "unknown dtype 'Q7'");
  rejects(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "xxxx"),
          "outside the data section");
  rejects(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "xxxx"),
          "4 bytes for shape [2]");
  rejects(header_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                      R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                      "xxxx"),
          "overlap");
  rejects(
      header_file(R"({"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,4]}})",
                  "xxxx"),
      "overflows");
  rejects(header_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "xxxxyy"),
          "bytes after the last tensor");
  rejects(header_file(R"({"__metadata__":{"k":1}})", ""), "is not a string");
}

TEST_CASE("safetensors: hand-made hostile files are rejected before any size is trusted") {
  // Each is also a regression input of the fuzzer (tests/fuzz/corpus/safetensors/).
  auto rejects = [](const std::string& bytes, const char* why) {
    CHECK_THROWS_WITH_AS(SafetensorsFile(bytes, "hostile"), doctest::Contains(why), Error);
  };
  // A header length of 2^63: no 8 EiB allocation, a message.
  std::string huge(8, '\0');
  huge[7] = char(0x80);
  rejects(huge + "{}", "header length 9223372036854775808 does not fit");
  // Just above the format's 100 MB cap, in a file claiming no more.
  std::string capped(8, '\0');
  const uint64_t n = 100'000'001;
  for (int i = 0; i < 8; ++i) capped[i] = char((n >> (8 * i)) & 0xff);
  rejects(capped, "header length 100000001");
  rejects(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                      "xxxxxxxx"),
          "overlap");
  rejects(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", "xxxxxxxx"),
          "outside the data section");
  rejects(header_file(R"({"a":{"dtype":"U8","shape":[18446744073709551615,2],)"
                      R"("data_offsets":[0,2]}})",
                      "xx"),
          "overflows");
  rejects(header_file(R"({"a":{"dtype":"U8","shape":[9223372036854775808],)"
                      R"("data_offsets":[0,1]}})",
                      "x"),
          "overflows");
  rejects(header_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "xxxx"),
          "malformed shape");
  rejects(header_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                      R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                      "xxxx"),
          "duplicate key 'a'");
  rejects(header_file(R"({"a":{"dtype":"F32","dtype":"I32","shape":[1],"data_offsets":[0,4]}})",
                      "xxxx"),
          "duplicate key 'dtype'");
  rejects(header_file(R"({"a":{"dtype":"F32","shape":[[[[1]]]],"data_offsets":[0,4]}})", "xxxx"),
          "nests deeper");
  rejects(header_file(std::string(100000, '[') + std::string(100000, ']'), ""),
          "does not start with '{'");
  rejects(header_file(R"({"a":)" + std::string(50000, '[') + std::string(50000, ']') + "}", ""),
          "nests deeper");
  rejects(header_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "xxx"),
          "outside the data section");
}

TEST_CASE("safetensors from bytes equals from the file") {
  TempDir dir;
  const fs::path p = dir.path / "m.safetensors";
  const float v[3] = {1.5f, -2.0f, 3.25f};
  write_safetensors(p, {{"w", "F32", {3}, v}}, {{"k", "v"}});
  std::ifstream in(p, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const SafetensorsFile f(bytes, "in memory");
  CHECK(f.metadata().at("k") == "v");
  float back[3] = {};
  f.read_f32("w", {3}, back);
  CHECK(back[0] == 1.5f);
  CHECK(back[1] == -2.0f);
  CHECK(back[2] == 3.25f);
  CHECK_THROWS_WITH_AS(f.read_f32("x", {3}, back), doctest::Contains("'in memory': no tensor 'x'"),
                       Error);
}
