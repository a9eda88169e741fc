#include "vit/patch_embed.hpp"

namespace vit {

using dnnl::memory;

PatchEmbed::PatchEmbed(ParameterStore& store, const VitConfig& c)
    : proj(store, "patch_embed.proj", c.patch_dim(), c.embed_dim, /*bias=*/!c.pre_norm,
           {c.embed_dim, c.in_chans, c.patch_size, c.patch_size}) {
  proj.input_gradient = false;  // the patches are data
}

std::unique_ptr<PatchEmbed::Fused> PatchEmbed::fused(FusedBuild& f, const memory& out) const {
  const int64_t rows = out.get_desc().dims()[0];
  auto p = std::make_unique<Fused>();
  p->input = memory(engine::fused_desc({rows, proj.in_features}, memory::data_type::f32), f.ctx.eng,
                    DNNL_MEMORY_NONE);
  p->input_low = p->input;
  if (f.bf16()) {
    p->input_low =
        f.buffer("patch_embed.input", engine::fused_desc({rows, proj.in_features}, f.low()));
    p->to_low = dnnl::reorder(p->input, p->input_low);
  }
  p->proj = proj.fused(f, p->input_low.get_desc(), out.get_desc());
  p->out = out;
  return p;
}

}  // namespace vit
