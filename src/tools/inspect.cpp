#include "tools/inspect.h"

#include <fstream>

#include <fmt/format.h>

#include "config/clip_text_config.h"
#include "config/pipeline_index.h"
#include "config/scheduler_config.h"
#include "config/unet_config.h"
#include "config/vae_config.h"
#include "core/error.h"
#include "io/pipeline_folder.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"

namespace lisadiff::tools {
namespace {

namespace fs = std::filesystem;
using io::Dtype;
using Json = nlohmann::ordered_json;

bool holds_parameters(Dtype d) {
  switch (d) {
    case Dtype::F8_E5M2: case Dtype::F8_E4M3: case Dtype::F8_E8M0: case Dtype::F8_E4M3FNUZ:
    case Dtype::F8_E5M2FNUZ: case Dtype::F16: case Dtype::BF16: case Dtype::F32: case Dtype::C64:
    case Dtype::F64:
      return true;
    default:
      return false;
  }
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string tokenizer_summary(const fs::path& dir) {
  const auto vocab = config::read_json_file(dir / "vocab.json");
  if (!vocab.is_object()) throw Error((dir / "vocab.json").string(), "expected an object of token -> id");
  std::ifstream merges(dir / "merges.txt");
  if (!merges) throw Error((dir / "merges.txt").string(), "cannot open (missing or unreadable)");
  std::size_t count = 0;
  for (std::string line; std::getline(merges, line);) {
    if (!line.empty() && line.rfind("#version", 0) != 0) ++count;
  }
  return fmt::format("vocab {} entries, {} merges", vocab.size(), count);
}

// Parses and validates the component's config; returns its one-line summary.
std::string component_config(const fs::path& dir, const std::string& class_name) {
  if (class_name == "UNet2DConditionModel") return config::UNet2DConditionConfig::from_file(dir / "config.json").summary();
  if (class_name == "AutoencoderKL") return config::AutoencoderKLConfig::from_file(dir / "config.json").summary();
  if (class_name == "CLIPTextModel" || class_name == "CLIPTextModelWithProjection") {
    return config::CLIPTextConfig::from_file(dir / "config.json").summary();
  }
  if (ends_with(class_name, "Scheduler")) return config::SchedulerConfig::from_file(dir / "scheduler_config.json").summary();
  if (class_name == "CLIPTokenizer" || class_name == "CLIPTokenizerFast") return tokenizer_summary(dir);
  return "not used by lisadiff";
}

// Top-level parts of the model class, and the key alias its loader applies.
struct ModuleView {
  std::vector<std::string> blocks;
  models::KeyAlias alias;
};

std::optional<ModuleView> module_view(const fs::path& dir, const std::string& class_name) {
  if (class_name == "UNet2DConditionModel") {
    auto c = config::UNet2DConditionConfig::from_file(dir / "config.json");
    c.validate((dir / "config.json").string());
    return ModuleView{models::unet_top_level_blocks(c), {}};
  }
  if (class_name == "AutoencoderKL") {
    return ModuleView{models::vae_top_level_blocks(config::AutoencoderKLConfig::from_file(dir / "config.json")),
                      models::vae_key_alias};
  }
  if (class_name == "CLIPTextModel") {
    return ModuleView{models::clip_top_level_blocks(config::CLIPTextConfig::from_file(dir / "config.json")),
                      models::clip_key_alias};
  }
  return std::nullopt;
}

std::vector<BlockCount> count_blocks(const std::vector<fs::path>& files, const ModuleView& view) {
  std::vector<BlockCount> out;
  for (const auto& b : view.blocks) out.push_back({b, 0, 0});
  BlockCount other{"(not in the model)", 0, 0};
  for (const auto& file : files) {
    io::SafetensorsReader reader(file);
    for (const auto& e : reader.entries()) {
      std::string key = e.name;
      if (view.alias) key = view.alias(e.name).value_or(e.name);
      auto* slot = &other;
      for (auto& b : out) {
        if (key.size() > b.name.size() && key.compare(0, b.name.size(), b.name) == 0 && key[b.name.size()] == '.') {
          slot = &b;
          break;
        }
      }
      slot->tensors += 1;
      if (holds_parameters(e.dtype)) slot->parameters += e.numel();
    }
  }
  if (other.tensors > 0) out.push_back(other);
  return out;
}

std::string group_digits(std::uint64_t n) {
  std::string digits = std::to_string(n);
  for (int i = static_cast<int>(digits.size()) - 3; i > 0; i -= 3) digits.insert(static_cast<std::size_t>(i), ",");
  return digits;
}

std::string dtype_list(const WeightsSummary& w) {
  std::string out;
  for (const auto& [dtype, count] : w.dtypes) out += fmt::format("{}{} {}", out.empty() ? "" : ", ", dtype, count);
  return out;
}

Json weights_json(const WeightsSummary& w) {
  Json files = Json::array();
  for (const auto& f : w.files) files.push_back(f.string());
  return {{"files", files},          {"tensors", w.tensors},     {"parameters", w.parameters},
          {"elements", w.elements},  {"bytes", w.bytes},         {"dtypes", w.dtypes},
          {"first_tensor", w.first_tensor}, {"last_tensor", w.last_tensor}, {"metadata", w.metadata}};
}

// Sums of every component's weights (tensors, parameters, elements, bytes, dtype counts).
WeightsSummary totals(const InspectReport& report) {
  WeightsSummary total;
  for (const auto& c : report.components) {
    if (!c.weights) continue;
    total.tensors += c.weights->tensors;
    total.parameters += c.weights->parameters;
    total.elements += c.weights->elements;
    total.bytes += c.weights->bytes;
    for (const auto& [dtype, count] : c.weights->dtypes) total.dtypes[dtype] += count;
  }
  return total;
}

}  // namespace

WeightsSummary summarize_weights(const std::vector<fs::path>& files) {
  WeightsSummary summary;
  summary.files = files;
  for (const auto& file : files) {
    const io::SafetensorsReader reader(file);
    if (summary.metadata.empty()) summary.metadata = reader.metadata();
    for (const auto& entry : reader.entries()) {
      if (summary.first_tensor.empty()) summary.first_tensor = entry.name;
      summary.last_tensor = entry.name;
      ++summary.tensors;
      summary.elements += entry.numel();
      if (holds_parameters(entry.dtype)) summary.parameters += entry.numel();
      summary.bytes += entry.nbytes();
      ++summary.dtypes[std::string(io::dtype_name(entry.dtype))];
    }
  }
  return summary;
}

InspectReport inspect(const fs::path& path, const std::string& variant) {
  InspectReport report;
  report.path = path;
  if (!fs::exists(path)) throw Error(path.string(), "no such file or folder");
  if (!fs::is_directory(path)) {
    report.weights = summarize_weights({path});
    return report;
  }
  if (!io::is_pipeline_folder(path)) {
    throw Error(path.string(), "not a pipeline folder (no model_index.json) and not a .safetensors file");
  }
  const auto index = config::PipelineIndex::from_file(path / "model_index.json");
  report.is_pipeline = true;
  report.pipeline_class = index.class_name;
  report.diffusers_version = index.diffusers_version;
  for (const auto& component : index.components) {
    ComponentReport out{component.name, component.library.value_or(""), component.class_name.value_or(""), "", {}, {}};
    if (component.present()) {
      if (!io::is_plain_relative(component.name)) {
        throw Error((path / "model_index.json").string(), field_key(component.name),
                    "a component name must be a folder inside the pipeline");
      }
      const auto dir = path / component.name;
      if (!fs::is_directory(dir)) {
        throw Error((path / "model_index.json").string(), field_key(component.name),
                    "lists a " + out.class_name + " component, but the folder " + dir.string() + " does not exist");
      }
      out.config = component_config(dir, out.class_name);
      const auto files = io::find_weight_files(dir, variant);
      if (!files.empty()) {
        out.weights = summarize_weights(files);
        if (auto view = module_view(dir, out.class_name)) out.blocks = count_blocks(files, *view);
      }
    }
    report.components.push_back(std::move(out));
  }
  return report;
}

Json to_json(const InspectReport& report) {
  Json out = {{"path", report.path.string()}, {"kind", report.is_pipeline ? "pipeline" : "safetensors"}};
  if (report.weights) out["weights"] = weights_json(*report.weights);
  if (!report.is_pipeline) return out;
  out["pipeline_class"] = report.pipeline_class;
  out["diffusers_version"] = report.diffusers_version;
  Json components = Json::array();
  for (const auto& c : report.components) {
    Json item = {{"name", c.name}, {"library", c.library}, {"class", c.class_name}, {"config", c.config}};
    if (c.weights) item["weights"] = weights_json(*c.weights);
    if (!c.blocks.empty()) {
      Json blocks = Json::array();
      for (const auto& b : c.blocks) blocks.push_back({{"name", b.name}, {"tensors", b.tensors}, {"parameters", b.parameters}});
      item["blocks"] = std::move(blocks);
    }
    components.push_back(std::move(item));
  }
  out["components"] = std::move(components);
  const auto total = totals(report);
  out["totals"] = {{"tensors", total.tensors}, {"parameters", total.parameters}, {"bytes", total.bytes}};
  return out;
}

std::string to_text(const InspectReport& report) {
  std::string out;
  const auto row = [&](const std::string& name, const std::string& cls, const WeightsSummary* w) {
    out += fmt::format("{:<19}{:<24}{:>9}{:>14}{:>14}  {}\n", name, cls, w ? group_digits(w->tensors) : "-",
                       w ? group_digits(w->parameters) : "-", w ? group_digits(w->bytes) : "-",
                       w ? dtype_list(*w) : "");
  };
  const auto details = [&](const std::string& name, const std::string& config, const WeightsSummary* w,
                           const std::vector<BlockCount>& blocks) {
    if (!config.empty()) out += fmt::format("{}: {}\n", name, config);
    if (!w) return;
    for (const auto& file : w->files) out += fmt::format("  file: {}\n", file.string());
    out += fmt::format("  first tensor: {}\n  last tensor:  {}\n", w->first_tensor, w->last_tensor);
    if (!blocks.empty()) out += "  modules, in registration order:\n";
    for (const auto& b : blocks) {
      out += fmt::format("    {:<38}{:>9}{:>14}\n", b.name, group_digits(b.tensors), group_digits(b.parameters));
    }
  };
  if (!report.is_pipeline) {
    out += fmt::format("safetensors file {}\n", report.path.string());
    for (const auto& [key, value] : report.weights->metadata) out += fmt::format("  metadata {} = {}\n", key, value);
    row("", "", &*report.weights);
    details("weights", "", &*report.weights, {});
    return out;
  }
  out += fmt::format("pipeline {} ({}, diffusers {})\n\n", report.path.string(), report.pipeline_class,
                     report.diffusers_version.empty() ? "?" : report.diffusers_version);
  out += fmt::format("{:<19}{:<24}{:>9}{:>14}{:>14}  {}\n", "component", "class", "tensors", "parameters", "bytes",
                     "dtypes");
  for (const auto& c : report.components) {
    row(c.name, c.class_name.empty() ? "(none)" : c.class_name, c.weights ? &*c.weights : nullptr);
  }
  const auto total = totals(report);
  row("total", "", &total);
  out += "\n";
  for (const auto& c : report.components) details(c.name, c.config, c.weights ? &*c.weights : nullptr, c.blocks);
  return out;
}

}  // namespace lisadiff::tools
