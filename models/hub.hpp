// Checkpoints as the Hugging Face hub ships them, read without Python: a timm snapshot folder
// (model.safetensors and a config.json naming timm's `architecture`, with its pretrained_cfg)
// or a transformers ViT (ViTForImageClassification / ViTModel: model.safetensors, config.json
// with model_type "vit", preprocessor_config.json). The config becomes a VitConfig, the
// preprocessing a Preprocess, the labels the classes; every tensor the model needs is checked
// in the file, by name, dtype and shape, before the model's memory is allocated.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "engine/safetensors.hpp"
#include "models/registry.hpp"
#include "vit/config.hpp"

namespace models {

struct HubCheckpoint {
  std::filesystem::path folder, weights;  // the snapshot folder and its model.safetensors
  std::string source;  // "timm vit_small_patch16_224" or "transformers ViTForImageClassification"
  vit::VitConfig config;
  datasets::Preprocess preprocess;
  std::vector<std::string> classes;  // empty for a model without a head
  // Our parameter name -> the file's tensors that make it, concatenated along the first axis
  // (Hugging Face's query, key and value become our qkv); one name for everything else.
  std::map<std::string, std::vector<std::string>> tensors;
  std::vector<std::string> ignored;  // file tensors the model does not use (HF's pooler)
};

// Whether `path` is, or lies in, a hub snapshot: a folder with config.json, or a
// model.safetensors beside one that is not a vit model file.
bool is_hub_checkpoint(const std::filesystem::path& path);

// Reads config.json (and preprocessor_config.json) of the folder of `path`: throws
// engine::Error naming the file and the key for an architecture or a setting that vit does not
// implement. Reads no tensor data.
HubCheckpoint read_hub_checkpoint(const std::filesystem::path& path);

// The checkpoint's model, built, checked against model.safetensors, allocated and loaded.
LoadedModel load_hub_model(const std::filesystem::path& path, Context& ctx,
                           const LoadOptions& options = {});

// Reads every parameter of `store` (allocated) from `file`: from tensors[name] (several
// concatenated along the first axis) or the tensor of its own name. A ViT's pos_embed is
// resampled from the file's grid (file_config) to the model's (config) when they differ. The
// shapes must have been checked for file_config.
void read_vit_weights(engine::ParameterStore& store, const engine::SafetensorsFile& file,
                      const std::map<std::string, std::vector<std::string>>& tensors,
                      const vit::VitConfig& file_config, const vit::VitConfig& config,
                      bool antialias);

// The config at another image size, checked (the patch size must divide it).
vit::VitConfig at_image_size(const vit::VitConfig& c, int64_t img_size);

// A timm architecture name (vit_base_patch16_224, deit_small_distilled_patch16_224,
// deit3_base_patch16_224, vit_small_patch14_reg4_dinov2, vit_base_patch16_clip_224, ...) as a
// VitConfig at its default image size; throws naming the part not understood.
vit::VitConfig timm_architecture(const std::string& name);

// ImageNet-1k's class names in index order (torchvision's list), for 1000-class checkpoints
// that carry none.
const std::vector<std::string>& imagenet1k_classes();

}  // namespace models
