#include "train/lora.h"

#include <cmath>
#include <map>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "io/safetensors.h"

namespace lisadiff::train {
namespace {

// peft's match of a target_modules entry: the module path itself or a dotted suffix of it.
bool matches(const std::string& name, const std::string& target) {
  return name == target ||
         (name.size() > target.size() && name.compare(name.size() - target.size(), target.size(), target) == 0 &&
          name[name.size() - target.size() - 1] == '.');
}

}  // namespace

Lora::Lora(torch::nn::Module& model, LoraOptions options) : options_(std::move(options)) {
  if (options_.rank <= 0) throw Error(fmt::format("LoRA rank must be positive, found {}", options_.rank));
  if (options_.init != "kaiming" && options_.init != "gaussian") {
    throw Error("LoRA init '" + options_.init + "' is not supported (known: kaiming, gaussian)");
  }
  if (options_.target_modules.empty()) throw Error("LoRA: no target modules");
  const double alpha = options_.alpha < 0 ? static_cast<double>(options_.rank) : options_.alpha;
  scale_ = alpha / static_cast<double>(options_.rank);

  torch::NoGradGuard no_grad;
  // The layers to adapt, checked before anything is attached (a refused model stays as it was).
  std::vector<bool> used(options_.target_modules.size(), false);
  std::vector<models::AdaptableLayer> chosen;
  for (auto& layer : models::adaptable_layers(model)) {
    bool wanted = false;
    for (std::size_t i = 0; i < options_.target_modules.size(); ++i) {
      if (matches(layer.name, options_.target_modules[i])) wanted = used[i] = true;
    }
    if (!wanted) continue;
    if (*layer.slot) throw Error("LoRA: '" + layer.name + "' already has an adapter");
    chosen.push_back(std::move(layer));
  }
  for (std::size_t i = 0; i < used.size(); ++i) {
    if (!used[i]) {
      throw Error("LoRA target module '" + options_.target_modules[i] +
                  "' matches no layer of the model that LoRA can adapt (attention projections, proj_in/proj_out, "
                  "ff.net.0.proj/ff.net.2, the resnets' conv1/conv2/conv_shortcut/time_emb_proj, the samplers' conv)");
    }
  }
  for (const auto& module : options_.modules_to_save) {
    bool found = false;
    for (const auto& item : model.named_parameters(/*recurse=*/true)) found = found || item.key().rfind(module + ".", 0) == 0;
    if (!found) throw Error("LoRA: modules_to_save '" + module + "' names no module of the model");
  }
  for (auto& p : model.parameters()) p.set_requires_grad(false);
  for (auto& layer : chosen) {
    const auto& w = layer.weight;
    const int64_t out = w.size(0), in = w.size(1);
    // peft builds lora_A and lora_B as layers of the base's kind (their default init draws
    // from the generator), then re-initialises them: the same draws, in the same order.
    torch::Tensor a, b;
    if (w.dim() == 4) {
      torch::nn::Conv2d ca(torch::nn::Conv2dOptions(in, options_.rank, {w.size(2), w.size(3)})
                               .stride(torch::ExpandingArray<2>(layer.stride))
                               .padding(torch::ExpandingArray<2>(layer.padding))
                               .bias(false));
      torch::nn::Conv2d cb(torch::nn::Conv2dOptions(options_.rank, out, 1).bias(false));
      a = ca->weight;
      b = cb->weight;
    } else {
      torch::nn::Linear la(torch::nn::LinearOptions(in, options_.rank).bias(false));
      torch::nn::Linear lb(torch::nn::LinearOptions(options_.rank, out).bias(false));
      a = la->weight;
      b = lb->weight;
    }
    if (options_.init == "kaiming") {
      torch::nn::init::kaiming_uniform_(a, std::sqrt(5.0));
    } else {
      a.normal_(0.0, 1.0 / static_cast<double>(options_.rank));
    }
    b.zero_();
    auto adapter = std::make_shared<models::LoraAdapter>();
    const auto device = w.device();
    adapter->A = a.detach().to(device, torch::kFloat32).requires_grad_(true);
    adapter->B = b.detach().to(device, torch::kFloat32).requires_grad_(true);
    if (w.dim() == 4) {
      adapter->stride = layer.stride;
      adapter->padding = layer.padding;
    }
    adapter->scale = scale_;
    adapter->dropout = options_.dropout;
    *layer.slot = adapter;
    params_.emplace_back(layer.name + ".lora_A.weight", adapter->A);
    params_.emplace_back(layer.name + ".lora_B.weight", adapter->B);
    attached_.push_back({std::move(layer), adapter});
  }
  adapter_count_ = params_.size();
  for (const auto& module : options_.modules_to_save) {
    for (const auto& item : model.named_parameters(/*recurse=*/true)) {
      if (item.key().rfind(module + ".", 0) != 0) continue;
      item.value().set_requires_grad(true);
      params_.emplace_back(item.key(), item.value());
    }
  }
  spdlog::info("LoRA: {} adapters of rank {} (scale {}), {} parameters", attached_.size(), options_.rank, scale_,
               parameter_count());
}

Lora::~Lora() {
  for (auto& a : attached_) a.layer.slot->reset();
}

int64_t Lora::parameter_count() const {
  int64_t n = 0;
  for (const auto& [name, t] : params_) n += t.numel();
  return n;
}

void Lora::set_enabled(bool enabled) {
  for (auto& a : attached_) a.adapter->enabled = enabled;
}

void Lora::save(const std::filesystem::path& dir, const std::string& prefix) const {
  std::filesystem::create_directories(dir);
  io::NamedTensors out;
  io::NamedTensors modules;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, t] = params_[i];
    if (i < adapter_count_) {
      out.emplace_back(prefix + "." + name, t.detach().contiguous());
    } else {
      modules.emplace_back(name, t.detach().to(torch::kFloat32).contiguous());
    }
  }
  io::write_safetensors(dir / kFileName, out, {{"format", "pt"}});
  if (!modules.empty()) io::write_safetensors(dir / kModulesFileName, modules, {{"format", "pt"}});
}

std::vector<std::pair<std::string, torch::Tensor>> Lora::merged(
    const std::vector<std::pair<std::string, torch::Tensor>>& params) const {
  torch::NoGradGuard no_grad;
  auto out = params;
  for (const auto& a : attached_) {
    const auto& weight = a.layer.weight;
    for (auto& [name, t] : out) {
      if (!t.is_same(weight)) continue;
      // Conv2d: B is 1x1, so B * A is the matrix product over the flattened kernels.
      const auto delta = a.adapter->B.flatten(1).mm(a.adapter->A.flatten(1)).view(weight.sizes()) * a.adapter->scale;
      t = (t.to(torch::kFloat32) + delta.to(t.device())).to(t.scalar_type());
    }
  }
  return out;
}

void Lora::load(const std::filesystem::path& file, const std::string& prefix) {
  io::SafetensorsReader reader(file);
  std::vector<std::string> missing;
  for (std::size_t i = 0; i < adapter_count_; ++i) {
    const auto& [name, t] = params_[i];
    const auto key = prefix + "." + name;
    if (!reader.contains(key)) {
      missing.push_back(key);
      continue;
    }
    auto value = reader.tensor(key);
    if (!value.sizes().equals(t.sizes())) {
      throw Error(file.string(), tensor_key(key),
                  fmt::format("shape [{}] in the file, [{}] in the adapter (another rank?)", fmt::join(value.sizes(), ", "),
                              fmt::join(t.sizes(), ", ")));
    }
    torch::NoGradGuard no_grad;
    t.copy_(value);
  }
  if (!missing.empty()) {
    throw Error(file.string(), fmt::format("{} adapter tensors missing, first: {}", missing.size(), missing.front()));
  }
  if (adapter_count_ == params_.size()) return;
  const auto modules_file = file.parent_path() / kModulesFileName;
  if (!std::filesystem::exists(modules_file)) {
    throw Error(modules_file.string(), "missing: the run trains modules_to_save next to the adapters");
  }
  io::SafetensorsReader modules(modules_file);
  torch::NoGradGuard no_grad;
  for (std::size_t i = adapter_count_; i < params_.size(); ++i) {
    const auto& [name, t] = params_[i];
    if (!modules.contains(name)) throw Error(modules_file.string(), tensor_key(name), "missing");
    const auto value = modules.tensor(name);
    if (!value.sizes().equals(t.sizes())) {
      throw Error(modules_file.string(), tensor_key(name),
                  fmt::format("shape [{}] in the file, [{}] in the model", fmt::join(value.sizes(), ", "),
                              fmt::join(t.sizes(), ", ")));
    }
    t.copy_(value);
  }
}

}  // namespace lisadiff::train
