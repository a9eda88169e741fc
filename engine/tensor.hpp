// Tensor: dims plus an f32 buffer, owned or viewed, with a oneDNN memory over it in plain
// row-major layout. View: a strided window on f32 data, for transposes and attention heads
// that oneDNN reads and writes in place instead of copying.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <oneapi/dnnl/dnnl.hpp>

namespace engine {

using Dims = dnnl::memory::dims;

int64_t product(const Dims& dims);
Dims row_major_strides(const Dims& dims);
std::string to_string(const Dims& dims);  // "[2, 3, 4]"

struct View {
  float* data = nullptr;
  Dims dims;
  Dims strides;

  dnnl::memory::desc desc() const {
    return dnnl::memory::desc(dims, dnnl::memory::data_type::f32, strides);
  }
  // Swaps the last two axes: a transpose without a copy.
  View transposed() const;
};

class Tensor {
 public:
  Tensor() = default;
  // Owning, zero-filled, 64-byte aligned (a cache line, an AVX-512 register).
  Tensor(const dnnl::engine& eng, Dims dims);
  // Non-owning: the caller keeps `data` alive for as long as the view is used.
  static Tensor view(const dnnl::engine& eng, float* data, Dims dims);

  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  const Dims& dims() const { return dims_; }
  int64_t dim(int i) const { return dims_[i < 0 ? dims_.size() + i : i]; }
  int64_t numel() const { return numel_; }
  bool empty() const { return data_ == nullptr; }
  float* data() const { return data_; }
  float& operator[](int64_t i) const { return data_[i]; }
  const dnnl::memory& mem() const { return mem_; }
  dnnl::memory::desc desc() const { return mem_.get_desc(); }

  View as_view() const { return View{data_, dims_, row_major_strides(dims_)}; }
  // The same data under other dims with the same element count.
  Tensor reshaped(Dims dims) const;
  void zero() const;
  void copy_from(const Tensor& other) const;  // same element count required

 private:
  struct Free {
    void operator()(float* p) const;
  };
  Dims dims_;
  int64_t numel_ = 0;
  std::unique_ptr<float[], Free> storage_;
  float* data_ = nullptr;
  dnnl::memory mem_;
};

}  // namespace engine
