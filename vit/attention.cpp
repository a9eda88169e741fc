#include "vit/attention.hpp"

#include <map>

#include "engine/error.hpp"
#include "vit/multi_head_attention.hpp"

namespace vit {

namespace {

std::map<std::string, AttentionFactory>& registry() {
  // The built-in variants, one line each.
  static std::map<std::string, AttentionFactory> table = {
      {"attention", MultiHeadAttention::create},
  };
  return table;
}

}  // namespace

bool register_attention(const std::string& name, AttentionFactory factory) {
  return !name.empty() && registry().emplace(name, std::move(factory)).second;
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
  return it->second(store, prefix, config);
}

}  // namespace vit
