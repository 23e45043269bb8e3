#include "train/ema.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"
#include "io/atomic_file.h"
#include "models/state.h"

namespace lisadiff::train {
namespace {

constexpr const char* kWeightsFile = "diffusion_pytorch_model.safetensors";
constexpr std::size_t kListedNames = 10;

std::string shape_text(const torch::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }

// "3 missing: a, b, c" with at most kListedNames names.
std::string listed(std::size_t count, const char* what, const std::vector<std::string>& names) {
  std::vector<std::string> first(names.begin(), names.begin() + std::min(names.size(), kListedNames));
  return fmt::format("{} {}: {}{}", count, what, fmt::join(first, ", "), names.size() > kListedNames ? ", ..." : "");
}

// `param` on `shadow`'s device (a copy only when the devices differ, e.g. CPU shadows).
torch::Tensor on_device_of(const torch::Tensor& param, const torch::Tensor& shadow) {
  return param.device() == shadow.device() ? param.detach() : param.detach().to(shadow.device());
}

// Reads the EMA's scalar fields from a JSON object into `options` / `step`; keys missing
// from `json` keep their values (diffusers' load_state_dict uses .get(key, current)).
void read_fields(const config::Json& json, const std::string& source, EMAOptions& options, std::int64_t& step) {
  config::FieldReader reader(json, source);
  reader("decay", options.decay);
  reader("min_decay", options.min_decay);
  // Steps are JSON integers up to 2^31 - 1 (the shared reader's integer type).
  int step_value = static_cast<int>(std::min<std::int64_t>(step, INT32_MAX));
  reader("optimization_step", step_value);
  if (step_value < 0) config::field_error(source, "optimization_step", fmt::format("must be >= 0, found {}", step_value));
  step = step_value;
  int after = static_cast<int>(std::min<std::int64_t>(options.update_after_step, INT32_MAX));
  reader("update_after_step", after);
  options.update_after_step = after;
  reader("use_ema_warmup", options.use_ema_warmup);
  reader("inv_gamma", options.inv_gamma);
  reader("power", options.power);
  options.validate(source);
}

}  // namespace

void EMAOptions::validate(const std::string& source_in) const {
  const std::string source = source_in.empty() ? "EMA" : source_in;
  const auto fail = [&](const char* key, const std::string& problem) { config::field_error(source, key, problem); };
  // diffusers checks only decay ("Decay must be between 0 and 1"); the rest would make the
  // decay rule return garbage (NaN, or a floor above the cap).
  if (!(decay >= 0.0 && decay <= 1.0)) fail("decay", fmt::format("must be between 0 and 1, found {}", decay));
  if (!(min_decay >= 0.0 && min_decay <= 1.0)) fail("min_decay", fmt::format("must be between 0 and 1, found {}", min_decay));
  if (min_decay > decay) fail("min_decay", fmt::format("{} is larger than decay {}", min_decay, decay));
  if (update_after_step < 0) fail("update_after_step", fmt::format("must be >= 0, found {}", update_after_step));
  if (!(std::isfinite(inv_gamma) && inv_gamma > 0)) fail("inv_gamma", fmt::format("must be positive, found {}", inv_gamma));
  if (!(std::isfinite(power) && power > 0)) fail("power", fmt::format("must be positive, found {}", power));
}

EMA::EMA(const io::NamedTensors& params, EMAOptions options) : options_(std::move(options)) {
  options_.validate();
  std::set<std::string> seen;
  torch::NoGradGuard no_grad;
  for (const auto& [name, param] : params) {
    if (!seen.insert(name).second) throw Error(fmt::format("EMA: parameter '{}' is listed twice", name));
    if (!param.defined() || !param.is_floating_point()) {
      throw Error(fmt::format("EMA: parameter '{}' is not a floating-point tensor", name));
    }
    const torch::Device device = options_.device.value_or(param.device());
    shadows_.emplace_back(name, param.detach().to(device, torch::kFloat32, /*non_blocking=*/false, /*copy=*/true));
  }
}

double EMA::decay(std::int64_t optimization_step) const {
  // diffusers' get_decay, in the same double operations.
  const std::int64_t s = std::max<std::int64_t>(0, optimization_step - options_.update_after_step - 1);
  if (s <= 0) return 0.0;
  double value = options_.use_ema_warmup
                     ? 1.0 - std::pow(1.0 + static_cast<double>(s) / options_.inv_gamma, -options_.power)
                     : static_cast<double>(1 + s) / static_cast<double>(10 + s);
  value = std::min(value, options_.decay);
  value = std::max(value, options_.min_decay);
  return value;
}

void EMA::check_names(const io::NamedTensors& params, const char* what) const {
  if (params.size() != shadows_.size()) {
    throw Error(fmt::format("EMA::{}: got {} parameters, the EMA tracks {}", what, params.size(), shadows_.size()));
  }
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (params[i].first != shadows_[i].first) {
      throw Error(fmt::format("EMA::{}: parameter {} is '{}', the EMA tracks '{}' there", what, i, params[i].first,
                              shadows_[i].first));
    }
    if (!params[i].second.sizes().equals(shadows_[i].second.sizes())) {
      throw Error(fmt::format("EMA::{}: parameter '{}' has shape {}, its shadow {}", what, params[i].first,
                              shape_text(params[i].second), shape_text(shadows_[i].second)));
    }
  }
}

void EMA::step(const io::NamedTensors& params) {
  check_names(params, "step");
  torch::NoGradGuard no_grad;
  ++optimization_step_;
  current_decay_ = decay(optimization_step_);
  const double one_minus_decay = 1.0 - current_decay_;
  if (!options_.foreach) {
    // diffusers' default path: s.sub_(one_minus_decay * (s - p)), or s.copy_(p).
    for (std::size_t i = 0; i < params.size(); ++i) {
      torch::Tensor& shadow = shadows_[i].second;
      const torch::Tensor param = on_device_of(params[i].second, shadow);
      if (params[i].second.requires_grad()) {
        shadow.sub_((shadow - param) * one_minus_decay);
      } else {
        shadow.copy_(param);
      }
    }
    return;
  }
  // diffusers' foreach path: one _foreach_copy_ for the frozen tensors, then
  // _foreach_sub_(s, _foreach_sub(s, p), alpha=one_minus_decay) for the trained ones.
  std::vector<torch::Tensor> s_grad, p_grad, s_frozen, p_frozen;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const torch::Tensor& shadow = shadows_[i].second;
    const bool trained = params[i].second.requires_grad();
    (trained ? s_grad : s_frozen).push_back(shadow);
    (trained ? p_grad : p_frozen).push_back(on_device_of(params[i].second, shadow));
  }
  if (!s_frozen.empty()) torch::_foreach_copy_(s_frozen, p_frozen);
  if (!s_grad.empty()) torch::_foreach_sub_(s_grad, torch::_foreach_sub(s_grad, p_grad), one_minus_decay);
}

void EMA::copy_to(const io::NamedTensors& params) const {
  check_names(params, "copy_to");
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params.size(); ++i) params[i].second.copy_(shadows_[i].second);
}

void EMA::store(const io::NamedTensors& params) {
  check_names(params, "store");
  stored_.clear();
  for (const auto& item : params) stored_.push_back(item.second.detach().to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true));
}

void EMA::restore(const io::NamedTensors& params) {
  if (stored_.empty() && !shadows_.empty()) throw Error("EMA::restore: nothing stored; call store() before restore()");
  check_names(params, "restore");
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params.size(); ++i) params[i].second.copy_(stored_[i]);
  stored_.clear();  // as diffusers: the copy is dropped once restored
}

const torch::Tensor& EMA::shadow(const std::string& name) const {
  for (const auto& item : shadows_) {
    if (item.first == name) return item.second;
  }
  throw Error(fmt::format("EMA: no parameter named '{}' is tracked", name));
}

void EMA::to(torch::Device device) {
  for (auto& item : shadows_) item.second = item.second.to(device);
  options_.device = device;
}

config::Json EMA::config_fields() const {
  config::Json json;
  json["decay"] = options_.decay;
  json["min_decay"] = options_.min_decay;
  json["optimization_step"] = optimization_step_;
  json["update_after_step"] = options_.update_after_step;
  json["use_ema_warmup"] = options_.use_ema_warmup;
  json["inv_gamma"] = options_.inv_gamma;
  json["power"] = options_.power;
  return json;
}

void EMA::load_config_fields(const config::Json& json, const std::string& source) {
  EMAOptions options = options_;
  std::int64_t step = optimization_step_;
  read_fields(json, source, options, step);
  options_ = options;
  optimization_step_ = step;
}

EMAState EMA::state() const {
  EMAState state;
  for (const auto& [name, shadow] : shadows_) state.shadows.emplace_back(name, shadow.clone());
  state.fields = config_fields();
  return state;
}

void EMA::apply_state(const config::Json& fields, const std::string& fields_source, const io::NamedTensors& shadows,
                      const std::string& shadows_source) {
  EMAOptions options = options_;
  std::int64_t step = optimization_step_;
  read_fields(fields, fields_source, options, step);

  std::map<std::string, const torch::Tensor*> given;
  for (const auto& [name, tensor] : shadows) given[name] = &tensor;
  std::vector<std::string> missing, mis_shaped;
  std::set<std::string> tracked;
  for (const auto& [name, shadow] : shadows_) {
    tracked.insert(name);
    const auto it = given.find(name);
    if (it == given.end()) {
      missing.push_back(name);
    } else if (!it->second->sizes().equals(shadow.sizes())) {
      mis_shaped.push_back(fmt::format("{} {} (EMA {})", name, shape_text(*it->second), shape_text(shadow)));
    } else if (!it->second->is_floating_point()) {
      mis_shaped.push_back(fmt::format("{} has a non-floating-point dtype", name));
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& [name, tensor] : shadows) {
    if (tracked.count(name) == 0) unexpected.push_back(name);
  }
  if (!missing.empty() || !unexpected.empty() || !mis_shaped.empty()) {
    std::vector<std::string> parts;
    if (!missing.empty()) parts.push_back(listed(missing.size(), "missing", missing));
    if (!unexpected.empty()) parts.push_back(listed(unexpected.size(), "unexpected", unexpected));
    if (!mis_shaped.empty()) parts.push_back(listed(mis_shaped.size(), "with the wrong shape or dtype", mis_shaped));
    throw Error(shadows_source, fmt::format("EMA state does not match the tracked parameters: {}", fmt::join(parts, "; ")));
  }

  torch::NoGradGuard no_grad;
  for (auto& [name, shadow] : shadows_) shadow.copy_(*given.at(name));
  options_ = options;
  optimization_step_ = step;
}

void EMA::load_state(const EMAState& state, const std::string& source) {
  apply_state(state.fields, source, state.shadows, source);
}

void EMA::save_pretrained(const std::filesystem::path& dir, const config::Json& model_config) const {
  if (!model_config.is_object()) {
    throw Error(dir.string(), "EMA::save_pretrained: the model config must be a JSON object, found " +
                                  config::describe_json(model_config));
  }
  std::filesystem::create_directories(dir);
  config::Json json = model_config;
  json.update(config_fields());
  io::write_safetensors(dir / kWeightsFile, shadows_, {{"format", "pt"}});
  io::write_file_atomic(dir / "config.json", json.dump(2) + "\n");
}

void EMA::load_pretrained(const std::filesystem::path& dir) {
  const auto config_path = dir / "config.json";
  const config::Json fields = config::read_json_file(config_path);
  io::NamedTensors shadows;
  std::vector<std::string> sources;
  // The reader maps the file; tensor() converts to float32 (a copy), so the shadows do not
  // keep the mapping alive.
  for (const auto& file : models::component_weight_files(dir, /*variant=*/"")) {
    io::SafetensorsReader reader(file);
    for (const auto& entry : reader.entries()) shadows.emplace_back(entry.name, reader.tensor(entry.name, torch::kFloat32));
    sources.push_back(file.string());
  }
  apply_state(fields, config_path.string(), shadows, fmt::format("{}", fmt::join(sources, ", ")));
}

io::NamedTensors named_parameters(const torch::nn::Module& module) {
  io::NamedTensors out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  return out;
}

void ema_update_(const std::vector<torch::Tensor>& targets, const std::vector<torch::Tensor>& sources, double mu) {
  if (!(mu >= 0.0 && mu <= 1.0)) throw Error(fmt::format("ema_update_: the rate must be between 0 and 1, found {}", mu));
  if (targets.size() != sources.size()) {
    throw Error(fmt::format("ema_update_: {} target tensors but {} source tensors", targets.size(), sources.size()));
  }
  for (std::size_t i = 0; i < targets.size(); ++i) {
    if (!targets[i].sizes().equals(sources[i].sizes()) || targets[i].device() != sources[i].device()) {
      throw Error(fmt::format("ema_update_: tensor {}: target {} on {} but source {} on {}", i, shape_text(targets[i]),
                              targets[i].device().str(), shape_text(sources[i]), sources[i].device().str()));
    }
  }
  if (targets.empty()) return;  // the _foreach_ ops refuse empty lists
  torch::NoGradGuard no_grad;
  // LCM's update_ema: targ.mul_(rate).add_(src, alpha=1 - rate), fused over the lists.
  torch::_foreach_mul_(targets, mu);
  torch::_foreach_add_(targets, sources, 1.0 - mu);
}

void ema_update_(const io::NamedTensors& targets, const io::NamedTensors& sources, double mu) {
  std::vector<torch::Tensor> t, s;
  for (std::size_t i = 0; i < std::min(targets.size(), sources.size()); ++i) {
    if (targets[i].first != sources[i].first) {
      throw Error(fmt::format("ema_update_: tensor {} is '{}' in the target but '{}' in the source", i,
                              targets[i].first, sources[i].first));
    }
    t.push_back(targets[i].second);
    s.push_back(sources[i].second);
  }
  if (targets.size() != sources.size()) {
    throw Error(fmt::format("ema_update_: {} target tensors but {} source tensors", targets.size(), sources.size()));
  }
  ema_update_(t, s, mu);
}

}  // namespace lisadiff::train
