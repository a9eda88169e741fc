#include "datasets/trivial_augment.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include <opencv2/imgproc.hpp>

#include "engine/error.hpp"

namespace datasets {

namespace {

constexpr std::array<std::string_view, kNumAugmentOps> kNames = {
    "Identity", "ShearX",   "ShearY",    "TranslateX", "TranslateY", "Rotate",       "Brightness",
    "Color",    "Contrast", "Sharpness", "Posterize",  "Solarize",   "AutoContrast", "Equalize"};

// torch.linspace(start, end, 31)[bin] in float, as its CPU kernel computes it (from the nearer
// end), so magnitudes agree with torchvision's to the bit.
float linspace(float start, float end, int bin) {
  const int steps = kTrivialAugmentBins;
  const float step = (end - start) / float(steps - 1);
  return bin < steps / 2 ? start + step * float(bin) : end - step * float(steps - bin - 1);
}

uint8_t to_u8(float v) {
  return static_cast<uint8_t>(std::clamp(v, 0.0f, 255.0f));
}  // truncates

// torchvision's _blend: ratio·a + (1 − ratio)·b in float, clamped, truncated.
cv::Mat blend(const cv::Mat& a, const cv::Mat& b_float, double ratio) {
  const float r = static_cast<float>(ratio), q = static_cast<float>(1.0 - ratio);
  cv::Mat out(a.size(), a.type());
  const int n = a.cols * a.channels();
  for (int y = 0; y < a.rows; ++y) {
    const uint8_t* pa = a.ptr<uint8_t>(y);
    const float* pb = b_float.ptr<float>(y);
    uint8_t* po = out.ptr<uint8_t>(y);
    for (int i = 0; i < n; ++i) po[i] = to_u8(r * float(pa[i]) + q * pb[i]);
  }
  return out;
}

// rgb_to_grayscale on uint8: 0.2989 R + 0.587 G + 0.114 B in float, truncated; one channel.
cv::Mat grayscale(const cv::Mat& image) {
  if (image.channels() == 1) return image.clone();
  cv::Mat gray(image.size(), CV_8UC1);
  for (int y = 0; y < image.rows; ++y) {
    const uint8_t* p = image.ptr<uint8_t>(y);
    uint8_t* g = gray.ptr<uint8_t>(y);
    for (int x = 0; x < image.cols; ++x)
      g[x] = static_cast<uint8_t>(0.2989f * float(p[3 * x]) + 0.587f * float(p[3 * x + 1]) +
                                  0.114f * float(p[3 * x + 2]));
  }
  return gray;
}

// A one-channel float image repeated over the channels of `like`, as float.
cv::Mat expand_float(const cv::Mat& gray_u8, const cv::Mat& like) {
  cv::Mat f;
  gray_u8.convertTo(f, CV_32F);
  if (like.channels() == 1) return f;
  cv::Mat out;
  cv::merge(std::vector<cv::Mat>{f, f, f}, out);
  return out;
}

// torchvision's inverse affine matrix (_get_inverse_affine_matrix, scale 1) in coordinates
// centred on the image, turned into one on pixel indices for cv::warpAffine's inverse map:
// F_t.affine samples the output pixel (i, j) at centred (i + ½ − W/2, j + ½ − H/2).
cv::Mat warp(const cv::Mat& image, double angle_deg, double tx, double ty, double shear_x_deg,
             double shear_y_deg, double cx, double cy) {
  const double deg = std::numbers::pi / 180.0;
  const double rot = angle_deg * deg, sx = shear_x_deg * deg, sy = shear_y_deg * deg;
  const double a = std::cos(rot - sy) / std::cos(sy);
  const double b = -std::cos(rot - sy) * std::tan(sx) / std::cos(sy) - std::sin(rot);
  const double c = std::sin(rot - sy) / std::cos(sy);
  const double d = -std::sin(rot - sy) * std::tan(sx) / std::cos(sy) + std::cos(rot);
  double m[6] = {d, -b, 0.0, -c, a, 0.0};
  m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx;
  m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy;
  const double ox = 0.5 - image.cols / 2.0, oy = 0.5 - image.rows / 2.0;
  const cv::Matx23d inverse(m[0], m[1], m[0] * ox + m[1] * oy + m[2] - ox,  //
                            m[3], m[4], m[3] * ox + m[4] * oy + m[5] - oy);
  cv::Mat out;
  cv::warpAffine(image, out, inverse, image.size(), cv::INTER_NEAREST | cv::WARP_INVERSE_MAP,
                 cv::BORDER_CONSTANT, cv::Scalar::all(0));
  return out;
}

// PIL's ImageOps.equalize, per channel, as torchvision's _scale_channel.
void equalize_channel(cv::Mat& channel) {
  std::array<int64_t, 256> hist{};
  for (int y = 0; y < channel.rows; ++y) {
    const uint8_t* p = channel.ptr<uint8_t>(y);
    for (int x = 0; x < channel.cols; ++x) ++hist[p[x]];
  }
  int64_t last_nonzero = -1, sum_but_last = 0;
  for (int v = 0; v < 256; ++v)
    if (hist[v] != 0) {
      if (last_nonzero >= 0) sum_but_last += hist[last_nonzero];
      last_nonzero = v;
    }
  const int64_t step = sum_but_last / 255;
  if (step == 0) return;
  cv::Mat lut(1, 256, CV_8UC1);
  int64_t cumulative = 0;
  for (int v = 0; v < 256; ++v) {
    lut.at<uint8_t>(v) =
        static_cast<uint8_t>(std::min<int64_t>((cumulative + step / 2) / step, 255));
    cumulative += hist[v];
  }
  cv::LUT(channel, lut, channel);
}

template <class F>
cv::Mat per_pixel(const cv::Mat& image, F f) {
  cv::Mat out(image.size(), image.type());
  const int n = image.cols * image.channels();
  for (int y = 0; y < image.rows; ++y) {
    const uint8_t* p = image.ptr<uint8_t>(y);
    uint8_t* o = out.ptr<uint8_t>(y);
    for (int i = 0; i < n; ++i) o[i] = f(p[i], i % image.channels());
  }
  return out;
}

}  // namespace

std::string_view op_name(AugmentOp op) {
  return kNames[static_cast<size_t>(op)];
}

bool op_signed(AugmentOp op) {
  switch (op) {
    case AugmentOp::ShearX:
    case AugmentOp::ShearY:
    case AugmentOp::TranslateX:
    case AugmentOp::TranslateY:
    case AugmentOp::Rotate:
    case AugmentOp::Brightness:
    case AugmentOp::Color:
    case AugmentOp::Contrast:
    case AugmentOp::Sharpness:
      return true;
    default:
      return false;
  }
}

double trivial_augment_magnitude(AugmentOp op, int bin) {
  engine::require(bin >= 0 && bin < kTrivialAugmentBins,
                  "TrivialAugment: magnitude bin " + std::to_string(bin) + " is not in [0, 31)");
  switch (op) {
    case AugmentOp::ShearX:
    case AugmentOp::ShearY:
    case AugmentOp::Brightness:
    case AugmentOp::Color:
    case AugmentOp::Contrast:
    case AugmentOp::Sharpness:
      return linspace(0.0f, 0.99f, bin);
    case AugmentOp::TranslateX:
    case AugmentOp::TranslateY:
      return linspace(0.0f, 32.0f, bin);
    case AugmentOp::Rotate:
      return linspace(0.0f, 135.0f, bin);
    case AugmentOp::Posterize:
      return 8.0 - std::nearbyint(double(bin) / ((kTrivialAugmentBins - 1) / 6.0));
    case AugmentOp::Solarize:
      return linspace(255.0f, 0.0f, bin);
    default:
      return 0.0;  // Identity, AutoContrast, Equalize take none
  }
}

cv::Mat apply_augment_op(const cv::Mat& image, AugmentOp op, double magnitude) {
  engine::require(image.depth() == CV_8U && (image.channels() == 1 || image.channels() == 3),
                  "TrivialAugment: the image must be 8-bit gray or RGB");
  const double W = image.cols, H = image.rows;
  const double deg = 180.0 / std::numbers::pi;
  switch (op) {
    case AugmentOp::Identity:
      return image.clone();
    // Shears about the top-left corner (center [0, 0]), by atan(magnitude) in degrees.
    case AugmentOp::ShearX:
      return warp(image, 0, 0, 0, std::atan(magnitude) * deg, 0, -W / 2, -H / 2);
    case AugmentOp::ShearY:
      return warp(image, 0, 0, 0, 0, std::atan(magnitude) * deg, -W / 2, -H / 2);
    // Whole pixels: torchvision passes int(magnitude).
    case AugmentOp::TranslateX:
      return warp(image, 0, std::trunc(magnitude), 0, 0, 0, 0, 0);
    case AugmentOp::TranslateY:
      return warp(image, 0, 0, std::trunc(magnitude), 0, 0, 0, 0);
    // F.rotate turns counter-clockwise, through the affine matrix of −angle.
    case AugmentOp::Rotate:
      return warp(image, -magnitude, 0, 0, 0, 0, 0, 0);
    case AugmentOp::Brightness:
      return blend(image, cv::Mat::zeros(image.size(), CV_32FC(image.channels())), 1.0 + magnitude);
    case AugmentOp::Color:
      if (image.channels() == 1) return image.clone();  // torchvision: saturation of gray is itself
      return blend(image, expand_float(grayscale(image), image), 1.0 + magnitude);
    case AugmentOp::Contrast: {
      const cv::Mat gray = grayscale(image);
      const float mean = static_cast<float>(cv::mean(gray)[0]);
      return blend(image, cv::Mat(image.size(), CV_32FC(image.channels()), cv::Scalar::all(mean)),
                   1.0 + magnitude);
    }
    case AugmentOp::Sharpness: {
      if (image.rows <= 2 || image.cols <= 2) return image.clone();
      // The degenerate image: a 3×3 smoothing (centre 5, the rest 1, over 13), rounded, inside
      // a one-pixel border left as it was.
      cv::Mat f, smooth;
      image.convertTo(f, CV_32F);
      cv::Mat kernel(3, 3, CV_32F, cv::Scalar(1.0f / 13.0f));
      kernel.at<float>(1, 1) = 5.0f / 13.0f;
      cv::filter2D(f, smooth, CV_32F, kernel, cv::Point(-1, -1), 0.0, cv::BORDER_REPLICATE);
      cv::Mat degenerate = f.clone();
      const int n = image.channels();
      for (int y = 1; y + 1 < image.rows; ++y)
        for (int x = n; x < (image.cols - 1) * n; ++x)
          degenerate.ptr<float>(y)[x] = std::nearbyint(smooth.ptr<float>(y)[x]);
      return blend(image, degenerate, 1.0 + magnitude);
    }
    case AugmentOp::Posterize: {
      const int bits = static_cast<int>(magnitude);
      const auto mask = static_cast<uint8_t>(0xFF << (8 - bits));
      return per_pixel(image, [mask](uint8_t p, int) { return uint8_t(p & mask); });
    }
    case AugmentOp::Solarize:
      return per_pixel(image, [magnitude](uint8_t p, int) {
        return double(p) >= magnitude ? uint8_t(255 - p) : p;
      });
    case AugmentOp::AutoContrast: {
      std::vector<cv::Mat> channels;
      cv::split(image, channels);
      std::vector<float> lo(channels.size()), scale(channels.size());
      for (size_t c = 0; c < channels.size(); ++c) {
        double mn, mx;
        cv::minMaxLoc(channels[c], &mn, &mx);
        const bool flat = mx == mn;  // torchvision: an infinite scale leaves the channel as is
        lo[c] = flat ? 0.0f : float(mn);
        scale[c] = flat ? 1.0f : 255.0f / float(mx - mn);
      }
      return per_pixel(image,
                       [&](uint8_t p, int c) { return to_u8((float(p) - lo[c]) * scale[c]); });
    }
    case AugmentOp::Equalize: {
      std::vector<cv::Mat> channels;
      cv::split(image, channels);
      for (cv::Mat& c : channels) equalize_channel(c);
      cv::Mat out;
      cv::merge(channels, out);
      return out;
    }
  }
  throw engine::Error("TrivialAugment: unknown operation");
}

cv::Mat trivial_augment(const cv::Mat& image, std::mt19937_64& rng) {
  const auto op =
      static_cast<AugmentOp>(std::uniform_int_distribution<int>(0, kNumAugmentOps - 1)(rng));
  double magnitude = 0.0;
  if (op != AugmentOp::Identity && op != AugmentOp::AutoContrast && op != AugmentOp::Equalize)
    magnitude = trivial_augment_magnitude(
        op, std::uniform_int_distribution<int>(0, kTrivialAugmentBins - 1)(rng));
  if (op_signed(op) && std::uniform_int_distribution<int>(0, 1)(rng) == 1) magnitude = -magnitude;
  return apply_augment_op(image, op, magnitude);
}

}  // namespace datasets
