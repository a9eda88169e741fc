// Images in: decode with OpenCV, resize and crop as timm's eval transform, scale to [0, 1],
// normalize by mean and std, and cut into P×P patches flattened in (channel, row, column)
// order — the order of timm's [D, C, P, P] patch-embedding weight.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include "engine/tensor.hpp"

namespace datasets {

// What a model expects of an image; saved as the "preprocess" entry of a model file.
struct Preprocess {
  int64_t img_size = 224;
  int64_t in_chans = 3;     // 1: grayscale, 3: RGB
  int64_t patch_size = 16;  // 0: the model takes whole images [C, H, W] (the CNN)
  std::vector<float> mean{0.5f, 0.5f, 0.5f};
  std::vector<float> std{0.5f, 0.5f, 0.5f};
  double crop_pct = 1.0;  // eval: resize the shorter side to img_size / crop_pct, centre crop
  // The resampling filter: "" (ours: area when shrinking, bilinear when growing), "bilinear"
  // or "bicubic" (what a timm or Hugging Face checkpoint asks for).
  std::string interpolation;
  // timm's crop_mode: "center" (the shorter side to img_size / crop_pct, then the centre
  // crop), "squash" (both sides to img_size / crop_pct, ignoring the aspect, then the centre
  // crop; Hugging Face's resize), "border" (the longer side to img_size / crop_pct, then
  // padded with the mean colour to the square).
  std::string crop_mode = "center";

  void validate() const;
  // Floats per image: L·C·P·P for patches, C·H·W for whole images (the same count).
  int64_t sample_size() const { return in_chans * img_size * img_size; }
  // A batch of B images as the model takes it: [B, L, C·P·P], or [B, C, S, S].
  engine::Dims input_dims(int64_t batch) const;
};

void to_json(nlohmann::json& j, const Preprocess& p);
void from_json(const nlohmann::json& j, Preprocess& p);

// A decoded image may have at most this many pixels (a 16k × 8k photograph; 384 MB as RGB),
// and an image file at most this many bytes: a decompression bomb or a stray disk image named
// .png is refused with a message instead of exhausting memory.
inline constexpr int64_t kMaxImagePixels = int64_t(1) << 27;
inline constexpr uint64_t kMaxImageFileBytes = uint64_t(1) << 30;

// Width and height as the file's header states them, for PNG, JPEG, BMP, WebP, TIFF and PNM;
// nothing for other formats or a header too broken to read (decode_image then refuses it).
std::optional<std::pair<uint64_t, uint64_t>> image_size_from_header(
    const std::vector<unsigned char>& bytes);

// Decodes any image OpenCV reads (PNG, JPEG, BMP, TIFF, WebP, ...), 8 or 16 bits, with or
// without alpha, into 8-bit grayscale (in_chans 1) or RGB (in_chans 3). Throws engine::Error
// naming the file when it is missing, unreadable, not a regular file, larger than
// kMaxImageFileBytes, not an image, or of more than kMaxImagePixels pixels.
cv::Mat load_image(const std::filesystem::path& path, int64_t in_chans);
// The same, from bytes already in memory; `name` is what errors call it.
cv::Mat decode_image(const std::vector<unsigned char>& bytes, int64_t in_chans,
                     const std::string& name);

// timm's eval transform: shorter side to img_size / crop_pct (area interpolation shrinking,
// bilinear growing), then the centre img_size × img_size crop.
cv::Mat resize_center_crop(const cv::Mat& image, int64_t img_size, double crop_pct);
// The eval transform `p` describes (crop_mode, interpolation, crop_pct): uint8 image ->
// img_size × img_size.
cv::Mat eval_transform(const cv::Mat& image, const Preprocess& p);

// uint8 image -> float HWC, scaled to [0, 1] and normalized by the mean and std.
cv::Mat normalize(const cv::Mat& image, const Preprocess& p);
// Normalized float image (img_size square) -> the model's input layout in dst (sample_size()
// floats): patches [L, C·P·P], or planes [C, S, S] when patch_size is 0.
void write_model_input(const cv::Mat& normalized, const Preprocess& p, float* dst);
// Both: a uint8 image as the model takes it.
void to_model_input(const cv::Mat& image, const Preprocess& p, float* dst);

// Float image (H×W, C channels, HWC as OpenCV keeps it) -> patches [L, C·P·P], patch index
// row-major over the grid, each patch flattened (channel, row, column).
void cut_patches(const cv::Mat& image, int64_t patch_size, float* dst);

}  // namespace datasets
