#include "recipes/common.h"

#include <fmt/format.h>

#include "io/atomic_file.h"
#include "recipes/options.h"

namespace lisadiff::recipes {

namespace fs = std::filesystem;

train::StatePart loader_state_part(data::DataLoader& loader) {
  train::StatePart part;
  part.name = "data_loader";
  part.save_json = [&loader] { return loader.state(); };
  part.load_json = [&loader](const nlohmann::json& s) { loader.load_state(s); };
  return part;
}

namespace {

bool is_shard_spec(const std::string& s) {
  return s.rfind("pipe:", 0) == 0 || s.find(".tar") != std::string::npos || s.find('{') != std::string::npos;
}

std::string string_or_empty(const config::Json& values, const char* key) {
  return values.contains(key) && values.at(key).is_string() ? values.at(key).get<std::string>() : "";
}

}  // namespace

void resolve_dataset(config::Json& values) {
  const auto name = string_or_empty(values, "dataset_name");
  const auto dir = string_or_empty(values, "train_data_dir");
  values.erase("dataset_name");  // resolved here into the keys the data options read
  if (!name.empty() && !dir.empty()) {
    throw UsageError("--dataset_name and --train_data_dir: give one of them (the scripts use dataset_name first)");
  }
  if (name.empty()) {
    if (dir.empty()) throw UsageError("--dataset_name or --train_data_dir: no dataset given");
    return;
  }
  if (is_shard_spec(name)) {
    values["train_shards_path_or_url"] = name;
    return;
  }
  if (!fs::exists(name)) {
    throw UsageError(fmt::format(
        "--dataset_name {}: no such local folder; lisadiff reads local datasets only. For a Hugging Face dataset, "
        "download its parquet files and convert them: scripts/convert_hf_dataset.py --help (docs/data.md)",
        name));
  }
  if (fs::is_directory(name) && !fs::exists(fs::path(name) / "metadata.jsonl")) {
    // A folder of shards: every .tar in it, in name order.
    std::vector<std::string> shards;
    for (const auto& e : fs::directory_iterator(name)) {
      if (e.path().extension() == ".tar") shards.push_back(e.path().string());
    }
    if (shards.empty()) {
      throw UsageError(fmt::format("--dataset_name {}: neither an image folder (metadata.jsonl) nor a folder of .tar "
                                   "shards",
                                   name));
    }
    std::sort(shards.begin(), shards.end());
    std::string spec;
    for (const auto& s : shards) spec += (spec.empty() ? "" : "::") + s;
    values["train_shards_path_or_url"] = spec;
    return;
  }
  values["train_data_dir"] = name;
}

fs::path local_file(const std::string& url, const std::string& flag) {
  if (url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0) {
    throw UsageError(fmt::format("--{} {}: lisadiff does not download; save the file and give its path", flag, url));
  }
  fs::path path = url.rfind("file://", 0) == 0 ? fs::path(url.substr(7)) : fs::path(url);
  if (!fs::is_regular_file(path)) throw UsageError(fmt::format("--{} {}: no such file", flag, path.string()));
  return path;
}

void complete_pipeline_folder(const fs::path& base, const fs::path& out, const std::vector<std::string>& written,
                              const std::string& class_name) {
  auto index = config::read_json_file(base / "model_index.json");
  for (auto it = index.begin(); it != index.end(); ++it) {
    const auto& key = it.key();
    if (key.empty() || key[0] == '_' || !it.value().is_array()) continue;
    if (std::find(written.begin(), written.end(), key) != written.end()) continue;
    if (!fs::is_directory(base / key)) continue;  // [null, null] entries have no folder
    const auto tmp = out / (key + ".tmp");
    fs::remove_all(tmp);
    fs::copy(base / key, tmp, fs::copy_options::recursive);
    fs::remove_all(out / key);
    fs::rename(tmp, out / key);
  }
  index["_class_name"] = class_name;
  io::write_file_atomic(out / "model_index.json", index.dump(2) + "\n");
}

}  // namespace lisadiff::recipes
