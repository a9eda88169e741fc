#include "datasets/transforms.hpp"

#include <algorithm>
#include <cmath>

#include <opencv2/imgproc.hpp>

#include "datasets/trivial_augment.hpp"
#include "engine/error.hpp"

namespace datasets {

using engine::require;

void Augment::validate() const {
  require(crop == "none" || crop == "pad" || crop == "rrc" || crop == "auto",
          "--crop must be auto, none, pad or rrc, got '" + crop + "'");
  require(pad >= 0, "--pad must not be negative");
  require(auto_augment == "none" || auto_augment == "ta_wide",
          "--auto-augment must be none or ta_wide, got '" + auto_augment + "'");
  require(rrc_scale_min > 0.0 && rrc_scale_min <= 1.0, "--rrc-scale-min must be in (0, 1]");
  for (auto [v, flag] : {std::pair{hflip, "hflip"},
                         {random_erase, "random-erase"},
                         {mix_prob, "mix-prob"},
                         {switch_prob, "switch-prob"}})
    require(v >= 0.0 && v <= 1.0, std::string("--") + flag + " must be a probability in [0, 1]");
  require(mixup_alpha >= 0.0 && cutmix_alpha >= 0.0, "--mixup and --cutmix must not be negative");
}

Augment Augment::for_run(int64_t epochs) const {
  Augment a = *this;
  if (crop != "auto") return a;
  a.pad = epochs < kAutoPadFirstEpoch ? 0 : std::min(pad, kAutoPad);
  a.crop = a.pad > 0 ? "pad" : "none";
  return a;
}

double sample_beta(double alpha, std::mt19937_64& rng) {
  std::gamma_distribution<double> g(alpha, 1.0);
  const double x = g(rng), y = g(rng);
  return x + y > 0.0 ? x / (x + y) : 0.5;
}

cv::Mat augment_image(const cv::Mat& image, const Augment& a, std::mt19937_64& rng) {
  const int S = image.rows;
  cv::Mat out = image;
  std::uniform_real_distribution<double> u(0.0, 1.0);
  if (a.crop == "pad") {
    const int pad = static_cast<int>(a.pad);
    cv::Mat padded;
    cv::copyMakeBorder(image, padded, pad, pad, pad, pad, cv::BORDER_CONSTANT, cv::Scalar::all(0));
    std::uniform_int_distribution<int> off(0, 2 * pad);
    const int y = off(rng), x = off(rng);
    out = padded(cv::Rect(x, y, S, S)).clone();
  } else if (a.crop == "rrc") {
    // torchvision's RandomResizedCrop.get_params: 10 tries, then the centre crop.
    cv::Rect box(0, 0, S, S);
    for (int attempt = 0; attempt < 10; ++attempt) {
      const double area = S * S * (a.rrc_scale_min + (1.0 - a.rrc_scale_min) * u(rng));
      const double log_ratio =
          std::log(3.0 / 4.0) + (std::log(4.0 / 3.0) - std::log(3.0 / 4.0)) * u(rng);
      const double ratio = std::exp(log_ratio);
      const int w = static_cast<int>(std::lround(std::sqrt(area * ratio)));
      const int h = static_cast<int>(std::lround(std::sqrt(area / ratio)));
      if (w > 0 && h > 0 && w <= S && h <= S) {
        std::uniform_int_distribution<int> ys(0, S - h), xs(0, S - w);
        box = cv::Rect(xs(rng), ys(rng), w, h);
        break;
      }
    }
    cv::resize(image(box), out, cv::Size(S, S), 0, 0, cv::INTER_LINEAR);
  }
  if (a.hflip > 0.0 && u(rng) < a.hflip) {
    cv::Mat flipped;
    cv::flip(out, flipped, 1);
    out = flipped;
  }
  if (a.auto_augment == "ta_wide") out = trivial_augment(out, rng);
  return out;
}

void random_erase(cv::Mat& normalized, double probability, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  if (probability <= 0.0 || u(rng) >= probability) return;
  const int H = normalized.rows, W = normalized.cols;
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double area = H * W * (0.02 + (1.0 / 3.0 - 0.02) * u(rng));
    const double ratio = std::exp(std::log(0.3) + (std::log(1.0 / 0.3) - std::log(0.3)) * u(rng));
    const int h = static_cast<int>(std::lround(std::sqrt(area * ratio)));
    const int w = static_cast<int>(std::lround(std::sqrt(area / ratio)));
    if (w < W && h < H && w > 0 && h > 0) {
      std::uniform_int_distribution<int> ys(0, H - h), xs(0, W - w);
      cv::Mat roi = normalized(cv::Rect(xs(rng), ys(rng), w, h));
      std::normal_distribution<float> n(0.0f, 1.0f);
      for (int r = 0; r < roi.rows; ++r) {
        float* row = roi.ptr<float>(r);
        for (int i = 0; i < roi.cols * roi.channels(); ++i) row[i] = n(rng);
      }
      return;
    }
  }
}

}  // namespace datasets
