#include "datasets/overlay.hpp"

#include <algorithm>
#include <cmath>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "engine/error.hpp"
#include "engine/file.hpp"

namespace datasets {

cv::Mat heatmap_overlay(const cv::Mat& image, const std::vector<float>& map, int64_t grid_h,
                        int64_t grid_w, const std::string& caption, int scale) {
  engine::require(
      !image.empty() && image.depth() == CV_8U && (image.channels() == 1 || image.channels() == 3),
      "heatmap_overlay: the image must be 8-bit gray or RGB");
  engine::require(grid_h > 0 && grid_w > 0 && int64_t(map.size()) == grid_h * grid_w,
                  "heatmap_overlay: a map of " + std::to_string(map.size()) + " values for a " +
                      std::to_string(grid_h) + " × " + std::to_string(grid_w) + " grid");
  engine::require(scale >= 0 && scale <= 64,
                  "heatmap_overlay: scale " + std::to_string(scale) + " is not in 0 to 64");
  cv::Mat bgr;
  cv::cvtColor(image, bgr, image.channels() == 1 ? cv::COLOR_GRAY2BGR : cv::COLOR_RGB2BGR);
  const int longer = std::max(bgr.rows, bgr.cols);
  if (scale == 0) scale = std::max(1, (kMinOverlaySide + longer - 1) / longer);
  if (scale > 1) cv::resize(bgr, bgr, {}, scale, scale, cv::INTER_NEAREST);

  // The map scaled to [0, 255], then to the picture: each cell's value at its centre.
  if (!std::all_of(map.begin(), map.end(), [](float x) { return std::isfinite(x); }))
    throw engine::Error("heatmap_overlay: the map holds NaN or infinity");
  cv::Mat grid(int(grid_h), int(grid_w), CV_32F);
  std::copy(map.begin(), map.end(), grid.ptr<float>());
  double lo = 0, hi = 0;
  cv::minMaxLoc(grid, &lo, &hi);
  cv::Mat scaled;
  if (hi > lo) grid.convertTo(scaled, CV_8U, 255.0 / (hi - lo), -255.0 * lo / (hi - lo));
  cv::Mat picture;
  if (scaled.empty()) {
    picture = bgr;  // a constant map says nothing: no colour
  } else {
    cv::Mat up, colours;
    cv::resize(scaled, up, bgr.size(), 0, 0, cv::INTER_LINEAR);
    cv::applyColorMap(up, colours, cv::COLORMAP_JET);
    cv::addWeighted(bgr, 0.5, colours, 0.5, 0.0, picture);
  }

  // The caption on a light strip across the top, scaled to the width; none when the picture is
  // too small to read it.
  cv::Mat out = picture.clone();
  const int strip = std::max(12, out.cols / 11);
  if (caption.empty() || out.rows < 2 * strip) return out;
  cv::Mat top = out(cv::Rect(0, 0, out.cols, strip));
  cv::addWeighted(top, 0.25, cv::Mat(top.size(), top.type(), cv::Scalar(255, 255, 255)), 0.75, 0.0,
                  top);
  double font = 0.5 * strip / 20.0;
  int baseline = 0;
  cv::Size size = cv::getTextSize(caption, cv::FONT_HERSHEY_SIMPLEX, font, 1, &baseline);
  if (size.width > out.cols - 8) {
    font *= double(out.cols - 8) / size.width;
    size = cv::getTextSize(caption, cv::FONT_HERSHEY_SIMPLEX, font, 1, &baseline);
  }
  cv::putText(out, caption, {4, (strip + size.height) / 2}, cv::FONT_HERSHEY_SIMPLEX, font,
              cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  return out;
}

cv::Mat tile(const std::vector<cv::Mat>& pictures, int columns) {
  engine::require(!pictures.empty() && columns > 0, "tile: no pictures");
  const cv::Size size = pictures[0].size();
  const int n = int(pictures.size()), cols = std::min(columns, n), rows = (n + cols - 1) / cols;
  cv::Mat out(rows * size.height, cols * size.width, pictures[0].type(), cv::Scalar::all(0));
  for (int i = 0; i < n; ++i) {
    engine::require(pictures[size_t(i)].size() == size && pictures[size_t(i)].type() == out.type(),
                    "tile: pictures of different sizes");
    pictures[size_t(i)].copyTo(
        out(cv::Rect((i % cols) * size.width, (i / cols) * size.height, size.width, size.height)));
  }
  return out;
}

std::vector<unsigned char> encode_png(const cv::Mat& picture) {
  std::vector<unsigned char> bytes;
  if (!cv::imencode(".png", picture, bytes)) throw engine::Error("cannot encode a PNG");
  return bytes;
}

void write_png(const std::filesystem::path& path, const cv::Mat& picture) {
  const std::vector<unsigned char> bytes = encode_png(picture);
  engine::write_file_atomic(path, {{bytes.data(), bytes.size()}});
}

}  // namespace datasets
