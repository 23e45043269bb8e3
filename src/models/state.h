// Loading and saving a module's parameters from/to safetensors files by name.
//
// The module tree is the key tree: `named_parameters()` of every lisadiff model yields the
// diffusers/transformers state-dict keys in registration order, so loading is a match by
// name. A load checks everything before it copies anything, and reports every problem at
// once: missing keys, unexpected keys, shape mismatches (both shapes), dtypes that are not
// floating point, with counts and the first names.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "io/safetensors.h"

namespace lisadiff::models {

// The diffusers release whose file formats lisadiff writes (and the fixtures check;
// requirements.txt pins it). diffusers parses `_diffusers_version`.
inline constexpr const char* kDiffusersFormatVersion = "0.42.1";

// Maps a key as stored in a file to the model's key (legacy spellings), or nullopt to keep it.
using KeyAlias = std::function<std::optional<std::string>(const std::string& file_key)>;

struct LoadOptions {
  // The dtype and device the parameters end up in (the module is converted first).
  torch::Dtype dtype = torch::kFloat32;
  torch::Device device = torch::kCPU;
  KeyAlias alias;  // optional
  // File keys that are known, not parameters, and skipped (e.g. CLIP's position_ids).
  std::function<bool(const std::string& key)> ignore;
  // false: leave each parameter's dtype and device as they are (dtype/device unused) and
  // convert the file's values into them, e.g. a model whose frozen tensors are stored in
  // half precision while the trained ones are float32.
  bool convert_module = true;
  // Tolerate keys the model has and the files lack (the LCM student's cond_proj); they keep
  // their current values. Every such key is logged.
  bool allow_missing = false;
  // A model that never trains (a teacher, a target or a reference UNet beside the trained
  // one): every parameter gets requires_grad = false, so a forward pass through it records
  // no gradient for its weights. With `dtype` kHalf/kBFloat16 it is also stored in half
  // precision (the scripts' weight_dtype).
  bool frozen = false;
  // Zero-copy: a parameter on the CPU whose dtype is the file's becomes a view of the memory-
  // mapped weight file (copy-on-write, io/mapped_file.h) instead of a copy. Its pages are read
  // on first use and stay clean file pages the kernel can drop and read again, so a model that
  // is only read (a reference UNet) costs no anonymous memory; an in-place write copies the
  // pages it touches, never the file. Other parameters are copied as usual.
  bool map_file = false;
};

struct LoadReport {
  std::size_t loaded = 0;
  std::size_t mapped = 0;  // of them, views of the mapped file (map_file)
  std::vector<std::string> kept;  // missing keys tolerated by allow_missing
  std::vector<std::string> ignored;
};

// Loads the parameters of `module` from `files` (shards of one component), converting F32,
// F16, BF16 or F64 data to options.dtype. Throws lisadiff::Error naming the file(s) and the
// offending tensors.
LoadReport load_parameters(torch::nn::Module& module, const std::vector<std::filesystem::path>& files,
                           const LoadOptions& options = {});

// The weight files of a component folder (see io::find_weight_files); throws
// lisadiff::Error naming the folder when it has none.
std::vector<std::filesystem::path> component_weight_files(const std::filesystem::path& dir, const std::string& variant);

// The module's parameters in registration order, as (name, tensor) pairs, contiguous.
io::NamedTensors parameters_of(const torch::nn::Module& module);

// Stores every 4-D parameter (the conv weights) in channels_last memory format, as
// `model.to(memory_format=torch.channels_last)` does; names, shapes and values are unchanged.
// Faster convolutions on GPUs with tensor cores; pass inputs in channels_last too.
void to_channels_last(torch::nn::Module& module);

// Writes the parameters as one safetensors file with metadata {"format": "pt"}, atomically.
void save_parameters(const torch::nn::Module& module, const std::filesystem::path& path);

}  // namespace lisadiff::models
