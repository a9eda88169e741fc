// Pictures out: a map over an image (attention rollout, Grad-CAM) drawn as a colour overlay
// with a caption, per-head maps tiled into one picture, and PNG encoding. OpenCV stays here.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

namespace datasets {

// The longer side a drawn picture reaches at least by default: a 28 × 28 image is drawn 8×.
inline constexpr int kMinOverlaySide = 224;

// image: uint8 gray or RGB (what the model saw, after its eval transform); map: grid_h ×
// grid_w, row-major, any scale (drawn min-to-max; a constant map draws no colour). The image
// is scaled by the integer `scale` (nearest neighbour, so its pixels stay visible; 0: the
// smallest reaching kMinOverlaySide, 1 for larger images), the map upsampled bilinearly to it,
// coloured with the jet colour map and blended 1:1 over it, and `caption` written on a light
// strip across its top. Returns a BGR uint8 picture of exactly scale × the image's size.
cv::Mat heatmap_overlay(const cv::Mat& image, const std::vector<float>& map, int64_t grid_h,
                        int64_t grid_w, const std::string& caption, int scale = 0);

// Pictures of one size side by side, `columns` to a row (the last row padded black).
cv::Mat tile(const std::vector<cv::Mat>& pictures, int columns);

// A BGR picture as PNG bytes.
std::vector<unsigned char> encode_png(const cv::Mat& picture);
// Written to `path` whole (a temporary file renamed into place): a full disk leaves no half
// file and an existing one intact. Errors name the file.
void write_png(const std::filesystem::path& path, const cv::Mat& picture);

}  // namespace datasets
