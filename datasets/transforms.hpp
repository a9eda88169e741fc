// Training augmentation, all drawn from a generator the caller seeds: random resized crop or
// pad-and-crop, horizontal flip, random erasing (per image), mixup and cutmix (per batch, as
// soft targets), following timm's transforms_factory and mixup.
#pragma once

#include <cstdint>
#include <random>
#include <string>

#include <opencv2/core.hpp>

#include "datasets/preprocess.hpp"

namespace datasets {

struct Augment {
  std::string crop = "none";  // "none", "pad" (pad by `pad`, random crop) or "rrc"
  int64_t pad = 4;
  double rrc_scale_min = 0.08;  // random resized crop: area fraction in [min, 1], ratio 3/4..4/3
  double hflip = 0.0;           // probability; 0 for data where a mirror image is another class
  double random_erase = 0.0;    // probability of erasing one rectangle with normal noise
  double mixup_alpha = 0.0;     // Beta(α, α) mixing of image pairs; 0 disables
  double cutmix_alpha = 0.0;    // Beta(α, α) box pasted from another image; 0 disables
  double mix_prob = 1.0;        // probability that a batch is mixed at all
  double switch_prob = 0.5;     // with both enabled, the chance of cutmix over mixup

  bool mixes() const { return mixup_alpha > 0.0 || cutmix_alpha > 0.0; }
  void validate() const;
};

// uint8 square image -> augmented uint8 image of the same size.
cv::Mat augment_image(const cv::Mat& image, const Augment& a, std::mt19937_64& rng);
// timm's RandomErasing (mode 'pixel'): one rectangle of 2–33 % of the area, aspect 0.3–3.3,
// replaced by standard-normal noise in normalized space.
void random_erase(cv::Mat& normalized, double probability, std::mt19937_64& rng);

double sample_beta(double alpha, std::mt19937_64& rng);

}  // namespace datasets
