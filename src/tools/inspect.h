// `lisadiff inspect`: what a pipeline folder or a .safetensors file holds, validated.
// Every config a pipeline ships is parsed and validated on the way, so a report that comes
// back at all means the folder is one lisadiff can read.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lisadiff::tools {

struct WeightsSummary {
  std::vector<std::filesystem::path> files;
  std::int64_t tensors = 0;
  std::int64_t parameters = 0;  // elements of floating-point tensors (integer buffers excluded)
  std::int64_t elements = 0;    // elements of all tensors
  std::uint64_t bytes = 0;      // tensor data bytes
  std::map<std::string, std::int64_t> dtypes;  // safetensors dtype -> tensor count
  std::string first_tensor;  // in file order (shard order, then data order)
  std::string last_tensor;
  std::map<std::string, std::string> metadata;  // of the first file
};

// Opens (and so fully validates) every file. Throws lisadiff::Error on any problem.
WeightsSummary summarize_weights(const std::vector<std::filesystem::path>& files);

// Tensors and parameters of one top-level part of a model (e.g. "down_blocks.1").
struct BlockCount {
  std::string name;
  std::int64_t tensors = 0;
  std::int64_t parameters = 0;
};

struct ComponentReport {
  std::string name;
  std::string library;     // empty for a [null, null] entry
  std::string class_name;  // empty for a [null, null] entry
  std::string config;      // one-line summary of the validated config, or a note
  std::optional<WeightsSummary> weights;
  // Module view of UNet2DConditionModel, AutoencoderKL and CLIPTextModel weights: the
  // model's top-level parts in registration order; "(not in the model)" collects file keys
  // that belong to none of them.
  std::vector<BlockCount> blocks;
};

struct InspectReport {
  std::filesystem::path path;
  bool is_pipeline = false;
  std::string pipeline_class;
  std::string diffusers_version;
  std::vector<ComponentReport> components;  // pipelines: in model_index.json order
  std::optional<WeightsSummary> weights;    // a single .safetensors file
};

// `path` is a pipeline folder (with model_index.json) or a .safetensors file.
InspectReport inspect(const std::filesystem::path& path, const std::string& variant = "");

nlohmann::ordered_json to_json(const InspectReport& report);
std::string to_text(const InspectReport& report);

}  // namespace lisadiff::tools
