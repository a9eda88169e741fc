// Test helpers: seeded random tensors, and the central finite-difference gradient check on
// L = Σ dst·R for a fixed random R, accumulated in double precision.
#pragma once

#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/context.hpp"
#include "engine/parameter_store.hpp"
#include "engine/tensor.hpp"

namespace check {

using engine::Context;
using engine::Dims;
using engine::Tensor;

void randomize(const Tensor& t, std::mt19937_64& rng, float low = -1.0f, float high = 1.0f);
Tensor random_tensor(Context& ctx, const Dims& dims, std::mt19937_64& rng, float low = -1.0f,
                     float high = 1.0f);
std::vector<float> copy_of(const Tensor& t);
std::vector<float> copy_of(const float* data, int64_t n);
double weighted_sum(const Tensor& dst, const Tensor& r);

// got within tolerance · max|want| of want, whose largest value must not be trivially small
// (0.1): how a whole model is compared with its torch reference.
void check_close_to_largest(const Tensor& got, const std::vector<float>& want,
                            const std::string& what, double tolerance = 1e-4);

// Normalised images [n, C, S, S] (NCHW, as torch holds them) cut into a model's patches
// [n, L, C·P·P], through OpenCV and datasets::cut_patches as decoded files are.
Tensor patches_from_nchw(Context& ctx, const float* images, int64_t n, int64_t C, int64_t S,
                         int64_t patch_size);

// Every element within atol + rtol·|want|. Reports the first mismatches with their index.
void check_close(const std::string& what, const float* got, const std::vector<double>& want,
                 double rtol, double atol);
void check_close(const std::string& what, const Tensor& got, const std::vector<double>& want,
                 double rtol = 1e-5, double atol = 1e-5);

struct GradTarget {
  std::string name;
  float* value;  // perturbed in place
  int64_t numel;
  const float* analytic;  // the layer's gradient, from one backward with diff_dst = R
};

// max |a - b| over two tensors of the same dims, once the stream has finished.
double max_abs_diff(Context& ctx, const Tensor& a, const Tensor& b);
// Every element of every trainable parameter, or its first `limit` elements (k_norm's bias,
// whose gradient is zero under softmax, left out).
std::vector<GradTarget> parameter_targets(engine::ParameterStore& store, int64_t limit = 1 << 30);
// Every trainable parameter uniform in ±scale; buffers keep their values.
void randomize_parameters(engine::ParameterStore& store, std::mt19937_64& rng, float scale = 0.5f);
// The same, but LayerNorm scales near 1, as trained ones are: a deep float32 forward through
// tiny norm scales leaves finite differences to rounding noise.
void randomize_for_fd(engine::ParameterStore& store, std::mt19937_64& rng, float scale);

// The comparison behind check_gradients, element by element: the central difference must match
// the analytic gradient within 1e-3·max|numeric| + 1e-2·|numeric|, except at a kink (the two
// one-sided differences disagree), where the analytic gradient must lie between them; kinks
// may be at most the fraction `kinks` of the elements (5 %: one of a target under 20). A layer
// with many ReLUs inside (ReLU attention) meets more of them: 40 % is the most any test allows.
struct GradientComparison {
  int64_t elements = 0, skipped = 0, allowed = 0;  // skipped: kinks, compared one-sided
  double scale = 0.0;                              // max |numeric|
  std::vector<int64_t> wrong;                      // indices that fail either test
  bool ok() const { return skipped <= allowed && wrong.empty(); }
};
GradientComparison compare_gradient(const std::vector<float>& analytic,
                                    const std::vector<double>& numeric,
                                    const std::vector<double>& left,
                                    const std::vector<double>& right, double kinks = 0.05);

// For each element x of each target: (L(x+h) - L(x-h)) / 2h with L = Σ forward()·R in double,
// compared with the analytic gradient at tolerance 1e-3·max|numeric| + 1e-2·|numeric|.
void check_gradients(Context& ctx, const std::function<const Tensor&()>& forward, const Tensor& r,
                     const std::vector<GradTarget>& targets, float h = 1e-3f, double kinks = 0.05);

// Same, for a scalar function (a loss) instead of Σ dst·R.
void check_scalar_gradients(const std::function<double()>& loss,
                            const std::vector<GradTarget>& targets, float h = 1e-3f,
                            double kinks = 0.05);

// oneDNN writes gradients, it never accumulates them: runs forward, then backward twice, and
// requires the second pass to leave exactly the first's input and parameter gradients.
void check_backward_overwrites(Context& ctx, const std::function<const Tensor&()>& forward,
                               const std::function<const Tensor&()>& backward,
                               const engine::ParameterStore& store);

}  // namespace check
