#include "train/lora.h"

#include <cmath>
#include <map>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "io/safetensors.h"

namespace lisadiff::train {
namespace {

const char* const kSlots[] = {"to_q", "to_k", "to_v", "to_out.0"};

std::shared_ptr<models::LinearAdapter>& slot_of(models::AttentionImpl& a, int slot) {
  switch (slot) {
    case 0: return a.lora_q;
    case 1: return a.lora_k;
    case 2: return a.lora_v;
    default: return a.lora_out;
  }
}

torch::nn::Linear& base_of(models::AttentionImpl& a, int slot) {
  switch (slot) {
    case 0: return a.to_q;
    case 1: return a.to_k;
    case 2: return a.to_v;
    default: return a.out_proj;
  }
}

}  // namespace

Lora::Lora(torch::nn::Module& model, LoraOptions options) : options_(std::move(options)) {
  if (options_.rank <= 0) throw Error(fmt::format("LoRA rank must be positive, found {}", options_.rank));
  if (options_.init != "kaiming" && options_.init != "gaussian") {
    throw Error("LoRA init '" + options_.init + "' is not supported (known: kaiming, gaussian)");
  }
  std::vector<bool> wanted(4, false);
  for (const auto& t : options_.target_modules) {
    const auto it = std::find(std::begin(kSlots), std::end(kSlots), t);
    if (it == std::end(kSlots)) {
      throw Error("LoRA target module '" + t + "' is not supported (supported: to_q, to_k, to_v, to_out.0)");
    }
    wanted[static_cast<std::size_t>(it - std::begin(kSlots))] = true;
  }
  const double alpha = options_.alpha < 0 ? static_cast<double>(options_.rank) : options_.alpha;
  scale_ = alpha / static_cast<double>(options_.rank);
  for (auto& p : model.parameters()) p.set_requires_grad(false);

  torch::NoGradGuard no_grad;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    auto attention = std::dynamic_pointer_cast<models::AttentionImpl>(item.value());
    if (!attention) continue;
    for (int slot = 0; slot < 4; ++slot) {
      if (!wanted[static_cast<std::size_t>(slot)]) continue;
      auto& base = base_of(*attention, slot);
      const int64_t in = base->weight.size(1), out = base->weight.size(0);
      // peft builds lora_A = Linear(in, r) and lora_B = Linear(r, out) (default init draws
      // from the generator), then re-initialises them: the same draws, in the same order.
      torch::nn::Linear a(torch::nn::LinearOptions(in, options_.rank).bias(false));
      torch::nn::Linear b(torch::nn::LinearOptions(options_.rank, out).bias(false));
      if (options_.init == "kaiming") {
        torch::nn::init::kaiming_uniform_(a->weight, std::sqrt(5.0));
      } else {
        a->weight.normal_(0.0, 1.0 / static_cast<double>(options_.rank));
      }
      b->weight.zero_();
      auto adapter = std::make_shared<models::LinearAdapter>();
      const auto device = base->weight.device();
      adapter->A = a->weight.detach().to(device, torch::kFloat32).requires_grad_(true);
      adapter->B = b->weight.detach().to(device, torch::kFloat32).requires_grad_(true);
      adapter->scale = scale_;
      adapter->dropout = options_.dropout;
      if (slot_of(*attention, slot)) throw Error("LoRA: '" + item.key() + "' already has an adapter");
      slot_of(*attention, slot) = adapter;
      attached_.push_back({attention, slot, adapter});
      const std::string name = item.key() + "." + kSlots[slot];
      params_.emplace_back(name + ".lora_A.weight", adapter->A);
      params_.emplace_back(name + ".lora_B.weight", adapter->B);
    }
  }
  if (attached_.empty()) throw Error("LoRA: the model has no attention projections to adapt");
  adapter_count_ = params_.size();
  for (const auto& module : options_.modules_to_save) {
    bool found = false;
    for (const auto& item : model.named_parameters(/*recurse=*/true)) {
      if (item.key().rfind(module + ".", 0) != 0) continue;
      found = true;
      item.value().set_requires_grad(true);
      params_.emplace_back(item.key(), item.value());
    }
    if (!found) throw Error("LoRA: modules_to_save '" + module + "' names no module of the model");
  }
  spdlog::info("LoRA: {} adapters of rank {} (scale {}), {} parameters", attached_.size(), options_.rank, scale_,
               parameter_count());
}

Lora::~Lora() {
  for (auto& a : attached_) slot_of(*a.attention, a.slot).reset();
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
    const auto& weight = base_of(*a.attention, a.slot)->weight;
    for (auto& [name, t] : out) {
      if (!t.is_same(weight)) continue;
      const auto delta = a.adapter->B.mm(a.adapter->A) * a.adapter->scale;
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
