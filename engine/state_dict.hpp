// A ParameterStore to and from a safetensors file, by name: every parameter and buffer under
// its state-dict key.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "engine/parameter_store.hpp"
#include "engine/safetensors.hpp"

namespace engine {

// Writes every parameter and buffer (F32) plus `extra` tensors, atomically.
void save_state_dict(const std::filesystem::path& path, const ParameterStore& store,
                     const std::map<std::string, std::string>& metadata,
                     const std::vector<TensorToWrite>& extra = {});

// Checks, without reading any data, that the file holds every parameter and buffer of the
// store as a float tensor (F32, F16 or BF16) of the registered shape (the error names the tensor
// and both shapes) and, with `strict`, nothing else but names starting with one of
// `ignore_prefixes`. Works on a store not yet allocated, so a model file's config is checked
// against its tensors before the model's memory is allocated: a hostile config cannot ask for more
// than the file holds.
void check_state_dict(const ParameterStore& store, const SafetensorsFile& file, bool strict,
                      const std::vector<std::string>& ignore_prefixes = {});

// Reads every parameter and buffer of the store from the file, checking each shape. With
// `strict`, a tensor in the file that the store does not have is an error too (a file of
// another architecture); names starting with one of `ignore_prefixes` are skipped.
void load_state_dict(ParameterStore& store, const SafetensorsFile& file, bool strict,
                     const std::vector<std::string>& ignore_prefixes = {});

}  // namespace engine
