// Pictures out: a map over an image (attention rollout, Grad-CAM) drawn as a colour overlay
// with a caption, per-head maps tiled into one picture, and PNG encoding. OpenCV stays here.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

namespace datasets {

// At least this many pixels on the longer side of a drawn picture: a 28 × 28 image is scaled
// up (nearest neighbour, so its pixels stay visible) before the map is drawn over it.
inline constexpr int kMinOverlaySide = 224;

// image: uint8 gray or RGB (what the model saw, after its eval transform); map: grid_h ×
// grid_w, row-major, any scale (drawn min-to-max; a constant map draws no colour). The map is
// upsampled bilinearly to the picture, coloured with the jet colour map and blended 1:1 over
// it, under a band holding `caption`. Returns a BGR uint8 picture.
cv::Mat heatmap_overlay(const cv::Mat& image, const std::vector<float>& map, int64_t grid_h,
                        int64_t grid_w, const std::string& caption);

// Pictures of one size side by side, `columns` to a row (the last row padded black).
cv::Mat tile(const std::vector<cv::Mat>& pictures, int columns);

// A BGR picture as PNG bytes.
std::vector<unsigned char> encode_png(const cv::Mat& picture);
// Written to `path` whole (a temporary file renamed into place): a full disk leaves no half
// file and an existing one intact. Errors name the file.
void write_png(const std::filesystem::path& path, const cv::Mat& picture);

}  // namespace datasets
