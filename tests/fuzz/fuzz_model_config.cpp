// libFuzzer target: a model config and a preprocess as a model file's __metadata__ holds
// them (JSON text; a leading 'r' picks the ResNet, anything else the ViT). Building the
// model, without allocating it, and validating the preprocess must end in success or
// engine::Error: never a crash, undefined behaviour, or a model too large to describe.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "datasets/preprocess.hpp"
#include "engine/error.hpp"
#include "models/registry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string arch = data[0] == 'r' ? "resnet" : "vit";
  const nlohmann::json config =
      nlohmann::json::parse(data + 1, data + size, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) return 0;
  try {
    const auto model = models::build_model(arch, config);
    volatile double flops = model->flops_per_image();
    volatile int64_t params = model->store.num_trainable() + model->num_classes();
    (void)flops, (void)params;
    (void)model->config().dump();
  } catch (const engine::Error&) {
  }
  try {
    config.get<datasets::Preprocess>().validate();
  } catch (const engine::Error&) {
  } catch (const nlohmann::json::exception&) {
  }
  return 0;
}
