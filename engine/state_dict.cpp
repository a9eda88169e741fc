#include "engine/state_dict.hpp"

#include "engine/error.hpp"

namespace engine {

void save_state_dict(const std::filesystem::path& path, const ParameterStore& store,
                     const std::map<std::string, std::string>& metadata,
                     const std::vector<TensorToWrite>& extra) {
  std::vector<TensorToWrite> tensors;
  for (const Parameter& p : store.parameters())
    tensors.push_back({p.name, "F32", p.dims, p.value.data()});
  tensors.insert(tensors.end(), extra.begin(), extra.end());
  write_safetensors(path, tensors, metadata);
}

void check_state_dict(const ParameterStore& store, const SafetensorsFile& file, bool strict,
                      const std::vector<std::string>& ignore_prefixes) {
  const std::string where = "'" + file.path().string() + "'";
  for (const Parameter& p : store.parameters()) {
    if (!file.contains(p.name))
      throw Error(where + ": no tensor '" + p.name + "' (a model of another architecture?)");
    const SafetensorsFile::Entry& e = file.entries().at(p.name);
    if (!SafetensorsFile::is_float(e.dtype))
      throw Error(where + ": tensor '" + p.name + "' is " + e.dtype +
                  ", expected F32, F16 or BF16");
    if (e.shape != p.dims)
      throw Error(where + ": tensor '" + p.name + "' has shape " + to_string(e.shape) +
                  ", the model expects " + to_string(p.dims));
  }
  if (!strict) return;
  for (const auto& [name, entry] : file.entries()) {
    bool ignored = false;
    for (const std::string& prefix : ignore_prefixes) ignored |= name.starts_with(prefix);
    if (!ignored && store.find(name) == nullptr)
      throw Error(where + ": unexpected tensor '" + name + "' (a model of another architecture?)");
  }
}

void load_state_dict(ParameterStore& store, const SafetensorsFile& file, bool strict,
                     const std::vector<std::string>& ignore_prefixes) {
  check_state_dict(store, file, strict, ignore_prefixes);
  for (Parameter& p : store.parameters()) file.read_f32(p.name, p.dims, p.value.data());
  store.mark_changed();
}

}  // namespace engine
