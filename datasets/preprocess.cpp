#include "datasets/preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "engine/error.hpp"

namespace datasets {

using engine::Error;
using engine::require;

void Preprocess::validate() const {
  require(img_size > 0 && img_size <= 8192,
          "--img-size must be in [1, 8192], got " + std::to_string(img_size));
  require(in_chans == 1 || in_chans == 3,
          "--in-chans must be 1 or 3, got " + std::to_string(in_chans));
  require(patch_size >= 0 && (patch_size == 0 || img_size % patch_size == 0),
          "--patch-size " + std::to_string(patch_size) + " does not divide --img-size " +
              std::to_string(img_size));
  require(
      static_cast<int64_t>(mean.size()) == in_chans && static_cast<int64_t>(std.size()) == in_chans,
      "--mean and --std need one value per channel (" + std::to_string(in_chans) + ")");
  for (float s : std) require(s > 0.0f && std::isfinite(s), "--std values must be positive");
  for (float m : mean) require(std::isfinite(m), "--mean values must be finite");
  require(crop_pct > 0.0 && crop_pct <= 1.0, "--crop-pct must be in (0, 1]");
}

engine::Dims Preprocess::input_dims(int64_t batch) const {
  if (patch_size == 0) return {batch, in_chans, img_size, img_size};
  const int64_t grid = img_size / patch_size;
  return {batch, grid * grid, in_chans * patch_size * patch_size};
}

void to_json(nlohmann::json& j, const Preprocess& p) {
  j = {{"img_size", p.img_size}, {"in_chans", p.in_chans}, {"patch_size", p.patch_size},
       {"mean", p.mean},         {"std", p.std},           {"crop_pct", p.crop_pct}};
}

void from_json(const nlohmann::json& j, Preprocess& p) {
  j.at("img_size").get_to(p.img_size);
  j.at("in_chans").get_to(p.in_chans);
  j.at("patch_size").get_to(p.patch_size);
  j.at("mean").get_to(p.mean);
  j.at("std").get_to(p.std);
  p.crop_pct = j.value("crop_pct", 1.0);
}

// A PNG must end with its IEND chunk and a JPEG with its EOI marker. Checked here because
// libpng and libjpeg report a cut-off file on stderr themselves, in lines of their own.
static bool truncated(const std::vector<unsigned char>& b) {
  static const unsigned char png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  static const unsigned char iend[8] = {'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};
  if (b.size() >= 8 && std::equal(png_sig, png_sig + 8, b.begin()))
    return b.size() < 20 || !std::equal(iend, iend + 8, b.end() - 8);
  if (b.size() >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff) {
    // Trailing padding after the EOI marker is allowed.
    size_t end = b.size();
    while (end > 2 && b[end - 1] == 0x00) --end;
    return end < 4 || b[end - 2] != 0xff || b[end - 1] != 0xd9;
  }
  return false;
}

cv::Mat decode_image(const std::vector<unsigned char>& bytes, int64_t in_chans,
                     const std::string& name) {
  if (bytes.empty()) throw Error("'" + name + "': empty file, not an image");
  if (truncated(bytes)) throw Error("'" + name + "': truncated image (its end is missing)");
  cv::Mat raw;
  try {
    raw = cv::imdecode(bytes, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    throw Error("'" + name + "': cannot decode image: " + e.err);
  }
  if (raw.empty()) throw Error("'" + name + "': not an image OpenCV can decode (or truncated)");
  if (raw.depth() == CV_16U)
    raw.convertTo(raw, CV_8U, 1.0 / 257.0);
  else if (raw.depth() == CV_32F)
    raw.convertTo(raw, CV_8U, 255.0);
  else if (raw.depth() != CV_8U)
    raw.convertTo(raw, CV_8U);
  cv::Mat out;
  const int c = raw.channels();
  if (in_chans == 1) {
    if (c == 1)
      out = raw;
    else
      cv::cvtColor(raw, out, c == 4 ? cv::COLOR_BGRA2GRAY : cv::COLOR_BGR2GRAY);
  } else {
    if (c == 1)
      cv::cvtColor(raw, out, cv::COLOR_GRAY2RGB);
    else
      cv::cvtColor(raw, out, c == 4 ? cv::COLOR_BGRA2RGB : cv::COLOR_BGR2RGB);
  }
  return out;
}

cv::Mat load_image(const std::filesystem::path& path, int64_t in_chans) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error("'" + path.string() +
                "': " + (std::filesystem::exists(path) ? "cannot read" : "no such file"));
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  return decode_image(bytes, in_chans, path.string());
}

cv::Mat resize_center_crop(const cv::Mat& image, int64_t img_size, double crop_pct) {
  const int target = static_cast<int>(std::floor(static_cast<double>(img_size) / crop_pct));
  const int h = image.rows, w = image.cols;
  cv::Mat resized = image;
  if (std::min(h, w) != target) {
    const double scale = static_cast<double>(target) / std::min(h, w);
    const int nh = std::max(target, static_cast<int>(std::lround(h * scale)));
    const int nw = std::max(target, static_cast<int>(std::lround(w * scale)));
    cv::resize(image, resized, cv::Size(nw, nh), 0, 0,
               scale < 1.0 ? cv::INTER_AREA : cv::INTER_LINEAR);
  }
  const int s = static_cast<int>(img_size);
  const int top = (resized.rows - s) / 2, left = (resized.cols - s) / 2;
  return resized(cv::Rect(left, top, s, s)).clone();
}

cv::Mat normalize(const cv::Mat& image, const Preprocess& p) {
  cv::Mat f;
  image.convertTo(f, CV_32F, 1.0 / 255.0);
  if (p.in_chans == 1) return (f - p.mean[0]) / p.std[0];
  cv::subtract(f, cv::Scalar(p.mean[0], p.mean[1], p.mean[2]), f);
  cv::divide(f, cv::Scalar(p.std[0], p.std[1], p.std[2]), f);
  return f;
}

void write_model_input(const cv::Mat& normalized, const Preprocess& p, float* dst) {
  require(normalized.rows == p.img_size && normalized.cols == p.img_size &&
              normalized.channels() == p.in_chans && normalized.depth() == CV_32F,
          "write_model_input: image is not " + std::to_string(p.img_size) + "x" +
              std::to_string(p.img_size) + "x" + std::to_string(p.in_chans) + " float");
  if (p.patch_size > 0) {
    cut_patches(normalized, p.patch_size, dst);
    return;
  }
  std::vector<cv::Mat> planes;
  cv::split(normalized, planes);
  const size_t plane = static_cast<size_t>(p.img_size * p.img_size);
  for (size_t c = 0; c < planes.size(); ++c)
    std::memcpy(dst + c * plane, planes[c].ptr<float>(), plane * sizeof(float));
}

void to_model_input(const cv::Mat& image, const Preprocess& p, float* dst) {
  write_model_input(normalize(image, p), p, dst);
}

void cut_patches(const cv::Mat& image, int64_t patch_size, float* dst) {
  require(image.depth() == CV_32F, "cut_patches: needs a float image");
  const int P = static_cast<int>(patch_size);
  require(P > 0 && image.rows % P == 0 && image.cols % P == 0,
          "cut_patches: patch size " + std::to_string(P) + " does not divide " +
              std::to_string(image.rows) + "x" + std::to_string(image.cols));
  std::vector<cv::Mat> planes;
  cv::split(image, planes);
  for (int gy = 0; gy < image.rows / P; ++gy)
    for (int gx = 0; gx < image.cols / P; ++gx)
      for (const cv::Mat& plane : planes) {
        const cv::Mat patch = plane(cv::Rect(gx * P, gy * P, P, P));
        for (int r = 0; r < P; ++r, dst += P)
          std::memcpy(dst, patch.ptr<float>(r), P * sizeof(float));
      }
}

}  // namespace datasets
