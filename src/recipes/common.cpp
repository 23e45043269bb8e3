#include "recipes/common.h"

#include <c10/core/impl/VirtualGuardImpl.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "io/atomic_file.h"
#include "recipes/options.h"
#include "recipes/shared_flags.h"

namespace lisadiff::recipes {

namespace fs = std::filesystem;

RecipeRun start_run(const FlagTable& table, const ParsedArgs& parsed, const std::string& base_flag) {
  RecipeRun run;
  run.base = parsed.values.at(base_flag).get<std::string>();
  if (!fs::is_directory(run.base)) {
    throw UsageError(fmt::format("--{} {}: no such folder (a local pipeline folder; lisadiff does not download "
                                 "from the Hub)",
                                 base_flag, run.base.string()));
  }
  run.values = recipe_values(table, parsed);
  if (table.find("dataset_name")) resolve_dataset(run.values);
  run.source = parsed.config_file.empty() ? "command line" : parsed.config_file.string() + " + command line";
  return run;
}

void derive_step_count(config::Json& values, config::FieldReader& reader, int64_t batches_per_epoch, int world_size) {
  reader.ignored("num_train_epochs");
  reader.ignored("scale_lr");
  const int accumulation = values.at("gradient_accumulation_steps").get<int>();
  if (accumulation < 1) throw UsageError("--gradient_accumulation_steps must be at least 1");
  const int epochs = values.at("num_train_epochs").get<int>();
  if (epochs < 1) throw UsageError("--num_train_epochs must be at least 1");
  if (values.at("max_train_steps").is_null()) {
    if (batches_per_epoch < 0) {
      throw UsageError("--max_train_steps is required with webdataset shards (their epoch length is unknown)");
    }
    values["max_train_steps"] = epochs * ((batches_per_epoch + accumulation - 1) / accumulation);
  }
  if (values.at("scale_lr").get<bool>()) {
    values["learning_rate"] = values.at("learning_rate").get<double>() * accumulation *
                              values.at("train_batch_size").get<double>() * world_size;
  }
}

void check_resolution(const config::Json& values) {
  const auto resolution = values.at("resolution").get<int64_t>();
  if (resolution < 8 || resolution % 8 != 0) {
    throw UsageError(fmt::format("--resolution must be a positive multiple of 8 (the VAE's latents), got {}", resolution));
  }
}

torch::ScalarType weight_dtype_of(train::MixedPrecision precision) {
  return precision == train::MixedPrecision::kFp16   ? torch::kFloat16
         : precision == train::MixedPrecision::kBf16 ? torch::kBFloat16
                                                     : torch::kFloat32;
}

models::LoadOptions frozen_load_options(torch::ScalarType dtype, torch::Device device) {
  models::LoadOptions o;
  o.frozen = true;
  o.dtype = dtype;
  o.device = device;
  o.map_file = device.is_cpu();
  return o;
}

torch::Device training_device(bool allow_tf32) {
  if (!torch::cuda::is_available()) return torch::kCPU;
  const auto count = static_cast<int>(torch::cuda::device_count());
  const torch::Device device(torch::kCUDA, static_cast<c10::DeviceIndex>(train::DistEnv::from_environment().local_rank % count));
  c10::impl::VirtualGuardImpl(device.type()).setDevice(device);  // the current device of this process
  if (allow_tf32) at::globalContext().setAllowTF32CuBLAS(true);
  return device;
}

DistributedRun join_process_group(data::DataOptions& data, torch::Device device) {
  DistributedRun run;
  run.env = train::DistEnv::from_environment();
  data.rank = run.env.rank;
  data.world_size = run.env.world_size;
  if (!run.env.distributed()) return run;
  run.group = train::ProcessGroup::create(run.env, device);
  spdlog::info("{} processes, data-parallel training on {} (rank {} here)", run.env.world_size, device.str(),
               run.env.rank);
  // As accelerate's logger: information from the main process only; warnings and errors
  // from every rank.
  if (run.env.rank > 0 && spdlog::get_level() < spdlog::level::warn) spdlog::set_level(spdlog::level::warn);
  return run;
}

CommonSettings read_common_settings(config::FieldReader& r, const std::string& base_flag) {
  CommonSettings s;
  r.ignored(base_flag.c_str());
  std::optional<std::string> variant;
  r("variant", variant);
  s.variant = variant.value_or("");
  r("allow_tf32", s.allow_tf32);
  s.seed = r.object().at("seed").get<int>();  // claimed by the data and trainer options too
  return s;
}

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

// An image folder (metadata.jsonl) or a folder holding .tar shards.
bool is_dataset_folder(const fs::path& dir) {
  if (fs::exists(dir / "metadata.jsonl")) return true;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".tar") return true;
  }
  return false;
}

}  // namespace

void resolve_dataset(config::Json& values) {
  auto name = string_or_empty(values, "dataset_name");
  const auto dir = string_or_empty(values, "train_data_dir");
  const bool has_split = values.contains("dataset_split_name");
  const auto split = string_or_empty(values, "dataset_split_name");
  values.erase("dataset_name");  // resolved here into the keys the data options read
  values.erase("dataset_split_name");
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
  if (has_split && fs::is_directory(name)) {
    // A dataset with split folders (train/, validation/, ...): the named split.
    if (fs::is_directory(fs::path(name) / split)) {
      name = (fs::path(name) / split).string();
    } else if (!is_dataset_folder(name)) {
      std::vector<std::string> splits;
      for (const auto& e : fs::directory_iterator(name)) {
        if (e.is_directory() && is_dataset_folder(e.path())) splits.push_back(e.path().filename().string());
      }
      std::sort(splits.begin(), splits.end());
      if (!splits.empty()) {
        throw UsageError(fmt::format("--dataset_split_name {}: {} has no such split (it has: {})", split, name,
                                     fmt::join(splits, ", ")));
      }
    }
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

const std::vector<std::string>& lcm_validation_prompts() {
  static const std::vector<std::string> prompts = {
      "portrait photo of a girl, photograph, highly detailed face, depth of field, moody light, golden hour, style by "
      "Dan Winters, Russell James, Steve McCurry, centered, extremely detailed, Nikon D850, award winning photography",
      "Self-portrait oil painting, a beautiful cyborg with golden hair, 8k",
      "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k",
      "A photo of beautiful mountain with realistic sunset and blue lake, highly detailed, masterpiece",
  };
  return prompts;
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
