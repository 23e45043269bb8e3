// scheduler/scheduler_config.json (diffusers). One struct holds the keys of every scheduler
// class lisadiff knows; the defaults are those of the class the file names in
// `_class_name`. Training recipes build a DDPM noise schedule from whatever class a pipeline
// ships (as diffusers' scripts do with DDPMScheduler.from_pretrained), so an unknown class
// is read with DDPMScheduler's defaults and a warning.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "config/json_fields.h"

namespace lisadiff::config {

struct SchedulerConfig {
  std::string class_name = "DDPMScheduler";
  // Shared by every class.
  int num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";  // linear, scaled_linear, squaredcos_cap_v2
  std::optional<std::vector<double>> trained_betas;
  std::string prediction_type = "epsilon";  // epsilon, v_prediction, sample
  std::string timestep_spacing = "leading";  // leading, trailing, linspace
  int steps_offset = 0;
  // DDPM / DDIM / LCM.
  bool clip_sample = true;
  double clip_sample_range = 1.0;
  bool thresholding = false;
  double dynamic_thresholding_ratio = 0.995;
  double sample_max_value = 1.0;
  bool rescale_betas_zero_snr = false;
  // DDPM ("fixed_small"); DPMSolverMultistep (null, or "learned" / "learned_range").
  std::optional<std::string> variance_type = "fixed_small";
  bool set_alpha_to_one = true;               // DDIM, PNDM, LCM
  bool skip_prk_steps = false;                // PNDM
  // EulerDiscrete.
  std::string interpolation_type = "linear";
  bool use_karras_sigmas = false;
  bool use_exponential_sigmas = false;
  bool use_beta_sigmas = false;
  std::optional<double> sigma_min;
  std::optional<double> sigma_max;
  std::string timestep_type = "discrete";
  std::string final_sigmas_type = "zero";     // also DPMSolverMultistep
  // LCM.
  int original_inference_steps = 50;
  double timestep_scaling = 10.0;
  // DPMSolverMultistep (also use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas,
  // final_sigmas_type, thresholding and its keys, rescale_betas_zero_snr, variance_type).
  int solver_order = 2;
  std::string algorithm_type = "dpmsolver++";  // dpmsolver, dpmsolver++, sde-dpmsolver, sde-dpmsolver++
  std::string solver_type = "midpoint";        // midpoint, heun
  bool lower_order_final = true;
  bool euler_at_final = false;
  bool use_lu_lambdas = false;
  bool use_flow_sigmas = false;
  double flow_shift = 1.0;
  // diffusers' default is -inf (no clipping), which Python's json writes as -Infinity: such a
  // file reads as null here (see from_file), and null means -inf.
  std::optional<double> lambda_min_clipped;
  bool use_dynamic_shifting = false;
  std::string time_shift_type = "exponential";

  // The defaults of `class_name` (DDPMScheduler's for a class lisadiff does not know).
  static SchedulerConfig defaults_for(const std::string& class_name);
  static SchedulerConfig from_json(const Json& json, const std::string& source);
  // Reads the file as JSON, accepting the bare -Infinity Python's json writes for
  // DPMSolverMultistepScheduler's lambda_min_clipped (read as null).
  static SchedulerConfig from_file(const std::filesystem::path& path);
  // The file read as `class_name` (one lisadiff implements): keys the file lacks take that
  // class's defaults, whatever its `_class_name` says, as diffusers' <Class>.from_config does
  // (e.g. SD1.5's PNDMScheduler file read as EulerDiscreteScheduler gets timestep_spacing
  // "linspace").
  static SchedulerConfig from_json_as(const Json& json, const std::string& source, const std::string& class_name);
  static SchedulerConfig from_file_as(const std::filesystem::path& path, const std::string& class_name);
  static bool is_known_class(const std::string& class_name);
  void validate(const std::string& source) const;
  // The keys `class_name`'s constructor takes, as diffusers writes them.
  Json to_json() const;
  std::string summary() const;
};

// A scheduler_config.json as JSON, accepting the bare -Infinity Python's json writes (read as
// null); what from_file reads and what pipelines keep to build any scheduler from. Throws
// lisadiff::Error naming the file for a missing or malformed one.
Json read_scheduler_json_file(const std::filesystem::path& path);

}  // namespace lisadiff::config
