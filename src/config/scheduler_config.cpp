#include "config/scheduler_config.h"

#include <algorithm>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "config/config_checks.h"
#include "core/error.h"
#include "io/atomic_file.h"

namespace lisadiff::config {
namespace {

template <class Self, class Visitor>
void visit_scheduler_fields(Self& c, Visitor& v) {
  v("num_train_timesteps", c.num_train_timesteps);
  v("beta_start", c.beta_start);
  v("beta_end", c.beta_end);
  v("beta_schedule", c.beta_schedule);
  v("trained_betas", c.trained_betas);
  v("prediction_type", c.prediction_type);
  v("timestep_spacing", c.timestep_spacing);
  v("steps_offset", c.steps_offset);
  v("clip_sample", c.clip_sample);
  v("clip_sample_range", c.clip_sample_range);
  v("thresholding", c.thresholding);
  v("dynamic_thresholding_ratio", c.dynamic_thresholding_ratio);
  v("sample_max_value", c.sample_max_value);
  v("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
  v("variance_type", c.variance_type);
  v("set_alpha_to_one", c.set_alpha_to_one);
  v("skip_prk_steps", c.skip_prk_steps);
  v("interpolation_type", c.interpolation_type);
  v("use_karras_sigmas", c.use_karras_sigmas);
  v("use_exponential_sigmas", c.use_exponential_sigmas);
  v("use_beta_sigmas", c.use_beta_sigmas);
  v("sigma_min", c.sigma_min);
  v("sigma_max", c.sigma_max);
  v("timestep_type", c.timestep_type);
  v("final_sigmas_type", c.final_sigmas_type);
  v("original_inference_steps", c.original_inference_steps);
  v("timestep_scaling", c.timestep_scaling);
  v("solver_order", c.solver_order);
  v("algorithm_type", c.algorithm_type);
  v("solver_type", c.solver_type);
  v("lower_order_final", c.lower_order_final);
  v("euler_at_final", c.euler_at_final);
  v("use_lu_lambdas", c.use_lu_lambdas);
  v("use_flow_sigmas", c.use_flow_sigmas);
  v("flow_shift", c.flow_shift);
  v("lambda_min_clipped", c.lambda_min_clipped);
  v("use_dynamic_shifting", c.use_dynamic_shifting);
  v("time_shift_type", c.time_shift_type);
}

struct SchedulerClass {
  const char* name;
  std::vector<std::string> own_keys;  // besides the shared ones
  void (*set_defaults)(SchedulerConfig&);
};

const std::vector<std::string> kSharedKeys = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                              "trained_betas", "prediction_type", "timestep_spacing", "steps_offset"};
const std::vector<std::string> kSampleClipKeys = {"clip_sample", "clip_sample_range", "thresholding",
                                                  "dynamic_thresholding_ratio", "sample_max_value",
                                                  "rescale_betas_zero_snr"};

std::vector<std::string> join(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Constructor keys and defaults as in diffusers (checked by tests against the fixture
// script's dump of each class's signature).
const std::vector<SchedulerClass>& classes() {
  static const std::vector<SchedulerClass> table = {
      {"DDPMScheduler", join(kSampleClipKeys, {"variance_type"}), [](SchedulerConfig&) {}},
      {"DDIMScheduler", join(kSampleClipKeys, {"set_alpha_to_one"}), [](SchedulerConfig&) {}},
      {"PNDMScheduler", {"skip_prk_steps", "set_alpha_to_one"}, [](SchedulerConfig& c) { c.set_alpha_to_one = false; }},
      {"EulerDiscreteScheduler",
       {"interpolation_type", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "sigma_min",
        "sigma_max", "timestep_type", "rescale_betas_zero_snr", "final_sigmas_type"},
       [](SchedulerConfig& c) { c.timestep_spacing = "linspace"; }},
      {"LCMScheduler",
       join(kSampleClipKeys, {"set_alpha_to_one", "original_inference_steps", "timestep_scaling"}),
       [](SchedulerConfig& c) {
         c.beta_start = 0.00085;
         c.beta_end = 0.012;
         c.beta_schedule = "scaled_linear";
         c.clip_sample = false;
       }},
      {"DPMSolverMultistepScheduler",
       {"solver_order", "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "algorithm_type",
        "solver_type", "lower_order_final", "euler_at_final", "use_karras_sigmas", "use_exponential_sigmas",
        "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas", "flow_shift", "final_sigmas_type",
        "lambda_min_clipped", "variance_type", "rescale_betas_zero_snr", "use_dynamic_shifting", "time_shift_type"},
       [](SchedulerConfig& c) {
         c.timestep_spacing = "linspace";
         c.variance_type.reset();
       }},
  };
  return table;
}

const SchedulerClass* find_class(const std::string& name) {
  for (const auto& cls : classes()) {
    if (name == cls.name) return &cls;
  }
  return nullptr;
}

const auto kVisitScheduler = [](auto& config, auto& visitor) { visit_scheduler_fields(config, visitor); };

}  // namespace

bool SchedulerConfig::is_known_class(const std::string& class_name) { return find_class(class_name) != nullptr; }

SchedulerConfig SchedulerConfig::defaults_for(const std::string& class_name) {
  SchedulerConfig config;
  config.class_name = class_name;
  if (const auto* cls = find_class(class_name)) cls->set_defaults(config);
  return config;
}

SchedulerConfig SchedulerConfig::from_json(const Json& json, const std::string& source) {
  FieldReader reader(json, source);
  std::string class_name = "DDPMScheduler";
  const auto it = json.find("_class_name");
  if (it != json.end() && !decode(*it, class_name)) {
    field_error(source, "_class_name", "expected a string, found " + describe_json(*it));
  }
  if (!is_known_class(class_name)) {
    spdlog::warn("{}: scheduler class '{}' is not one lisadiff implements; reading its noise schedule with "
                 "DDPMScheduler's defaults", source, class_name);
  }
  return read_fields(defaults_for(class_name), reader, kVisitScheduler);
}

// Python's json writes float("-inf") as the bare token -Infinity, which is not JSON; diffusers
// writes it for DPMSolverMultistepScheduler's lambda_min_clipped default. Outside strings that
// token becomes null (which lambda_min_clipped reads as -inf); anything else stays a syntax error.
Json read_scheduler_json_file(const std::filesystem::path& path) {
  const std::string text = io::read_file(path);
  const std::string token = "-Infinity";
  std::string cleaned;
  cleaned.reserve(text.size());
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      if (ch == '\\' && i + 1 < text.size()) {
        cleaned += ch;
        cleaned += text[++i];
        continue;
      }
      if (ch == '"') in_string = false;
    } else if (ch == '"') {
      in_string = true;
    } else if (text.compare(i, token.size(), token) == 0) {
      cleaned += "null";
      i += token.size() - 1;
      continue;
    }
    cleaned += ch;
  }
  try {
    return Json::parse(cleaned);
  } catch (const Json::exception& e) {
    throw Error(path.string(), std::string("not valid JSON: ") + e.what());
  }
}

SchedulerConfig SchedulerConfig::from_file(const std::filesystem::path& path) {
  return from_json(read_scheduler_json_file(path), path.string());
}

SchedulerConfig SchedulerConfig::from_json_as(const Json& json, const std::string& source,
                                              const std::string& class_name) {
  if (!is_known_class(class_name)) throw Error(source, "cannot read a scheduler config as unknown class '" + class_name + "'");
  FieldReader reader(json, source);
  return read_fields(defaults_for(class_name), reader, kVisitScheduler);
}

SchedulerConfig SchedulerConfig::from_file_as(const std::filesystem::path& path, const std::string& class_name) {
  return from_json_as(read_scheduler_json_file(path), path.string(), class_name);
}

void SchedulerConfig::validate(const std::string& source) const {
  require_positive(source, "num_train_timesteps", num_train_timesteps);
  require_one_of(source, "beta_schedule", beta_schedule, {"linear", "scaled_linear", "squaredcos_cap_v2"});
  require_one_of(source, "prediction_type", prediction_type, {"epsilon", "v_prediction", "sample"});
  require_one_of(source, "timestep_spacing", timestep_spacing, {"leading", "trailing", "linspace"});
  if (variance_type) {
    require_one_of(source, "variance_type", *variance_type,
                   {"fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"});
  }
  // Every beta is a per-step noise variance: outside (0, 1) the alphas turn negative or zero.
  const auto require_beta = [&](const char* key, double beta) {
    if (!(beta > 0.0 && beta < 1.0)) field_error(source, key, fmt::format("expected a value in (0, 1), found {}", beta));
  };
  if (!trained_betas) {
    require_beta("beta_start", beta_start);
    require_beta("beta_end", beta_end);
    if (beta_end < beta_start) {
      field_error(source, "beta_end", fmt::format("expected at least beta_start ({}), found {}", beta_start, beta_end));
    }
  } else {
    require_length(source, "trained_betas", trained_betas->size(), num_train_timesteps, "num_train_timesteps");
    for (const double beta : *trained_betas) require_beta("trained_betas", beta);
  }
  if (steps_offset < 0) field_error(source, "steps_offset", fmt::format("expected >= 0, found {}", steps_offset));
}

Json SchedulerConfig::to_json() const {
  const Json all = write_fields(*this, {{"_class_name", class_name}}, kVisitScheduler);
  const auto* cls = find_class(class_name);
  if (!cls) cls = find_class("DDPMScheduler");
  Json out = Json::object();
  for (const auto& [key, value] : all.items()) {
    const bool keep = key == "_class_name" ||
                      std::find(kSharedKeys.begin(), kSharedKeys.end(), key) != kSharedKeys.end() ||
                      std::find(cls->own_keys.begin(), cls->own_keys.end(), key) != cls->own_keys.end();
    if (keep) out[key] = value;
  }
  return out;
}

std::string SchedulerConfig::summary() const {
  return fmt::format("{}: {} steps, {} betas {}..{}, prediction {}, spacing {}, steps_offset {}", class_name,
                     num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type, timestep_spacing,
                     steps_offset);
}

}  // namespace lisadiff::config
