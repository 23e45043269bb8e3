#include "train/lisa.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <regex>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "config/json_number.h"
#include "core/error.h"
#include "train/ema.h"

namespace lisadiff::train {
namespace {

// The extended variant's "target" module names (lisa.md section 2): x10 sampling weight.
const char* const kWeightedTargets[] = {"to_q",   "to_k",    "to_v",  "to_out.0", "proj_in",
                                        "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                                        "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv",
                                        "time_emb_proj"};
constexpr double kRankDecay = 0.999;
constexpr double kTargetBoost = 10.0;

bool is_index(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

LisaUnit LisaOptions::unit_from_name(const std::string& name) {
  if (name == "tensor") return LisaUnit::kTensor;
  if (name == "block") return LisaUnit::kBlock;
  throw Error("unknown LISA unit '" + name + "' (known: tensor, block)");
}

LisaSampling LisaOptions::sampling_from_name(const std::string& name) {
  if (name == "uniform") return LisaSampling::kUniform;
  if (name == "weighted") return LisaSampling::kWeighted;
  throw Error("unknown LISA sampling '" + name + "' (known: uniform, weighted)");
}

namespace {

// Per parameter: whether its name matches one of `patterns` (searched regular expressions).
std::vector<bool> matches_any(const std::vector<std::pair<std::string, torch::Tensor>>& params,
                              const std::vector<std::string>& patterns) {
  std::vector<std::regex> compiled;
  for (const auto& pattern : patterns) {
    try {
      compiled.emplace_back(pattern);
    } catch (const std::regex_error& e) {
      throw Error("keep_fp32 pattern '" + pattern + "' is not a regular expression: " + e.what());
    }
  }
  std::vector<bool> out(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    out[i] = std::any_of(compiled.begin(), compiled.end(),
                         [&](const std::regex& r) { return std::regex_search(params[i].first, r); });
  }
  return out;
}

}  // namespace

void store_frozen_weights(const std::vector<std::pair<std::string, torch::Tensor>>& params, torch::ScalarType dtype,
                          const std::vector<std::string>& keep_fp32) {
  const auto keep = matches_any(params, keep_fp32);
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params.size(); ++i) {
    auto p = params[i].second;
    if (!keep[i] && !p.requires_grad() && p.scalar_type() != dtype) p.set_data(p.detach().to(dtype));
  }
}

std::string block_of(const std::string& name) {
  std::vector<std::string> parts;
  std::stringstream ss(name);
  for (std::string part; std::getline(ss, part, '.');) parts.push_back(part);
  static const char* const kContainers[] = {"resnets", "attentions", "downsamplers", "upsamplers", "layers"};
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    if (std::find(std::begin(kContainers), std::end(kContainers), parts[i]) != std::end(kContainers) &&
        is_index(parts[i + 1])) {
      std::string out = parts[0];
      for (std::size_t j = 1; j <= i + 1; ++j) out += "." + parts[j];
      return out;
    }
  }
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(0, dot);
}

LisaSampler::LisaSampler(const std::vector<std::pair<std::string, torch::Tensor>>& params, const LisaOptions& o)
    : sampling_(o.sampling), rng_(o.seed) {
  if (params.empty()) throw Error("LISA: the model has no parameters");
  // Units in registration order of their first parameter.
  std::map<std::string, std::size_t> unit_of;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const auto& name = params[i].first;
    const std::string unit = o.unit == LisaUnit::kTensor ? name : block_of(name);
    auto [it, inserted] = unit_of.emplace(unit, units_.size());
    if (inserted) units_.push_back({unit, {}, 0, false, 1.0});
    units_[it->second].params.push_back(i);
    units_[it->second].numel += params[i].second.numel();
  }
  if (o.always_on.empty()) {
    units_[unit_of.at(o.unit == LisaUnit::kTensor ? params.front().first : block_of(params.front().first))].always_on = true;
    units_[unit_of.at(o.unit == LisaUnit::kTensor ? params.back().first : block_of(params.back().first))].always_on = true;
  } else {
    for (const auto& pattern : o.always_on) {
      std::regex re;
      try {
        re = std::regex(pattern);
      } catch (const std::regex_error& e) {
        throw Error("LISA always-on pattern '" + pattern + "': " + e.what());
      }
      bool matched = false;
      for (auto& u : units_) {
        for (auto i : u.params) {
          if (std::regex_search(params[i].first, re)) u.always_on = matched = true;
        }
      }
      if (!matched) throw Error("LISA always-on pattern '" + pattern + "' matches no parameter");
    }
  }
  for (std::size_t u = 0; u < units_.size(); ++u) {
    if (!units_[u].always_on) candidates_.push_back(u);
  }
  const auto c = static_cast<int64_t>(candidates_.size());
  if (o.n_active >= 0) {
    n_ = o.n_active;
  } else {
    const double rate = o.rate >= 0 ? o.rate : std::min(1.0, 8.0 / static_cast<double>(units_.size()));
    if (rate > 1.0) throw Error(fmt::format("LISA rate {} is above 1", rate));
    n_ = static_cast<int64_t>(std::floor(static_cast<double>(c) * rate));
  }
  if (n_ > c) throw Error(fmt::format("LISA: {} active units asked for, but only {} can be drawn", n_, c));
  if (o.interval <= 0) throw Error(fmt::format("LISA interval must be positive, found {}", o.interval));

  if (sampling_ == LisaSampling::kWeighted) {
    // Rank by size, largest first: weight 0.999^rank, x10 for the target modules.
    std::vector<std::size_t> order = candidates_;
    std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return units_[a].numel > units_[b].numel; });
    double total = 0;
    for (std::size_t r = 0; r < order.size(); ++r) {
      auto& u = units_[order[r]];
      u.weight = std::pow(kRankDecay, static_cast<double>(r));
      for (auto i : u.params) {
        const auto& name = params[i].first;
        if (std::any_of(std::begin(kWeightedTargets), std::end(kWeightedTargets),
                        [&](const char* t) { return name.find(t) != std::string::npos; })) {
          u.weight *= kTargetBoost;
          break;
        }
      }
      total += u.weight;
    }
    for (auto u : candidates_) units_[u].weight /= total;
  }
}

uint64_t LisaSampler::below(uint64_t n) {
  // Rejection sampling: unbiased, and defined by this code rather than by the standard
  // library's distributions (which differ between implementations).
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  uint64_t x;
  do {
    x = rng_();
  } while (x >= limit);
  return x % n;
}

double LisaSampler::uniform01() { return (static_cast<double>(rng_() >> 11) + 0.5) * 0x1.0p-53; }

std::vector<std::size_t> LisaSampler::draw() {
  std::vector<std::size_t> out;
  if (sampling_ == LisaSampling::kUniform) {
    // Partial Fisher-Yates over the candidates.
    std::vector<std::size_t> pool = candidates_;
    for (int64_t k = 0; k < n_; ++k) {
      const auto j = static_cast<std::size_t>(k) + below(pool.size() - static_cast<std::size_t>(k));
      std::swap(pool[static_cast<std::size_t>(k)], pool[j]);
      out.push_back(pool[static_cast<std::size_t>(k)]);
    }
  } else {
    // Weighted sampling without replacement (Efraimidis-Spirakis): the n largest u^(1/w).
    std::vector<std::pair<double, std::size_t>> keys;
    for (auto u : candidates_) keys.emplace_back(std::log(uniform01()) / units_[u].weight, u);
    std::partial_sort(keys.begin(), keys.begin() + n_, keys.end(), [](auto& a, auto& b) { return a.first > b.first; });
    for (int64_t k = 0; k < n_; ++k) out.push_back(keys[static_cast<std::size_t>(k)].second);
  }
  std::sort(out.begin(), out.end());
  ++draws_;
  return out;
}

nlohmann::json LisaSampler::state() const {
  std::ostringstream rng;
  rng << rng_;
  return {{"rng", rng.str()}, {"draws", draws_}};
}

void LisaSampler::load_state(const nlohmann::json& state) {
  std::istringstream rng(state.at("rng").get<std::string>());
  rng >> rng_;
  if (!rng) throw Error("LISA sampler state: invalid RNG state");
  draws_ = config::whole_number_at(state, "draws", "LISA sampler state");
}

// ---------------------------------------------------------------------------------------

Lisa::Lisa(torch::nn::Module& model, LisaOptions options, FusedOptimizerOptions optimizer)
    : Lisa(named_parameters(model), std::move(options), std::move(optimizer)) {}

Lisa::Lisa(std::vector<std::pair<std::string, torch::Tensor>> params, LisaOptions options, FusedOptimizerOptions optimizer)
    : params_(std::move(params)),
      options_(std::move(options)),
      sampler_(params_, options_),
      optimizer_(params_, std::move(optimizer)),
      counts_(sampler_.units().size(), 0),
      keep_fp32_(params_.size(), true) {
  if (const auto& d = options_.frozen_dtype) {
    if (*d != torch::kBFloat16 && *d != torch::kHalf && *d != torch::kFloat32) {
      throw Error(std::string("LISA: frozen_dtype must be bfloat16, float16 or float32, not ") + c10::toString(*d));
    }
    keep_fp32_ = matches_any(params_, options_.keep_fp32);
  }
  recall();
}

void Lisa::activate_units(const std::vector<std::size_t>& units) {
  for (auto u : units) {
    if (u >= sampler_.units().size()) throw Error(fmt::format("LISA: unit index {} out of range", u));
  }
  torch::NoGradGuard no_grad;
  const auto& all = sampler_.units();
  std::vector<bool> on(params_.size(), false);
  for (std::size_t u = 0; u < all.size(); ++u) {
    if (all[u].always_on) {
      for (auto i : all[u].params) on[i] = true;
    }
  }
  for (auto u : units) {
    for (auto i : all[u].params) on[i] = true;
  }
  const auto frozen = options_.frozen_dtype.value_or(torch::kFloat32);
  for (std::size_t i = 0; i < params_.size(); ++i) {
    auto& [name, p] = params_[i];
    if (!on[i]) {
      if (p.requires_grad()) {
        p.set_requires_grad(false);
        p.mutable_grad().reset();
        if (!options_.keep_state) optimizer_.drop_state(name);
      }
      // The precision switch: a frozen tensor is rounded to frozen_dtype (set_data keeps
      // the tensor object, so the module and the optimizer's hook still hold it).
      if (!keep_fp32_[i] && p.scalar_type() != frozen) p.set_data(p.detach().to(frozen));
    } else {
      if (p.scalar_type() != torch::kFloat32 && options_.frozen_dtype) p.set_data(p.detach().to(torch::kFloat32));
      p.set_requires_grad(true);
    }
  }
  active_ = units;
  drawn_at_ = optimizer_.global_step();
}

void Lisa::recall() {
  activate_units(sampler_.draw());
  const int64_t active = active_parameters(), total = total_parameters();
  const auto names = active_names();
  spdlog::info("LISA recall at step {}: {} of {} units drawn, {} tensors active, {} of {} parameters ({:.2f} %)",
               optimizer_.global_step(), active_.size(), sampler_.units().size(), names.size(), active, total,
               100.0 * static_cast<double>(active) / static_cast<double>(std::max<int64_t>(total, 1)));
  spdlog::debug("LISA active tensors: {}", fmt::join(names, ", "));
}

int64_t Lisa::finish_step() {
  const int64_t step = optimizer_.finish_step();
  if (step - 1 == drawn_at_) {
    // The set's first step is done: now it counts as trained.
    const auto& all = sampler_.units();
    for (std::size_t u = 0; u < all.size(); ++u) {
      if (all[u].always_on) ++counts_[u];
    }
    for (auto u : active_) ++counts_[u];
    ++sets_trained_;
  }
  return step;
}

bool Lisa::redraw_if_due() {
  const int64_t step = optimizer_.global_step();
  if (step % options_.interval != 0 || drawn_at_ == step) return false;
  recall();
  return true;
}

int64_t Lisa::step() {
  const int64_t step = finish_step();
  redraw_if_due();
  return step;
}

std::vector<std::string> Lisa::active_names() const {
  std::vector<std::string> out;
  for (const auto& [name, p] : params_) {
    if (p.requires_grad()) out.push_back(name);
  }
  return out;
}

int64_t Lisa::active_parameters() const {
  int64_t n = 0;
  for (const auto& [name, p] : params_) n += p.requires_grad() ? p.numel() : 0;
  return n;
}

int64_t Lisa::total_parameters() const {
  int64_t n = 0;
  for (const auto& [name, p] : params_) n += p.numel();
  return n;
}

nlohmann::json Lisa::state() const {
  return {{"sampler", sampler_.state()},
          {"active_units", active_},
          {"activation_counts", counts_},
          {"global_step", optimizer_.global_step()},
          // What the indices refer to: a state only fits a run with the same units.
          {"units", sampler_.units().size()},
          {"unit_kind", options_.unit == LisaUnit::kTensor ? "tensor" : "block"},
          {"n_active", sampler_.n_active()},
          {"first_unit", sampler_.units().front().name},
          {"last_unit", sampler_.units().back().name},
          {"drawn_at", drawn_at_},
          {"sets_trained", sets_trained_},
          // The settings that decide the sequence of sets and what happens at a re-draw.
          {"interval", options_.interval},
          {"sampling", options_.sampling == LisaSampling::kUniform ? "uniform" : "weighted"},
          {"always_on", options_.always_on},
          {"keep_state", options_.keep_state}};
}

void Lisa::load_state(const nlohmann::json& state) {
  const auto& units = sampler_.units();
  const auto fail = [](const std::string& what) { throw Error("LISA state: " + what); };
  try {
    const std::string kind = options_.unit == LisaUnit::kTensor ? "tensor" : "block";
    constexpr const char* kWhat = "LISA state";
    const int64_t saved_units = config::whole_number_at(state, "units", kWhat);
    const int64_t saved_active = config::whole_number_at(state, "n_active", kWhat);
    const int64_t interval = config::whole_number_at(state, "interval", kWhat);
    const int64_t step = config::whole_number_at(state, "global_step", kWhat);
    const int64_t drawn_at = config::whole_number_at(state, "drawn_at", kWhat);
    const int64_t sets_trained = config::whole_number_at(state, "sets_trained", kWhat);
    auto counts = config::whole_numbers_at(state, "activation_counts", kWhat);
    const auto active_saved = config::whole_numbers_at(state, "active_units", kWhat);
    std::vector<std::size_t> active(active_saved.begin(), active_saved.end());
    if (saved_units != static_cast<int64_t>(units.size()) || state.at("unit_kind").get<std::string>() != kind ||
        state.at("first_unit").get<std::string>() != units.front().name ||
        state.at("last_unit").get<std::string>() != units.back().name) {
      fail(fmt::format("saved for {} {} units ({} ... {}), this run has {} {} units ({} ... {})",
                       saved_units, state.at("unit_kind").get<std::string>(),
                       state.at("first_unit").get<std::string>(), state.at("last_unit").get<std::string>(),
                       units.size(), kind, units.front().name, units.back().name));
    }
    if (saved_active != sampler_.n_active()) {
      fail(fmt::format("saved with {} active units, this run draws {}", saved_active, sampler_.n_active()));
    }
    const auto differs = [&](const char* key, const std::string& saved, const std::string& now) {
      if (saved != now) fail(fmt::format("saved with lisa_{} {}, this run has {}: resume with the same value", key, saved, now));
    };
    differs("interval", std::to_string(interval), std::to_string(options_.interval));
    differs("sampling", state.at("sampling").get<std::string>(),
            options_.sampling == LisaSampling::kUniform ? "uniform" : "weighted");
    const auto patterns = [](const std::vector<std::string>& p) {
      return p.empty() ? std::string("[] (first and last tensor)") : nlohmann::json(p).dump();
    };
    differs("always_on", patterns(state.at("always_on").get<std::vector<std::string>>()), patterns(options_.always_on));
    differs("keep_state", state.at("keep_state").get<bool>() ? "true" : "false", options_.keep_state ? "true" : "false");
    if (drawn_at < 0 || drawn_at > step) fail(fmt::format("drawn_at {} is outside [0, global step {}]", drawn_at, step));
    if (counts.size() != units.size()) fail("activation_counts has the wrong length");
    std::vector<std::size_t> sorted = active;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) fail("active_units repeats a unit");
    for (auto u : active) {
      if (u >= units.size() || units[u].always_on) fail(fmt::format("active unit {} is not a drawable unit", u));
    }
    if (static_cast<int64_t>(active.size()) != sampler_.n_active()) fail("active_units has the wrong size");
    sampler_.load_state(state.at("sampler"));
    optimizer_.set_global_step(step);
    activate_units(active);
    drawn_at_ = drawn_at;
    counts_ = std::move(counts);
    sets_trained_ = sets_trained;
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("malformed: ") + e.what());
  }
}

}  // namespace lisadiff::train
