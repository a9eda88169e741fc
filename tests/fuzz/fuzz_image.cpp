// libFuzzer target: an image file as untrusted bytes, through what every image goes through:
// decode (header checks first), resize and centre crop, normalize, cut into patches. It must
// end in the model's input or engine::Error: never a crash or undefined behaviour in our code.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "datasets/preprocess.hpp"
#include "engine/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<unsigned char> bytes(data, data + size);
  // The pixel limit is unit-tested; here large images would only spend the time budget in the
  // codecs' own (uninstrumented) loops.
  if (const auto dims = datasets::image_size_from_header(bytes);
      dims && dims->first * dims->second > (uint64_t(1) << 22))
    return 0;
  datasets::Preprocess p;
  p.img_size = 16, p.patch_size = 4;
  p.in_chans = size % 2 ? 1 : 3;
  p.mean.assign(size_t(p.in_chans), 0.5f), p.std.assign(size_t(p.in_chans), 0.25f);
  std::vector<float> input(size_t(p.sample_size()));
  try {
    const cv::Mat image = datasets::decode_image(bytes, p.in_chans, "fuzz.png");
    datasets::to_model_input(datasets::resize_center_crop(image, p.img_size, 0.875), p,
                             input.data());
  } catch (const engine::Error&) {
  }
  return 0;
}
