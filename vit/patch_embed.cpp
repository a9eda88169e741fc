#include "vit/patch_embed.hpp"

#include <cmath>

namespace vit {

using dnnl::memory;
using engine::Layout;

StemStage::StemStage(ParameterStore& store, const std::string& name, int64_t in, int64_t out,
                     int64_t stride)
    : conv(store, name + ".conv", in, out, 3, stride, 1, /*bias=*/false, Layout::nhwc),
      bn(store, name + ".bn", out, 1e-5f, 0.1f, Layout::nhwc) {
  bn.fuse_relu = true;  // timm's ConvNormAct: conv, norm, act
}

static std::vector<std::unique_ptr<StemStage>> make_stem(ParameterStore& store,
                                                         const VitConfig& c) {
  std::vector<std::unique_ptr<StemStage>> stages;
  int64_t in = c.in_chans;
  for (size_t i = 0; i < c.stem_channels.size(); ++i) {
    stages.push_back(std::make_unique<StemStage>(store, "patch_embed.backbone." + std::to_string(i),
                                                 in, c.stem_channels[i], c.stem_strides[i]));
    in = c.stem_channels[i];
  }
  if (!stages.empty()) stages.front()->conv.input_gradient = false;  // the image is data
  return stages;
}

static engine::Linear make_proj(ParameterStore& store, const VitConfig& c) {
  if (!c.conv_stem())
    return engine::Linear(store, "patch_embed.proj", c.patch_dim(), c.embed_dim,
                          /*bias=*/!c.pre_norm,
                          {c.embed_dim, c.in_chans, c.patch_size, c.patch_size});
  const int64_t in = c.stem_channels.back();
  return engine::Linear(store,
                        "patch_embed.backbone." + std::to_string(c.stem_channels.size()) + ".conv",
                        in, c.embed_dim, /*bias=*/true, {c.embed_dim, in, 1, 1});
}

PatchEmbed::PatchEmbed(ParameterStore& store, const VitConfig& c)
    : config(c), backbone(make_stem(store, c)), proj(make_proj(store, c)) {
  proj.input_gradient = c.conv_stem();  // without a stem the patches are data
}

void PatchEmbed::train(bool on) {
  for (auto& s : backbone) s->bn.training = on;
}

void PatchEmbed::init_weights(Context& ctx) {
  for (auto& s : backbone) {
    s->conv.reset_parameters(ctx);
    s->bn.reset_parameters();
  }
  proj.reset_parameters(ctx);
}

const Tensor& PatchEmbed::forward(Context& ctx, const Tensor& input) {
  const int64_t B = input.dims().empty() ? 0 : input.dim(0);
  engine::check_same_dims(input.dims(), config.input_dims(B), "PatchEmbed",
                          config.conv_stem() ? "images" : "patches");
  if (!config.conv_stem()) return proj.forward(ctx, input);
  const Tensor* x = &to_nhwc_(ctx, input);
  for (auto& s : backbone) x = &s->bn.forward(ctx, s->conv.forward(ctx, *x));  // ReLU fused
  return proj.forward(ctx, x->reshaped({B, config.num_patches(), x->dim(3)}));
}

void PatchEmbed::backward(Context& ctx, const Tensor& diff_dst) {
  const Tensor& d_map = proj.backward(ctx, diff_dst);
  if (!config.conv_stem()) return;
  const int64_t B = diff_dst.dim(0), side = config.grid();
  Tensor d = d_map.reshaped({B, side, side, d_map.dim(2)});
  const Tensor* dx = &d;
  for (auto it = backbone.rbegin(); it != backbone.rend(); ++it)
    dx = &(*it)->conv.backward(ctx, (*it)->bn.backward(ctx, *dx));
}

void PatchEmbed::Fused::run(dnnl::stream& s) {
  if (to_nhwc) to_nhwc.execute(s, input, input_nhwc);
  memory* x = to_nhwc ? &input_nhwc : &input;
  for (Stage& st : stages) {
    st.conv.execute(s, {{DNNL_ARG_SRC, *x},
                        {DNNL_ARG_WEIGHTS, st.weight},
                        {DNNL_ARG_BIAS, st.bias},
                        {DNNL_ARG_DST, st.dst}});
    x = &st.dst;
  }
  if (to_low) to_low.execute(s, *x, input_low);
  proj.run(s, input_low, out);
}

std::unique_ptr<PatchEmbed::Fused> PatchEmbed::fused(FusedBuild& f, const memory& out) const {
  const int64_t rows = out.get_desc().dims()[0];  // B·L
  const memory::data_type f32 = memory::data_type::f32;
  auto p = std::make_unique<Fused>();
  p->out = out;
  // The matmul's f32 input [B·L, in]: the patches, or the stem's last map [B, h, w, C], which is
  // [B·L, C] row-major; in bf16 a copy.
  auto project = [&](const memory& map) {
    p->input_low = map;
    if (f.bf16()) {
      p->input_low =
          f.buffer("patch_embed.input", engine::fused_desc({rows, proj.in_features}, f.low()));
      p->to_low = dnnl::reorder(map, p->input_low);
    }
    p->proj = proj.fused(f, p->input_low.get_desc(), out.get_desc());
  };
  if (!config.conv_stem()) {
    p->input =
        memory(engine::fused_desc({rows, proj.in_features}, f32), f.ctx.eng, DNNL_MEMORY_NONE);
    project(p->input);
    return p;
  }
  const int64_t B = f.images, C = config.in_chans, S = config.img_size;
  const auto image = [&](int64_t c, int64_t side, memory::format_tag tag) {
    return memory::desc({B, c, side, side}, f32, tag);
  };
  p->input = memory(image(C, S, memory::format_tag::nchw), f.ctx.eng, DNNL_MEMORY_NONE);
  memory x = p->input;
  if (C == 1) {
    x = memory(image(1, S, memory::format_tag::nhwc), f.ctx.eng, DNNL_MEMORY_NONE);
    p->input = x;  // the same bytes
  } else {
    p->input_nhwc = f.buffer("patch_embed.nhwc", image(C, S, memory::format_tag::nhwc));
    p->to_nhwc = dnnl::reorder(p->input, p->input_nhwc);
    x = p->input_nhwc;
  }
  int64_t side = S, in = C;
  for (size_t i = 0; i < backbone.size(); ++i) {
    const engine::Conv2d& conv = backbone[i]->conv;
    const engine::BatchNorm2d& bn = backbone[i]->bn;
    const int64_t out_c = conv.out_channels;
    side = (side + 2 * conv.padding - conv.kernel_size) / conv.stride + 1;
    const memory::desc dst_md = image(out_c, side, memory::format_tag::nhwc);
    const memory::desc w_any({out_c, in, conv.kernel_size, conv.kernel_size}, f32,
                             memory::format_tag::any);
    dnnl::post_ops relu;
    relu.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(relu);
    const dnnl::convolution_forward::primitive_desc pd({dnnl::prop_kind::forward_inference,
                                                        dnnl::algorithm::convolution_direct,
                                                        x.get_desc(),
                                                        w_any,
                                                        engine::fused_desc({out_c}, f32),
                                                        dst_md,
                                                        {conv.stride, conv.stride},
                                                        {conv.padding, conv.padding},
                                                        {conv.padding, conv.padding}},
                                                       attr, f.ctx.eng);
    Fused::Stage st;
    st.conv = dnnl::convolution_forward(pd);
    // The evaluation-mode BatchNorm is y = a·conv(x) + b per channel, a = γ/√(σ² + ε) and
    // b = β − a·μ: folded into the weights (each output channel times a) and a bias, both
    // recomputed from the store whenever it changes.
    auto scale = [&bn](int64_t o) {
      return bn.weight->value[o] / std::sqrt(bn.running_var->value[o] + bn.eps);
    };
    st.weight = f.packed.conv(f.ctx, *conv.weight, pd.weights_desc(), [scale, out_c] {
      std::vector<float> a(static_cast<size_t>(out_c));
      for (int64_t o = 0; o < out_c; ++o) a[o] = scale(o);
      return a;
    });
    st.bias = f.packed.derived(f.ctx, &bn, 0, engine::fused_desc({out_c}, f32),
                               [scale, &bn, out_c](float* b) {
                                 for (int64_t o = 0; o < out_c; ++o)
                                   b[o] = bn.bias->value[o] - scale(o) * bn.running_mean->value[o];
                               });
    st.dst = f.buffer("patch_embed.stage." + std::to_string(i), dst_md);
    x = st.dst;
    p->stages.push_back(std::move(st));
    in = out_c;
  }
  project(memory(engine::fused_desc({rows, in}, f32), f.ctx.eng, x.get_data_handle()));
  return p;
}

}  // namespace vit
