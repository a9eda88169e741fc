#include "engine/parameter_store.hpp"

#include <utility>

#include "engine/error.hpp"

namespace engine {

Parameter& ParameterStore::insert(std::string name, Dims dims, bool decay, bool trainable) {
  require(!allocated(), "ParameterStore: '" + name + "' added after allocate()");
  require(find(name) == nullptr, "ParameterStore: duplicate parameter '" + name + "'");
  require(product(dims) > 0, "ParameterStore: '" + name + "' has empty shape " + to_string(dims));
  Parameter& p = params_.emplace_back();
  p.name = std::move(name);
  p.dims = std::move(dims);
  p.decay = decay && trainable;
  p.trainable = trainable;
  p.offset = size_;
  size_ += (product(p.dims) + 15) / 16 * 16;  // 16 floats = 64 bytes
  return p;
}

Parameter& ParameterStore::add(std::string name, Dims dims, bool decay) {
  return insert(std::move(name), std::move(dims), decay, true);
}

Parameter& ParameterStore::add_buffer(std::string name, Dims dims) {
  return insert(std::move(name), std::move(dims), false, false);
}

void ParameterStore::allocate(const dnnl::engine& eng, bool inference_only) {
  require(!allocated(), "ParameterStore: allocate() called twice");
  require(size_ > 0, "ParameterStore: no parameters to allocate");
  values_ = Tensor(eng, {size_});
  for (Parameter& p : params_) p.value = Tensor::view(eng, values_.data() + p.offset, p.dims);
  if (!inference_only) allocate_training(eng);
}

void ParameterStore::allocate_training(const dnnl::engine& eng) {
  require(allocated(), "ParameterStore: allocate_training() before allocate()");
  if (trainable_allocated()) return;
  grads_ = Tensor(eng, {size_});
  adam_m_ = Tensor(eng, {size_});
  adam_v_ = Tensor(eng, {size_});
  for (Parameter& p : params_) p.grad = Tensor::view(eng, grads_.data() + p.offset, p.dims);
}

const Parameter* ParameterStore::find(const std::string& name) const {
  for (const Parameter& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

Parameter& ParameterStore::operator[](const std::string& name) {
  const Parameter* p = find(name);
  require(p != nullptr, "ParameterStore: no parameter named '" + name + "'");
  return const_cast<Parameter&>(*p);
}

int64_t ParameterStore::num_trainable() const {
  int64_t n = 0;
  for (const Parameter& p : params_)
    if (p.trainable) n += product(p.dims);
  return n;
}

}  // namespace engine
