#include "config/pipeline_index.h"

#include "core/error.h"

namespace lisadiff::config {
namespace {

bool is_string_or_null(const Json& value) { return value.is_string() || value.is_null(); }

}  // namespace

PipelineIndex PipelineIndex::from_json(const Json& json, const std::string& source) {
  FieldReader reader(json, source);  // checks that the top level is an object
  PipelineIndex index;
  for (const auto& item : json.items()) {
    const auto& key = item.key();
    const auto& value = item.value();
    if (key == "_class_name") {
      if (!decode(value, index.class_name)) field_error(source, key, "expected a string, found " + describe_json(value));
    } else if (key == "_diffusers_version") {
      if (!decode(value, index.diffusers_version)) {
        field_error(source, key, "expected a string, found " + describe_json(value));
      }
    } else if (!key.empty() && key[0] == '_') {
      continue;  // diffusers bookkeeping such as _name_or_path
    } else if (value.is_array()) {
      if (value.size() != 2 || !is_string_or_null(value[0]) || !is_string_or_null(value[1]) ||
          value[0].is_null() != value[1].is_null()) {
        field_error(source, key,
                    "expected a component entry [library, class] or [null, null], found " + describe_json(value));
      }
      PipelineComponent component{key, std::nullopt, std::nullopt};
      if (!value[0].is_null()) {
        component.library = value[0].get<std::string>();
        component.class_name = value[1].get<std::string>();
      }
      index.components.push_back(std::move(component));
    } else {
      index.options[key] = value;
    }
  }
  if (index.class_name.empty()) field_error(source, "_class_name", "missing: expected the pipeline class name");
  return index;
}

PipelineIndex PipelineIndex::from_file(const std::filesystem::path& path) {
  return from_json(read_json_file(path), path.string());
}

const PipelineComponent* PipelineIndex::find(const std::string& name) const {
  for (const auto& component : components) {
    if (component.name == name) return &component;
  }
  return nullptr;
}

Json PipelineIndex::to_json() const {
  Json out = Json::object();
  out["_class_name"] = class_name;
  out["_diffusers_version"] = diffusers_version;
  for (const auto& component : components) {
    out[component.name] = component.present() ? Json::array({*component.library, *component.class_name})
                                              : Json::array({nullptr, nullptr});
  }
  for (const auto& item : options.items()) out[item.key()] = item.value();
  return out;
}

}  // namespace lisadiff::config
