#include "engine/tensor.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "engine/error.hpp"

namespace engine {

int64_t product(const Dims& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

Dims row_major_strides(const Dims& dims) {
  Dims strides(dims.size(), 1);
  for (int i = static_cast<int>(dims.size()) - 2; i >= 0; --i)
    strides[i] = strides[i + 1] * dims[i + 1];
  return strides;
}

std::string to_string(const Dims& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

View View::transposed() const {
  View t = *this;
  const size_t n = dims.size();
  require(n >= 2, "View::transposed: needs at least two axes, got " + to_string(dims));
  std::swap(t.dims[n - 1], t.dims[n - 2]);
  std::swap(t.strides[n - 1], t.strides[n - 2]);
  return t;
}

void Tensor::Free::operator()(float* p) const {
  std::free(p);
}

static dnnl::memory plain_memory(const dnnl::engine& eng, float* data, const Dims& dims) {
  return dnnl::memory({dims, dnnl::memory::data_type::f32, row_major_strides(dims)}, eng, data);
}

Tensor::Tensor(const dnnl::engine& eng, Dims dims) : dims_(std::move(dims)) {
  numel_ = product(dims_);
  require(numel_ > 0, "Tensor: empty shape " + to_string(dims_));
  const size_t bytes = (static_cast<size_t>(numel_) * sizeof(float) + 63) / 64 * 64;
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!p) throw std::bad_alloc();
  storage_.reset(p);
  data_ = p;
  std::memset(data_, 0, bytes);
  mem_ = plain_memory(eng, data_, dims_);
}

Tensor Tensor::view(const dnnl::engine& eng, float* data, Dims dims) {
  Tensor t;
  t.dims_ = std::move(dims);
  t.numel_ = product(t.dims_);
  t.data_ = data;
  t.mem_ = plain_memory(eng, data, t.dims_);
  return t;
}

Tensor Tensor::reshaped(Dims dims) const {
  require(product(dims) == numel_,
          "Tensor::reshaped: " + to_string(dims_) + " has no view as " + to_string(dims));
  return view(mem_.get_engine(), data_, std::move(dims));
}

void Tensor::zero() const {
  std::fill_n(data_, numel_, 0.0f);
}

void Tensor::copy_from(const Tensor& other) const {
  require(other.numel_ == numel_,
          "Tensor::copy_from: " + to_string(other.dims_) + " into " + to_string(dims_));
  std::copy_n(other.data_, numel_, data_);
}

}  // namespace engine
