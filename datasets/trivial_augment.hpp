// TrivialAugment (Müller & Hutter, ICCV 2021) as torchvision's TrivialAugmentWide: each image
// gets one operation drawn uniformly from 14, at one of 31 magnitudes drawn uniformly, negated
// with probability 1/2 where the operation has a sign. No hyperparameters, which is its point.
// Every operation follows torchvision's tensor path on uint8 images (transforms/autoaugment.py,
// _apply_op; functional_tensor.py): geometric ones with nearest sampling and a fill of 0, blends
// computed in float and truncated to uint8, Equalize with PIL's lookup table, not OpenCV's.
// Checked against torchvision itself (tests/fixtures/export_trivial_augment.py).
#pragma once

#include <array>
#include <random>
#include <string_view>

#include <opencv2/core.hpp>

namespace datasets {

enum class AugmentOp {
  Identity,
  ShearX,
  ShearY,
  TranslateX,
  TranslateY,
  Rotate,
  Brightness,
  Color,
  Contrast,
  Sharpness,
  Posterize,
  Solarize,
  AutoContrast,
  Equalize,
};
constexpr int kNumAugmentOps = 14;
constexpr int kTrivialAugmentBins = 31;  // torchvision's num_magnitude_bins

// torchvision's op names ("ShearX", ...), in the order of TrivialAugmentWide's space.
std::string_view op_name(AugmentOp op);
// TrivialAugmentWide's magnitude of `bin` in [0, 31), unsigned: shear 0..0.99, translate
// 0..32 pixels (absolute, whatever the image size, as torchvision), rotate 0..135 degrees,
// enhancement factors 1 ± 0..0.99, posterize 8..2 bits, solarize threshold 255..0.
double trivial_augment_magnitude(AugmentOp op, int bin);
bool op_signed(AugmentOp op);

// One operation at one (signed) magnitude on an 8-bit gray or RGB image; a new image of the
// same size and type.
cv::Mat apply_augment_op(const cv::Mat& image, AugmentOp op, double magnitude);
// Draws the operation, the bin and the sign from `rng`, then applies it.
cv::Mat trivial_augment(const cv::Mat& image, std::mt19937_64& rng);

}  // namespace datasets
