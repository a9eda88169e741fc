// A model file's __metadata__ is checked against its tensors before the model is allocated:
// a hostile config cannot make the loader allocate more than the file holds.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "engine/error.hpp"
#include "engine/safetensors.hpp"
#include "models/registry.hpp"

using engine::Error;

namespace {

// A safetensors image of one F32 tensor and the given model metadata.
std::string model_bytes(const nlohmann::json& config, const nlohmann::json& preprocess,
                        int64_t classes) {
  std::vector<std::string> names;
  for (int64_t i = 0; i < classes; ++i) names.push_back("c" + std::to_string(i));
  nlohmann::json header = {
      {"__metadata__",
       {{"arch", "vit"},
        {"config", config.dump()},
        {"preprocess", preprocess.dump()},
        {"classes", nlohmann::json(names).dump()}}},
      {"head.bias", {{"dtype", "F32"}, {"shape", {classes}}, {"data_offsets", {0, 4 * classes}}}}};
  const std::string text = header.dump();
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = char((text.size() >> (8 * i)) & 0xff);
  return bytes + text + std::string(size_t(4 * classes), '\0');
}

nlohmann::json tiny_config() {
  return {{"img_size", 8},    {"patch_size", 4},  {"in_chans", 1},
          {"num_classes", 2}, {"embed_dim", 8},   {"depth", 1},
          {"num_heads", 2},   {"mlp_ratio", 2.0}, {"qkv_bias", true}};
}

nlohmann::json tiny_preprocess() {
  return {{"img_size", 8}, {"in_chans", 1}, {"patch_size", 4}, {"mean", {0.5}}, {"std", {0.5}}};
}

void check_rejected(const std::string& bytes, const char* why) {
  const engine::SafetensorsFile file(bytes, "hostile.safetensors");
  datasets::Preprocess preprocess;
  std::vector<std::string> classes;
  CHECK_THROWS_WITH_AS(models::inspect_model(file, {}, preprocess, classes), doctest::Contains(why),
                       Error);
}

}  // namespace

TEST_CASE("model file: a config beyond the size limits is refused before it is built") {
  nlohmann::json config = tiny_config();
  config["depth"] = 1'000'000'000;
  check_rejected(model_bytes(config, tiny_preprocess(), 2), "--depth 1000000000 exceeds the limit");
  config = tiny_config();
  config["img_size"] = int64_t(1) << 40;
  config["patch_size"] = int64_t(1) << 20;
  check_rejected(model_bytes(config, tiny_preprocess(), 2), "exceeds the limit");
}

TEST_CASE(
    "model file: a config within the limits but larger than the file is refused unallocated") {
  // 65536 wide and 1024 deep is about 53 G parameters: allocating them would abort the test.
  nlohmann::json config = tiny_config();
  config["embed_dim"] = 65536;
  config["num_heads"] = 16;
  config["depth"] = 1024;
  check_rejected(model_bytes(config, tiny_preprocess(), 2), "no tensor 'cls_token'");
}

TEST_CASE("model file: the metadata must agree with itself") {
  nlohmann::json preprocess = tiny_preprocess();
  preprocess["patch_size"] = 2;
  check_rejected(model_bytes(tiny_config(), preprocess, 2),
                 "'preprocess' has patch_size 2 but the model takes 4");
  check_rejected(model_bytes(tiny_config(), tiny_preprocess(), 3),
                 "3 class names for a model of 2 classes");
  nlohmann::json config = tiny_config();
  config["num_heads"] = 3;
  check_rejected(model_bytes(config, tiny_preprocess(), 2), "--num-heads 3 does not divide");
}

TEST_CASE("model file: numbers out of their type's range are refused, not converted") {
  // Found by tests/fuzz/fuzz_model_config: nlohmann's get<int64_t> of 3e38 is undefined.
  nlohmann::json config = tiny_config();
  config["img_size"] = 3.3e38;
  check_rejected(model_bytes(config, tiny_preprocess(), 2),
                 "'img_size' must be an integer of at most 64 bits");
  config = tiny_config();
  config["depth"] = uint64_t(1) << 63;
  check_rejected(model_bytes(config, tiny_preprocess(), 2), "'depth' must be an integer");
  nlohmann::json preprocess = tiny_preprocess();
  preprocess["mean"] = {1e300};
  check_rejected(model_bytes(tiny_config(), preprocess, 2),
                 "malformed __metadata__: 'mean' is out of the range of a float");
}
