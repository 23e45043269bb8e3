// model_index.json: the pipeline class and its components. A component entry is
// [library, class] (e.g. ["diffusers", "UNet2DConditionModel"]) or [null, null] for an
// optional component that was saved without a value.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "config/json_fields.h"

namespace lisadiff::config {

struct PipelineComponent {
  std::string name;                   // folder name, e.g. "unet"
  std::optional<std::string> library;  // "diffusers", "transformers"; empty for [null, null]
  std::optional<std::string> class_name;
  bool present() const { return class_name.has_value(); }
};

struct PipelineIndex {
  std::string class_name;         // "_class_name", e.g. "StableDiffusionPipeline"
  std::string diffusers_version;  // "_diffusers_version"
  std::vector<PipelineComponent> components;  // in file order
  Json options = Json::object();               // other keys, e.g. requires_safety_checker

  static PipelineIndex from_json(const Json& json, const std::string& source);
  static PipelineIndex from_file(const std::filesystem::path& path);
  const PipelineComponent* find(const std::string& name) const;
  Json to_json() const;
};

}  // namespace lisadiff::config
