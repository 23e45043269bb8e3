// Finding the files of a diffusers pipeline folder: model_index.json, component folders,
// and their weights, as diffusers and transformers name them:
//   <dir>/diffusion_pytorch_model[.<variant>].safetensors      (diffusers models)
//   <dir>/model[.<variant>].safetensors                        (transformers models)
//   ... or a sharded set listed under "weight_map" in "<stem>.safetensors.index.json"
//   (with a variant: "<stem>.safetensors.index.<variant>.json").
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace lisadiff::io {

// The weight files of one component folder, in shard order. Empty when the folder has no
// weights at all (tokenizer, scheduler). Throws lisadiff::Error when it holds only formats
// lisadiff does not read (pickled .bin / .ckpt), or a broken shard index.
std::vector<std::filesystem::path> find_weight_files(const std::filesystem::path& component_dir,
                                                     const std::string& variant = "");

bool is_pipeline_folder(const std::filesystem::path& path);

// True for a relative path without ".." parts: names read from a pipeline's JSON files must
// stay inside the pipeline folder.
bool is_plain_relative(const std::filesystem::path& name);

}  // namespace lisadiff::io
