#include "pipelines/lora.h"

#include <map>
#include <set>
#include <tuple>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "io/safetensors.h"

namespace lisadiff::pipelines {
namespace {

constexpr const char* kPrefix = "unet.";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// One adapter as the file holds it: down (A, [r, in] or [r, in, kh, kw]) and up (B, [out, r]
// or [out, r, 1, 1]).
struct FileAdapter {
  torch::Tensor down, up;
  std::string down_key, up_key;
};

}  // namespace

void apply_lora(Components& c, const std::filesystem::path& file, double scale) {
  if (c.lora) throw Error(file.string(), "a LoRA is already applied to this pipeline");
  io::SafetensorsReader reader(file);
  const std::string source = file.string();
  // module name (peft's, without the prefix) -> its two halves
  std::map<std::string, FileAdapter> adapters;
  for (const auto& e : reader.entries()) {
    const std::string& key = e.name;
    if (key.rfind(kPrefix, 0) != 0) {
      throw Error(source, tensor_key(key),
                  key.rfind("text_encoder.", 0) == 0 ? "a text-encoder LoRA: only UNet adapters are supported"
                                                     : "not a UNet LoRA key (expected \"unet.<module>.lora...\")");
    }
    const std::string rest = key.substr(std::string(kPrefix).size());
    std::string module;
    bool down = false;
    for (const auto& [suffix, is_down] : std::vector<std::pair<std::string, bool>>{{".lora_A.weight", true},
                                                                                   {".lora.down.weight", true},
                                                                                   {".lora_B.weight", false},
                                                                                   {".lora.up.weight", false}}) {
      if (ends_with(rest, suffix)) {
        module = rest.substr(0, rest.size() - suffix.size());
        down = is_down;
        break;
      }
    }
    if (module.empty()) throw Error(source, tensor_key(key), "not a LoRA weight (lora_A/lora_B or lora.down/lora.up)");
    auto& a = adapters[module];
    (down ? a.down : a.up) = reader.tensor(key).to(torch::kFloat32);
    (down ? a.down_key : a.up_key) = key;
  }
  if (adapters.empty()) throw Error(source, "holds no LoRA weights");
  std::set<std::string> adaptable;
  for (const auto& layer : models::adaptable_layers(*c.unet)) adaptable.insert(layer.name);
  std::vector<std::string> targets;
  int64_t rank = -1;
  for (const auto& [module, a] : adapters) {
    if (!a.down.defined() || !a.up.defined()) {
      throw Error(source, tensor_key(a.down.defined() ? a.down_key : a.up_key), "has no matching up/down half");
    }
    if (!adaptable.count(module)) {
      throw Error(source, tensor_key(a.down_key), "names no layer of the UNet that LoRA can adapt");
    }
    targets.push_back(module);
    const bool pair = (a.down.dim() == 2 && a.up.dim() == 2) ||
                      (a.down.dim() == 4 && a.up.dim() == 4 && a.up.size(2) == 1 && a.up.size(3) == 1);
    if (!pair || a.up.size(1) != a.down.size(0)) {
      throw Error(source, tensor_key(a.down_key), "down and up weights do not form a low-rank pair");
    }
    if (rank < 0) rank = a.down.size(0);
    if (a.down.size(0) != rank) {
      throw Error(source, tensor_key(a.down_key), fmt::format("rank {} differs from the others' {}", a.down.size(0), rank));
    }
  }
  train::LoraOptions options;
  options.rank = rank;
  options.alpha = scale * static_cast<double>(rank);  // scale * (alpha = rank) / rank
  options.target_modules = targets;  // full module paths: exactly the file's layers
  auto lora = std::make_unique<train::Lora>(*c.unet, options);
  std::map<std::string, torch::Tensor> slots(lora->parameters().begin(), lora->parameters().end());
  torch::NoGradGuard no_grad;
  for (const auto& [module, a] : adapters) {
    for (const auto& [suffix, value, key] : {std::tuple{".lora_A.weight", a.down, a.down_key},
                                             std::tuple{".lora_B.weight", a.up, a.up_key}}) {
      const auto it = slots.find(module + suffix);
      if (it == slots.end()) throw Error(source, tensor_key(key), "names no adaptable layer of the UNet");
      if (!it->second.sizes().equals(value.sizes())) {
        throw Error(source, tensor_key(key),
                    fmt::format("shape [{}] does not fit the module (needs [{}])", fmt::join(value.sizes(), ", "),
                                fmt::join(it->second.sizes(), ", ")));
      }
      it->second.copy_(value);
    }
  }
  for (const auto& [name, t] : lora->parameters()) t.requires_grad_(false);
  spdlog::info("{}: LoRA of rank {} on {} layers, scale {}", source, rank, adapters.size(), scale);
  c.lora = std::move(lora);
}

}  // namespace lisadiff::pipelines
