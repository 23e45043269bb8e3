#include "io/pipeline_folder.h"

#include <algorithm>

#include "config/json_fields.h"
#include "core/error.h"

namespace lisadiff::io {
namespace {

namespace fs = std::filesystem;

const char* const kStems[] = {"diffusion_pytorch_model", "model"};

std::string with_variant(const std::string& stem, const std::string& variant, const std::string& ext) {
  return variant.empty() ? stem + ext : stem + "." + variant + ext;
}

// diffusers/transformers put the variant before the last suffix of the index name:
// "diffusion_pytorch_model.safetensors.index.fp16.json".
std::string index_name(const std::string& stem, const std::string& variant) {
  return variant.empty() ? stem + ".safetensors.index.json" : stem + ".safetensors.index." + variant + ".json";
}

std::vector<fs::path> shards_from_index(const fs::path& index_path) {
  const auto json = config::read_json_file(index_path);
  const auto map = json.find("weight_map");
  if (map == json.end() || !map->is_object()) {
    throw Error(index_path.string(), field_key("weight_map"), "missing or not an object of tensor -> file");
  }
  std::vector<fs::path> files;
  for (const auto& item : map->items()) {
    if (!item.value().is_string()) {
      throw Error(index_path.string(), tensor_key(item.key()), "weight_map entry must be a file name");
    }
    const fs::path name = item.value().get<std::string>();
    if (!is_plain_relative(name)) {
      throw Error(index_path.string(), tensor_key(item.key()),
                  "shard '" + name.string() + "' must be a file name inside the folder");
    }
    const fs::path file = index_path.parent_path() / name;
    if (std::find(files.begin(), files.end(), file) == files.end()) files.push_back(file);
  }
  for (const auto& file : files) {
    if (!fs::is_regular_file(file)) throw Error(index_path.string(), "lists shard " + file.string() + ", which does not exist");
  }
  return files;
}

}  // namespace

bool is_plain_relative(const fs::path& name) {
  if (name.empty() || name.is_absolute()) return false;
  for (const auto& part : name) {
    if (part == "..") return false;
  }
  return true;
}

std::vector<fs::path> find_weight_files(const fs::path& component_dir, const std::string& variant) {
  for (const char* stem : kStems) {
    const auto single = component_dir / with_variant(stem, variant, ".safetensors");
    if (fs::is_regular_file(single)) return {single};
    const auto index = component_dir / index_name(stem, variant);
    if (fs::is_regular_file(index)) return shards_from_index(index);
  }
  for (const char* stem : kStems) {
    for (const char* ext : {".bin", ".ckpt"}) {
      const auto legacy = component_dir / with_variant(stem, variant, ext);
      if (fs::is_regular_file(legacy)) {
        throw Error(legacy.string(), "only pickled PyTorch weights found; lisadiff reads safetensors (convert with "
                                     "diffusers: from_pretrained(...).save_pretrained(..., safe_serialization=True))");
      }
    }
  }
  // Weight files under another name: a different variant (or none) than the one asked for.
  for (const auto& item : fs::directory_iterator(component_dir)) {
    const auto name = item.path().filename().string();
    for (const std::string stem : kStems) {
      if (name.rfind(stem + ".", 0) != 0 || item.path().extension() != ".safetensors") continue;
      if (!variant.empty()) {
        throw Error(component_dir.string(), "no weights for variant '" + variant + "' (looked for " +
                                                with_variant(stem, variant, ".safetensors") + "; found " + name + ")");
      }
      throw Error(item.path().string(), "holds a weights variant only; choose it with --variant (e.g. " +
                                            name.substr(stem.size() + 1, name.size() - stem.size() - 13) + ")");
    }
  }
  return {};
}

bool is_pipeline_folder(const fs::path& path) {
  return fs::is_directory(path) && fs::is_regular_file(path / "model_index.json");
}

}  // namespace lisadiff::io
