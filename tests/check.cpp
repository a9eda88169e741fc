#include "check.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include <doctest/doctest.h>
#include <opencv2/core.hpp>

#include "datasets/preprocess.hpp"

namespace check {

void check_close_to_largest(const Tensor& got, const std::vector<float>& want,
                            const std::string& what, double tolerance) {
  REQUIRE(got.numel() == int64_t(want.size()));
  double max_err = 0, max_ref = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_err = std::max(max_err, std::abs(double(got[int64_t(i)]) - want[i]));
    max_ref = std::max(max_ref, std::abs(double(want[i])));
  }
  INFO(what << ": max |ours - torch| = " << max_err << ", max |torch| = " << max_ref);
  CHECK(max_ref > 0.1);
  CHECK(max_err <= tolerance * max_ref);
}

Tensor patches_from_nchw(Context& ctx, const float* images, int64_t n, int64_t C, int64_t S,
                         int64_t patch_size) {
  const int64_t L = (S / patch_size) * (S / patch_size), patch_dim = C * patch_size * patch_size;
  Tensor patches(ctx.eng, {n, L, patch_dim});
  for (int64_t i = 0; i < n; ++i) {
    std::vector<cv::Mat> planes;
    for (int64_t c = 0; c < C; ++c)
      planes.emplace_back(int(S), int(S), CV_32F, const_cast<float*>(images) + (i * C + c) * S * S);
    cv::Mat hwc;
    cv::merge(planes, hwc);
    datasets::cut_patches(hwc, patch_size, patches.data() + i * L * patch_dim);
  }
  return patches;
}

void randomize(const Tensor& t, std::mt19937_64& rng, float low, float high) {
  std::uniform_real_distribution<float> dist(low, high);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = dist(rng);
}

Tensor random_tensor(Context& ctx, const Dims& dims, std::mt19937_64& rng, float low, float high) {
  Tensor t(ctx.eng, dims);
  randomize(t, rng, low, high);
  return t;
}

std::vector<float> copy_of(const Tensor& t) {
  return copy_of(t.data(), t.numel());
}
std::vector<float> copy_of(const float* data, int64_t n) {
  return {data, data + n};
}

double weighted_sum(const Tensor& dst, const Tensor& r) {
  REQUIRE(dst.numel() == r.numel());
  double s = 0.0;
  for (int64_t i = 0; i < dst.numel(); ++i) s += static_cast<double>(dst[i]) * r[i];
  return s;
}

void check_close(const std::string& what, const float* got, const std::vector<double>& want,
                 double rtol, double atol) {
  int bad = 0;
  std::ostringstream report;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= atol + rtol * std::abs(want[i]))) {
      if (bad < 5) report << "\n  [" << i << "] got " << got[i] << ", want " << want[i];
      ++bad;
    }
  }
  INFO(what << ": " << bad << " of " << want.size() << " elements differ" << report.str());
  CHECK(bad == 0);
}

void check_close(const std::string& what, const Tensor& got, const std::vector<double>& want,
                 double rtol, double atol) {
  REQUIRE_MESSAGE(got.numel() == static_cast<int64_t>(want.size()), what << ": size differs");
  check_close(what, got.data(), want, rtol, atol);
}

// A point where the one-sided differences disagree (a ReLU input crossing its kink within the
// step, or curvature too high for the step) has no central difference worth comparing with:
// there the analytic gradient must lie between the two one-sided differences instead. Such
// points may be at most a fraction of a target's elements (5 %: one of a target under 20), never
// all, so a wrong gradient cannot hide there.
GradientComparison compare_gradient(const std::vector<float>& analytic,
                                    const std::vector<double>& numeric,
                                    const std::vector<double>& left,
                                    const std::vector<double>& right, double kinks) {
  GradientComparison c;
  c.elements = static_cast<int64_t>(numeric.size());
  c.allowed = std::min(c.elements - 1,
                       std::max<int64_t>(1, int64_t(std::ceil(kinks * double(c.elements)))));
  for (double g : numeric) c.scale = std::max(c.scale, std::abs(g));
  for (int64_t i = 0; i < c.elements; ++i) {
    const double tol = 1e-3 * c.scale + 1e-2 * std::abs(numeric[i]);
    if (std::abs(analytic[i] - numeric[i]) <= tol) continue;
    if (std::abs(left[i] - right[i]) > tol) {  // a kink: between the one-sided differences?
      ++c.skipped;
      const double lo = std::min(left[i], right[i]) - tol, hi = std::max(left[i], right[i]) + tol;
      if (analytic[i] < lo || analytic[i] > hi) c.wrong.push_back(i);
    } else {
      c.wrong.push_back(i);
    }
  }
  return c;
}

static void compare(const GradTarget& t, const std::vector<float>& analytic,
                    const std::vector<double>& numeric, const std::vector<double>& left,
                    const std::vector<double>& right, double kinks) {
  const GradientComparison c = compare_gradient(analytic, numeric, left, right, kinks);
  // A gradient that is zero everywhere checks nothing: every target must carry signal.
  REQUIRE_MESSAGE(c.scale > 1e-6, t.name << ": numeric gradient is zero everywhere");
  std::ostringstream report;
  for (size_t k = 0; k < std::min<size_t>(c.wrong.size(), 5); ++k) {
    const int64_t i = c.wrong[k];
    report << "\n  [" << i << "] analytic " << analytic[size_t(i)] << ", central "
           << numeric[size_t(i)] << ", one-sided " << left[size_t(i)] << " and "
           << right[size_t(i)];
  }
  INFO(t.name << ": " << c.skipped << " of " << c.elements << " elements at a kink (at most "
              << c.allowed << "), " << c.wrong.size() << " wrong" << report.str());
  CHECK(c.skipped <= c.allowed);
  CHECK(c.wrong.empty());
}

void check_gradients(Context& ctx, const std::function<const Tensor&()>& forward, const Tensor& r,
                     const std::vector<GradTarget>& targets, float h, double kinks) {
  check_scalar_gradients(
      [&] {
        const Tensor& dst = forward();
        ctx.wait();
        return weighted_sum(dst, r);
      },
      targets, h, kinks);
}

void check_scalar_gradients(const std::function<double()>& loss,
                            const std::vector<GradTarget>& targets, float h, double kinks) {
  // Copy first: the forward passes below must not be able to change what is checked.
  std::vector<std::vector<float>> analytic;
  for (const GradTarget& t : targets) analytic.push_back(copy_of(t.analytic, t.numel));
  const double base = loss();
  for (size_t k = 0; k < targets.size(); ++k) {
    const GradTarget& t = targets[k];
    std::vector<double> numeric(t.numel), left(t.numel), right(t.numel);
    for (int64_t i = 0; i < t.numel; ++i) {
      const float saved = t.value[i];
      t.value[i] = saved + h;
      const double plus = loss();
      t.value[i] = saved - h;
      const double minus = loss();
      t.value[i] = saved;
      // The steps actually taken in float, not the nominal h.
      const double up = static_cast<double>(saved + h) - saved;
      const double down = saved - static_cast<double>(saved - h);
      numeric[i] = (plus - minus) / (up + down);
      right[i] = (plus - base) / up;
      left[i] = (base - minus) / down;
    }
    compare(t, analytic[k], numeric, left, right, kinks);
  }
}

void check_backward_overwrites(Context& ctx, const std::function<const Tensor&()>& forward,
                               const std::function<const Tensor&()>& backward,
                               const engine::ParameterStore& store) {
  forward();
  const std::vector<float> diff_src = copy_of(backward());
  ctx.wait();
  const std::vector<float> grads = copy_of(store.grads(), store.size());
  const Tensor& again = backward();
  ctx.wait();
  CHECK(copy_of(again) == diff_src);
  CHECK(copy_of(store.grads(), store.size()) == grads);
}

double max_abs_diff(Context& ctx, const Tensor& a, const Tensor& b) {
  ctx.wait();
  REQUIRE(a.dims() == b.dims());
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, double(std::abs(a[i] - b[i])));
  return m;
}

std::vector<GradTarget> parameter_targets(engine::ParameterStore& store, int64_t limit) {
  std::vector<GradTarget> targets;
  for (engine::Parameter& p : store.parameters())
    if (p.trainable && !p.name.ends_with(".attn.k_norm.bias"))
      targets.push_back({p.name, p.value.data(), std::min(limit, p.value.numel()), p.grad.data()});
  return targets;
}

void randomize_parameters(engine::ParameterStore& store, std::mt19937_64& rng, float scale) {
  for (engine::Parameter& p : store.parameters())
    if (p.trainable) randomize(p.value, rng, -scale, scale);
}

void randomize_for_fd(engine::ParameterStore& store, std::mt19937_64& rng, float scale) {
  randomize_parameters(store, rng, scale);
  for (engine::Parameter& p : store.parameters())
    if (p.trainable && p.name.ends_with("weight") &&
        (p.name.find("norm") != std::string::npos || p.name.find(".bn.") != std::string::npos))
      randomize(p.value, rng, 0.5f, 1.5f);
}

}  // namespace check
