#include "datasets/preprocess.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include <webp/decode.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "engine/error.hpp"
#include "engine/json_read.hpp"

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
  require(interpolation.empty() || interpolation == "bilinear" || interpolation == "bicubic",
          "interpolation must be bilinear or bicubic, got '" + interpolation + "'");
  require(crop_mode == "center" || crop_mode == "squash" || crop_mode == "border",
          "crop_mode must be center, squash or border, got '" + crop_mode + "'");
}

engine::Dims Preprocess::input_dims(int64_t batch) const {
  if (patch_size == 0) return {batch, in_chans, img_size, img_size};
  const int64_t grid = img_size / patch_size;
  return {batch, grid * grid, in_chans * patch_size * patch_size};
}

void to_json(nlohmann::json& j, const Preprocess& p) {
  j = {{"img_size", p.img_size}, {"in_chans", p.in_chans}, {"patch_size", p.patch_size},
       {"mean", p.mean},         {"std", p.std},           {"crop_pct", p.crop_pct}};
  // Only what differs from our own default, so files written before these existed are equal.
  if (!p.interpolation.empty()) j["interpolation"] = p.interpolation;
  if (p.crop_mode != "center") j["crop_mode"] = p.crop_mode;
}

void from_json(const nlohmann::json& j, Preprocess& p) {
  using engine::field_int, engine::json_field, engine::json_floats;
  p.img_size = field_int(j, "img_size");
  p.in_chans = field_int(j, "in_chans");
  p.patch_size = field_int(j, "patch_size");
  p.mean = json_floats(json_field(j, "mean"), "mean");
  p.std = json_floats(json_field(j, "std"), "std");
  p.crop_pct = engine::json_double(j, "crop_pct", 1.0);
  p.interpolation = engine::json_string(j, "interpolation", "");
  p.crop_mode = engine::json_string(j, "crop_mode", "center");
}

namespace {

uint32_t be16(const unsigned char* p) {
  return uint32_t(p[0]) << 8 | p[1];
}
uint32_t be32(const unsigned char* p) {
  return be16(p) << 16 | be16(p + 2);
}
uint32_t le16(const unsigned char* p) {
  return uint32_t(p[1]) << 8 | p[0];
}
uint32_t le32(const unsigned char* p) {
  return le16(p + 2) << 16 | le16(p);
}

bool starts_with(const std::vector<unsigned char>& b, size_t at, const char* text) {
  const size_t n = std::strlen(text);
  return b.size() >= at + n && std::memcmp(b.data() + at, text, n) == 0;
}

// The signatures exactly as OpenCV's PNG and JPEG decoders check them (see
// image_size_from_header for why exactly).
bool is_png(const std::vector<unsigned char>& b) {
  return starts_with(b, 0, "\x89PNG\r\n\x1a\n");
}
bool is_jpeg(const std::vector<unsigned char>& b) {
  return b.size() >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff;
}

// A PNG must end with its IEND chunk and a JPEG with its EOI marker. Checked here because
// libpng and libjpeg report a cut-off file on stderr themselves, in lines of their own.
bool truncated(const std::vector<unsigned char>& b) {
  static const unsigned char iend[8] = {'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};
  if (is_png(b)) return b.size() < 20 || !std::equal(iend, iend + 8, b.end() - 8);
  if (is_jpeg(b)) {
    // Trailing padding after the EOI marker is allowed.
    size_t end = b.size();
    while (end > 2 && b[end - 1] == 0x00) --end;
    return end < 4 || b[end - 2] != 0xff || b[end - 1] != 0xd9;
  }
  return false;
}

// Width and height from the header of a TIFF's first image (tags 256 and 257). Only the plain
// form is accepted, each tag once as one SHORT or LONG: a file that states its size twice could
// show us one size and libtiff another (a fuzzer found one that allocated 2.5 GB).
std::optional<std::pair<uint64_t, uint64_t>> tiff_size(const std::vector<unsigned char>& b) {
  const bool le = b[0] == 'I';
  auto u16 = [&](size_t at) { return le ? le16(&b[at]) : be16(&b[at]); };
  auto u32 = [&](size_t at) { return le ? le32(&b[at]) : be32(&b[at]); };
  if (b.size() < 8 || u16(2) != 42) return std::nullopt;  // 43 is BigTIFF: not read
  const size_t ifd = u32(4);
  if (ifd + 2 > b.size()) return std::nullopt;
  const size_t count = u16(ifd);
  if (ifd + 2 + 12 * count > b.size()) return std::nullopt;  // a truncated directory
  uint64_t w = 0, h = 0;
  for (size_t i = 0; i < count; ++i) {
    const size_t e = ifd + 2 + 12 * i;
    const uint32_t tag = u16(e), type = u16(e + 2);
    if (tag != 256 && tag != 257) continue;
    uint64_t& v = tag == 256 ? w : h;
    if (v != 0 || u32(e + 4) != 1 || (type != 3 && type != 4)) return std::nullopt;
    v = type == 3 ? u16(e + 8) : u32(e + 8);
    if (v == 0) return std::nullopt;
  }
  if (w == 0 || h == 0) return std::nullopt;
  return std::pair{w, h};
}

// Width and height from a PNM header, read as OpenCV's reader does (a fuzzer found a header
// that two readers disagreed on): before a number, whitespace and # comments up to the end of
// the line; after it, one delimiter byte, whatever it is, consumed.
std::optional<std::pair<uint64_t, uint64_t>> pnm_size(const std::vector<unsigned char>& b) {
  size_t at = 2;
  uint64_t v[2] = {0, 0};
  for (uint64_t& x : v) {
    if (at >= b.size()) return std::nullopt;
    int code = b[at++];
    while (!std::isdigit(code)) {
      if (code == '#') {
        while (at < b.size() && b[at] != '\n' && b[at] != '\r') ++at;
        if (at + 1 >= b.size()) return std::nullopt;
        code = b[at + 1], at += 2;
      } else if (std::isspace(code)) {
        if (at >= b.size()) return std::nullopt;
        code = b[at++];
      } else {
        return std::nullopt;
      }
    }
    while (std::isdigit(code) && x < (uint64_t(1) << 40)) {
      x = x * 10 + uint64_t(code - '0');
      if (at >= b.size()) break;
      code = b[at++];
    }
  }
  return std::pair{v[0], v[1]};
}

}  // namespace

// cv::imdecode gives the bytes to the first of its decoders whose signature check accepts them,
// and Debian's OpenCV also has DICOM (GDCM) and GDAL decoders that look past the first bytes
// (GDCM aborts the process on some malformed files). So each format here is recognised by
// exactly the check of OpenCV's decoder for it, which comes before those in OpenCV's list: a
// file we accept always reaches the decoder whose header we read.
std::optional<std::pair<uint64_t, uint64_t>> image_size_from_header(
    const std::vector<unsigned char>& b) {
  const size_t n = b.size();
  if (n >= 24 && is_png(b) && starts_with(b, 12, "IHDR"))
    return std::pair<uint64_t, uint64_t>{be32(&b[16]), be32(&b[20])};
  if (n >= 4 && is_jpeg(b)) {
    // Walk the JPEG markers to the first start-of-frame (C0-CF but C4, C8 and CC).
    size_t at = 2;
    while (at + 9 < n) {
      if (b[at] != 0xff) return std::nullopt;
      const unsigned char marker = b[at + 1];
      if (marker == 0xff) {  // fill byte
        ++at;
        continue;
      }
      if (marker >= 0xc0 && marker <= 0xcf && marker != 0xc4 && marker != 0xc8 && marker != 0xcc)
        return std::pair<uint64_t, uint64_t>{be16(&b[at + 7]), be16(&b[at + 5])};
      if (marker == 0x01 || (marker >= 0xd0 && marker <= 0xd8)) {
        at += 2;
        continue;
      }
      at += 2 + be16(&b[at + 2]);
    }
    return std::nullopt;
  }
  if (n >= 26 && starts_with(b, 0, "BM")) {
    if (le32(&b[14]) == 12) return std::pair<uint64_t, uint64_t>{le16(&b[18]), le16(&b[20])};
    const auto w = static_cast<int32_t>(le32(&b[18])), h = static_cast<int32_t>(le32(&b[22]));
    return std::pair<uint64_t, uint64_t>{std::abs(int64_t(w)), std::abs(int64_t(h))};
  }
  if (n >= 32 && starts_with(b, 0, "RIFF") && starts_with(b, 8, "WEBP")) {
    // OpenCV's check and its size: libwebp's own reading of the first 32 bytes.
    WebPBitstreamFeatures features;
    if (WebPGetFeatures(b.data(), 32, &features) != VP8_STATUS_OK) return std::nullopt;
    return std::pair<uint64_t, uint64_t>{uint64_t(features.width), uint64_t(features.height)};
  }
  if (n >= 8 && (starts_with(b, 0, "II") || starts_with(b, 0, "MM"))) return tiff_size(b);
  if (n >= 3 && b[0] == 'P' && b[1] >= '1' && b[1] <= '6' && std::isspace(b[2])) return pnm_size(b);
  return std::nullopt;
}

cv::Mat decode_image(const std::vector<unsigned char>& bytes, int64_t in_chans,
                     const std::string& name) {
  if (bytes.empty()) throw Error("'" + name + "': empty file, not an image");
  if (truncated(bytes)) throw Error("'" + name + "': truncated image (its end is missing)");
  // Refused from the header, before the decoder allocates: a small file can claim gigapixels.
  // Only formats whose size we can read are decoded, so no decoder ever sees an unchecked one.
  const auto size = image_size_from_header(bytes);
  if (!size)
    throw Error("'" + name + "': not an image vit reads (PNG, JPEG, BMP, WebP, TIFF or PNM)");
  {
    const auto [w, h] = *size;
    if (w > uint64_t(kMaxImagePixels) || h > uint64_t(kMaxImagePixels) ||
        w * h > uint64_t(kMaxImagePixels))
      throw Error("'" + name + "': " + std::to_string(w) + "x" + std::to_string(h) +
                  " pixels, more than the limit of " + std::to_string(kMaxImagePixels) +
                  " (a decompression bomb?)");
  }
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
  const std::string where = "'" + path.string() + "': ";
  // O_NONBLOCK: a FIFO named like an image would otherwise block the open until a writer came;
  // regular files read the same with it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    // ENOENT as before; ELOOP (a symlink loop), EACCES and the rest by their own names.
    if (errno == ENOENT) throw Error(where + "no such file");
    throw Error(where + "cannot read: " + std::strerror(errno));
  }
  struct stat st {};
  std::vector<unsigned char> bytes;
  std::string problem;
  if (::fstat(fd, &st) != 0) {
    problem = std::string("cannot read: ") + std::strerror(errno);
  } else if (!S_ISREG(st.st_mode)) {
    problem = "not a regular file";
  } else if (uint64_t(st.st_size) > kMaxImageFileBytes) {
    problem = "a file of " + std::to_string(st.st_size) + " bytes, more than the limit of " +
              std::to_string(kMaxImageFileBytes) + " for an image";
  } else {
    bytes.resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < bytes.size()) {
      const ssize_t r = ::read(fd, bytes.data() + got, bytes.size() - got);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        problem = std::string("cannot read: ") + std::strerror(errno);
        break;
      }
      if (r == 0) break;  // shrank while being read
      got += static_cast<size_t>(r);
    }
    bytes.resize(got);
  }
  ::close(fd);
  if (!problem.empty()) throw Error(where + problem);
  return decode_image(bytes, in_chans, path.string());
}

namespace {

// OpenCV's filter for a resize by `scale` (< 1: shrinking). PIL, which timm's and Hugging
// Face's transforms use, widens its bicubic and bilinear filters when shrinking (antialiasing);
// OpenCV's cubic and linear do not, and its area filter comes closest: on three photographs
// shrunk 1.8-2.7× (tests/test_hub.cpp), mean |OpenCV - PIL| is 1.6-2.2 levels of 255 with
// INTER_AREA against 6.0-8.3 with INTER_CUBIC, INTER_LINEAR or INTER_LANCZOS4.
int cv_interpolation(const std::string& name, double scale) {
  if (scale < 1.0) return cv::INTER_AREA;
  return name == "bicubic" ? cv::INTER_CUBIC : cv::INTER_LINEAR;
}

cv::Mat resize_to(const cv::Mat& image, int h, int w, const std::string& interpolation) {
  if (image.rows == h && image.cols == w) return image;
  const double scale = std::min(double(h) / image.rows, double(w) / image.cols);
  cv::Mat out;
  cv::resize(image, out, cv::Size(w, h), 0, 0, cv_interpolation(interpolation, scale));
  return out;
}

// The centre s × s of an image at least that large; torchvision's offsets, rounded half to even.
cv::Mat center_crop(const cv::Mat& image, int s) {
  const int top = static_cast<int>(std::nearbyint((image.rows - s) / 2.0));
  const int left = static_cast<int>(std::nearbyint((image.cols - s) / 2.0));
  return image(cv::Rect(left, top, s, s)).clone();
}

}  // namespace

cv::Mat resize_center_crop(const cv::Mat& image, int64_t img_size, double crop_pct) {
  Preprocess p;
  p.img_size = img_size, p.crop_pct = crop_pct;
  return eval_transform(image, p);
}

cv::Mat eval_transform(const cv::Mat& image, const Preprocess& p) {
  const int s = static_cast<int>(p.img_size);
  const int target = static_cast<int>(std::floor(static_cast<double>(p.img_size) / p.crop_pct));
  const int h = image.rows, w = image.cols;
  if (p.crop_mode == "squash")
    return center_crop(resize_to(image, target, target, p.interpolation), s);
  if (p.crop_mode == "border") {
    // timm's ResizeKeepRatio(longest=1) then CenterCropOrPad, padded with the mean colour.
    const double scale = static_cast<double>(target) / std::max(h, w);
    const int nh = std::max(1, static_cast<int>(std::lround(h * scale)));
    const int nw = std::max(1, static_cast<int>(std::lround(w * scale)));
    const cv::Mat resized = resize_to(image, nh, nw, p.interpolation);
    cv::Scalar fill;
    for (int c = 0; c < image.channels() && c < 4; ++c) fill[c] = std::round(255.0 * p.mean[c]);
    cv::Mat square(std::max(s, nh), std::max(s, nw), image.type(), fill);
    resized.copyTo(square(cv::Rect((square.cols - nw) / 2, (square.rows - nh) / 2, nw, nh)));
    return center_crop(square, s);
  }
  // center: the shorter side to target, the longer truncated as torchvision's Resize does.
  const int nh = h <= w ? target : static_cast<int>(double(target) * h / w);
  const int nw = h <= w ? static_cast<int>(double(target) * w / h) : target;
  return center_crop(resize_to(image, nh, nw, p.interpolation), s);
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
