#include "vit/attention.hpp"

#include <map>

#include "engine/error.hpp"
#include "vit/multi_head_attention.hpp"

namespace vit {

namespace {

struct Variant {
  AttentionFactory create;
  AttentionTraits traits;
};

std::map<std::string, Variant>& registry() {
  // The built-in variants, one line each.
  static std::map<std::string, Variant> table = {
      {"attention", {MultiHeadAttention::create, MultiHeadAttention::traits()}},
  };
  return table;
}

}  // namespace

const Tensor& Attention::probabilities(Context&) {
  throw engine::Error("this attention variant does not expose its attention probabilities");
}

bool register_attention(const std::string& name, AttentionFactory factory, AttentionTraits traits) {
  return !name.empty() &&
         registry().emplace(name, Variant{std::move(factory), std::move(traits)}).second;
}

void check_attention(const VitConfig& config) {
  auto it = registry().find(config.attn_layer);
  if (it != registry().end() && it->second.traits.check) it->second.traits.check(config);
}

double attention_flops(const VitConfig& config) {
  auto it = registry().find(config.attn_layer);
  if (it != registry().end() && it->second.traits.flops) return it->second.traits.flops(config);
  return MultiHeadAttention::traits().flops(config);
}

bool attention_registered(const std::string& name) {
  return registry().count(name) > 0;
}

std::string attention_names() {
  std::string names;
  for (const auto& [name, factory] : registry()) names += (names.empty() ? "" : ", ") + name;
  return names;
}

std::unique_ptr<Attention> make_attention(ParameterStore& store, const std::string& prefix,
                                          const VitConfig& config) {
  auto it = registry().find(config.attn_layer);
  engine::require(it != registry().end(), "no attention named '" + config.attn_layer +
                                              "' (known: " + attention_names() + ")");
  return it->second.create(store, prefix, config);
}

}  // namespace vit
