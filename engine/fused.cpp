#include "engine/fused.hpp"

#include <algorithm>

#include "engine/error.hpp"

namespace engine {

using dnnl::memory;

memory::desc fused_desc(const Dims& dims, memory::data_type type, const Dims& strides) {
  return memory::desc(dims, type, strides.empty() ? row_major_strides(dims) : strides);
}

memory fused_view(const dnnl::engine& eng, const memory::desc& md, const memory& base,
                  int64_t offset) {
  char* data = static_cast<char*>(base.get_data_handle());
  return memory(md, eng, data + offset * int64_t(memory::data_type_size(md.data_type())));
}

memory FusedBuild::buffer(const std::string& slot, const memory::desc& md) {
  auto it = buffers.find(slot);
  if (it == buffers.end()) {
    memory m;
    const size_t bytes = md.get_size();
    if (shared && capacity >= images && images > 0) {
      auto s = shared->find(slot);
      if (s == shared->end()) {
        // Sized per image for `capacity` images: what the largest plan's slot needs, when it
        // grows with the batch (the pages a smaller plan never touches stay unmapped).
        const int64_t want = int64_t((bytes + size_t(images) - 1) / size_t(images)) * capacity;
        s = shared->emplace(slot, memory(fused_desc({want}, memory::data_type::u8), ctx.eng)).first;
      }
      if (s->second.get_desc().get_size() >= bytes)
        m = memory(md, ctx.eng, s->second.get_data_handle());
    }
    it = buffers.emplace(slot, m ? m : memory(md, ctx.eng)).first;
  }
  require(it->second.get_desc() == md, "FusedBuild: buffer '" + slot + "' asked in two layouts");
  return it->second;
}

namespace {

// What makes two matmul primitive descriptors the same primitive: the operand layouts (src,
// weights, bias, dst) and the attributes our pieces set (output scales, post-ops).
std::string matmul_key(const dnnl::matmul::primitive_desc& pd) {
  std::string key;
  auto add = [&](const void* bytes, size_t n) { key.append(static_cast<const char*>(bytes), n); };
  for (const memory::desc& md : {pd.src_desc(), pd.weights_desc(), pd.bias_desc(), pd.dst_desc()})
    add(&md.data, sizeof md.data);
  const dnnl::primitive_attr attr = pd.get_primitive_attr();
  int mask = 0;
  std::vector<float> scales;
  attr.get_output_scales(mask, scales);
  add(&mask, sizeof mask);
  add(scales.data(), scales.size() * sizeof(float));
  const dnnl::post_ops ops = attr.get_post_ops();
  for (int i = 0; i < ops.len(); ++i) {
    const dnnl::primitive::kind kind = ops.kind(i);
    add(&kind, sizeof kind);
    if (kind == dnnl::primitive::kind::sum) {
      float scale = 0;
      ops.get_params_sum(i, scale);
      add(&scale, sizeof scale);
    } else if (kind == dnnl::primitive::kind::eltwise) {
      float scale = 0, alpha = 0, beta = 0;
      dnnl::algorithm alg;
      ops.get_params_eltwise(i, scale, alg, alpha, beta);
      for (float v : {scale, alpha, beta}) add(&v, sizeof v);
      add(&alg, sizeof alg);
    } else if (kind == dnnl::primitive::kind::binary) {
      dnnl::algorithm alg;
      memory::desc src1;
      ops.get_params_binary(i, alg, src1);
      add(&alg, sizeof alg);
      add(&src1.data, sizeof src1.data);
    } else {
      throw Error("FusedBuild: a matmul post-op of a kind not shared yet");
    }
  }
  return key;
}

}  // namespace

dnnl::matmul FusedBuild::matmul(const dnnl::matmul::primitive_desc& pd) {
  const std::string key = matmul_key(pd);
  for (const auto& [k, prim] : matmuls)
    if (k == key) return prim;
  matmuls.emplace_back(key, dnnl::matmul(pd));
  return matmuls.back().second;
}

memory PackedWeights::find_or_add(Context& ctx, Entry e) {
  for (const Entry& x : entries_)
    if (x.source == e.source && x.first == e.first && x.rows == e.rows && x.scale == e.scale &&
        x.tag == e.tag && x.out_scale == e.out_scale && x.md == e.md)
      return x.mem;
  e.mem = memory(e.md, ctx.eng);
  entries_.push_back(std::move(e));
  return entries_.back().mem;
}

memory PackedWeights::linear(Context& ctx, const Parameter& weight, const memory::desc& md,
                             int64_t first, int64_t rows, float scale, const Parameter* out_scale) {
  const int64_t out = weight.dims[0], in = weight.value.numel() / out;
  if (rows < 0) rows = out;
  require(first >= 0 && first + rows <= out,
          "PackedWeights: rows out of range of '" + weight.name + "'");
  require(!out_scale || out_scale->value.numel() >= first + rows,
          "PackedWeights: '" + weight.name + "' has more output features than its scale");
  const float* values = weight.value.data() + first * in;
  // torch's Linear weight [out, in] is Wᵀ [in, out] with swapped strides; a reorder converts it
  // to the packed layout (and type), multiplying by `scale` (per column: by the scale vector)
  // on the way.
  auto fill = [values, in, first, rows, scale, out_scale](Context& c, const memory& packed_memory) {
    memory packed = packed_memory;  // a handle: the same memory
    memory src(fused_desc({in, rows}, memory::data_type::f32, {1, in}), c.eng,
               const_cast<float*>(values));
    dnnl::primitive_attr attr;
    if (out_scale) {
      std::vector<float> scales(static_cast<size_t>(rows));
      for (int64_t j = 0; j < rows; ++j) scales[j] = scale * out_scale->value[first + j];
      attr.set_output_scales(1 << 1, scales);
    } else {
      attr.set_output_scales(0, {scale});
    }
    dnnl::reorder(dnnl::reorder::primitive_desc(src, packed, attr)).execute(c.strm, src, packed);
  };
  return find_or_add(ctx, {&weight, first, rows, scale, -1, out_scale, md, {}, fill, std::nullopt});
}

memory PackedWeights::conv(Context& ctx, const Parameter& weight, const memory::desc& md,
                           std::function<std::vector<float>()> scales) {
  require(weight.dims.size() == 4, "PackedWeights: '" + weight.name + "' is not a conv weight");
  const float* values = weight.value.data();
  const memory::desc oihw(weight.dims, memory::data_type::f32, memory::format_tag::oihw);
  auto fill = [values, oihw, scales = std::move(scales)](Context& c, const memory& packed_memory) {
    memory packed = packed_memory;
    memory src(oihw, c.eng, const_cast<float*>(values));
    dnnl::primitive_attr attr;
    attr.set_output_scales(1 << 0, scales());  // per output channel
    dnnl::reorder(dnnl::reorder::primitive_desc(src, packed, attr)).execute(c.strm, src, packed);
  };
  return find_or_add(ctx, {&weight, 0, 0, 1.0f, -3, nullptr, md, {}, fill, std::nullopt});
}

memory PackedWeights::vector(Context& ctx, const Parameter& p, int64_t first, int64_t n,
                             float scale, const Parameter* out_scale) {
  require(first >= 0 && first + n <= p.value.numel(),
          "PackedWeights: elements out of range of '" + p.name + "'");
  require(!out_scale || out_scale->value.numel() >= first + n,
          "PackedWeights: '" + p.name + "' has more elements than its scale");
  const memory::desc md = fused_desc({1, n}, memory::data_type::f32);
  if (scale == 1.0f && !out_scale) return memory(md, ctx.eng, p.value.data() + first);
  const float* values = p.value.data() + first;
  const float* scales = out_scale ? out_scale->value.data() + first : nullptr;
  auto fill = [values, scales, n, scale](Context&, const memory& m) {
    float* dst = static_cast<float*>(m.get_data_handle());
    for (int64_t i = 0; i < n; ++i) dst[i] = values[i] * scale * (scales ? scales[i] : 1.0f);
  };
  return find_or_add(ctx, {&p, first, n, scale, -2, out_scale, md, {}, fill, std::nullopt});
}

memory PackedWeights::derived(Context& ctx, const void* owner, int tag, const memory::desc& md,
                              std::function<void(float*)> fill) {
  require(tag >= 0, "PackedWeights: a derived table's tag must not be negative");
  auto fill_memory = [fill = std::move(fill)](Context&, const memory& m) {
    fill(static_cast<float*>(m.get_data_handle()));
  };
  return find_or_add(ctx, {owner, 0, 0, 1.0f, tag, nullptr, md, {}, fill_memory, std::nullopt});
}

void PackedWeights::refresh(Context& ctx) {
  bool filled = false;
  for (Entry& e : entries_) {
    if (e.version == store_.version()) continue;
    e.fill(ctx, e.mem);
    e.version = store_.version();
    filled = true;
  }
  if (filled) ctx.wait();
}

int64_t PackedWeights::weight_bytes() const {
  int64_t bytes = 0;
  for (const Entry& e : entries_)
    if (e.tag < 0) bytes += int64_t(e.md.get_size());
  return bytes;
}

}  // namespace engine
