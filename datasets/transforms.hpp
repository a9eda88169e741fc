// Training augmentation, all drawn from a generator the caller seeds: random resized crop or
// pad-and-crop, horizontal flip, TrivialAugment, random erasing (per image), mixup and cutmix (per
// batch, as soft targets), following timm's transforms_factory and mixup.
#pragma once

#include <cstdint>
#include <random>
#include <string>

#include <opencv2/core.hpp>

#include "datasets/preprocess.hpp"

namespace datasets {

struct Augment {
  // "none", "pad" (pad by `pad`, random crop), "rrc", or "auto": the pad crop once the run is
  // long enough to gain from it, with `pad` as its largest padding (`for_run`).
  std::string crop = "none";
  int64_t pad = 4;
  double rrc_scale_min = 0.08;  // random resized crop: area fraction in [min, 1], ratio 3/4..4/3
  double hflip = 0.0;           // probability; 0 for data where a mirror image is another class
  // "none" or "ta_wide" (TrivialAugmentWide, after the crop and flip; torchvision's reference
  // scripts' name for it).
  std::string auto_augment = "none";
  double random_erase = 0.0;  // probability of erasing one rectangle with normal noise
  double mixup_alpha = 0.0;   // Beta(α, α) mixing of image pairs; 0 disables
  double cutmix_alpha = 0.0;  // Beta(α, α) box pasted from another image; 0 disables
  double mix_prob = 1.0;      // probability that a batch is mixed at all
  double switch_prob = 0.5;   // with both enabled, the chance of cutmix over mixup

  bool mixes() const { return mixup_alpha > 0.0 || cutmix_alpha > 0.0; }
  void validate() const;
  // What a run of `epochs` epochs applies: crop "auto" made "none" below kAutoPadFirstEpoch,
  // else "pad" by min(pad, kAutoPad); any other crop unchanged.
  Augment for_run(int64_t epochs) const;
};

// --crop auto's rule, on the passes over the images. A random crop regularises, which pays
// only once the images have been seen often enough to be overfitted; before that it slows
// learning. What decides is the passes, not the steps.
// Fashion-MNIST, vit_fmnist_patch4, validation accuracy, seed 0 (README, "The default crop"):
// 12 epochs of 1 000, 3 000 and 5 000 images, pad 2 lost 6-9 points to no crop (and pad 1
// 4-8); 48 epochs of 3 000 and 60 of 1 000 (nearly the steps of 12 of 5 000), pad 2 was level
// (+0.7; -1.0 over 3 seeds, inside their spread). Longer runs or more padding were not
// measured, so auto stops at 2.
constexpr int64_t kAutoPadFirstEpoch = 48, kAutoPad = 2;

// uint8 square image -> augmented uint8 image of the same size.
cv::Mat augment_image(const cv::Mat& image, const Augment& a, std::mt19937_64& rng);
// timm's RandomErasing (mode 'pixel'): one rectangle of 2–33 % of the area, aspect 0.3–3.3,
// replaced by standard-normal noise in normalized space.
void random_erase(cv::Mat& normalized, double probability, std::mt19937_64& rng);

double sample_beta(double alpha, std::mt19937_64& rng);

}  // namespace datasets
