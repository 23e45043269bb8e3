// diffusers' EulerDiscreteScheduler (k-diffusion's Euler sampler on the discrete DDPM
// schedule): noise levels sigma_t = sqrt((1 - a_t) / a_t), the inference timesteps and sigmas
// for a number of steps, the model-input scaling 1 / sqrt(sigma^2 + 1), and the Euler step
// x <- x + (x - x0) / sigma_hat * (sigma_next - sigma_hat), with optional "churn" noise.
//
// Numerics follow diffusers: the schedule is computed as numpy does (float64, from the
// float32 alphas_cumprod and sigmas), then stored in float32; timesteps are float32 (they
// are fractional for linspace spacing and Karras sigmas). The step computes in float32 (the
// sample is upcast, as diffusers does) and returns the model output's dtype.
//
// Supported: timestep_spacing leading/trailing/linspace (+ steps_offset for leading),
// interpolation_type linear/log_linear, use_karras_sigmas (with sigma_min/sigma_max),
// timestep_type discrete/continuous, final_sigmas_type zero/sigma_min, rescale_betas_zero_snr,
// prediction_type epsilon/v_prediction/sample. Refused with an error naming the config and
// key: use_exponential_sigmas, use_beta_sigmas. Karras timesteps may differ from diffusers'
// in the last float32 bit (numpy takes the float32 log-sigmas with its own SIMD log).
#pragma once

#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "config/scheduler_config.h"
#include "schedulers/ddim.h"

namespace lisadiff::schedulers {

// Shared with DPMSolverMultistepScheduler (dpm_solver.h): the sigma schedule as numpy
// computes it in float64.
// numpy.interp(x, arange(len(fp)), fp).
double interp_on_index_grid(double x, const std::vector<double>& fp);
// diffusers' _sigma_to_t: the fractional timestep whose log-sigma interpolates `sigma`
// between its two neighbours in the training schedule (log_sigmas hold float32 values).
double sigma_to_t(double sigma, const std::vector<double>& log_sigmas);
// A tensor's values as float64.
std::vector<double> to_doubles(const torch::Tensor& t);
// sqrt((1 - a) / a) per training timestep in float32 (as diffusers with torch), and their
// logs in float32 (as numpy's log of a float32 array; numpy's SIMD log may differ from libm's
// in the last bit), both as float64 values.
struct TrainingSigmas {
  std::vector<double> sigmas, log_sigmas;
};
TrainingSigmas training_sigmas(const torch::Tensor& alphas_cumprod);
// The sigma options Euler and DPM-Solver share: at most one of use_karras_sigmas,
// use_exponential_sigmas, use_beta_sigmas, and only Karras's (the others are refused naming
// `who`); final_sigmas_type zero or sigma_min; positive sigma_min / sigma_max. Errors name
// `source` and the key.
void check_sigma_options(const config::SchedulerConfig& config, const std::string& source, const std::string& who);
// Karras et al. (2022) eq. 5 with rho = 7: n sigmas from sigma_max down to sigma_min.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int n);

struct EulerStepOptions {
  // Stochastic sampling (Karras et al. Algorithm 2): where s_tmin <= sigma <= s_tmax the
  // noise level is raised to sigma_hat = sigma * (1 + gamma), gamma = min(s_churn / (number
  // of sigmas - 1), sqrt(2) - 1), by adding s_noise * noise * sqrt(sigma_hat^2 - sigma^2).
  // The default s_churn = 0 is the deterministic Euler step.
  double s_churn = 0.0;
  double s_tmin = 0.0;
  double s_tmax = std::numeric_limits<double>::infinity();
  double s_noise = 1.0;
  // The churn noise (model_output's shape), or a generator to draw it from (see step_noise).
  torch::Tensor noise;
  std::optional<at::Generator> generator;
};

class EulerDiscreteScheduler {
 public:
  // Validates the config (`source` names it in errors); unsupported options are errors.
  explicit EulerDiscreteScheduler(config::SchedulerConfig config, const std::string& source = "scheduler config");
  // Reads <dir>/scheduler_config.json or <dir>/scheduler/scheduler_config.json as an
  // EulerDiscreteScheduler config (its defaults for missing keys: timestep_spacing "linspace").
  static EulerDiscreteScheduler from_pretrained(const std::filesystem::path& dir);

  const config::SchedulerConfig& config() const { return config_; }
  // float32, CPU, [num_train_timesteps]; with rescale_betas_zero_snr the last entry is 2^-24
  // instead of 0, as diffusers sets it, so that the largest sigma stays finite.
  const torch::Tensor& alphas_cumprod() const { return alphas_cumprod_; }

  // The timesteps and sigmas for `num_inference_steps` steps (1..num_train_timesteps).
  // Resets the step index. Throws lisadiff::Error for n out of range, and for the trailing
  // step counts diffusers mis-schedules (see trailing_spacing in ddim.h).
  void set_timesteps(int num_inference_steps);
  // 0 until set_timesteps.
  int num_inference_steps() const { return num_inference_steps_; }
  // float32, CPU, [num_inference_steps], descending; empty until set_timesteps. With
  // timestep_type "continuous" and v_prediction: 0.25 * log(sigma).
  const torch::Tensor& timesteps() const { return timesteps_; }
  // float32, CPU: one sigma per timestep, then the final one (0, or the smallest training
  // sigma with final_sigmas_type "sigma_min"). With interpolation_type "log_linear" diffusers
  // makes n + 2 of them (the last two are never stepped to in an n-step loop); so does this.
  const torch::Tensor& sigmas() const { return sigmas_; }
  // The standard deviation of the initial latents: the largest sigma, or sqrt(max^2 + 1) with
  // "leading" spacing (diffusers' rule). Throws before set_timesteps.
  double init_noise_sigma() const;

  // The position in timesteps() of the next step; set from the first timestep passed to
  // scale_model_input or step (or from set_begin_index), then advanced by every step.
  std::optional<int64_t> step_index() const { return step_index_; }
  // Start at this index instead of looking the first timestep up (img2img pipelines).
  void set_begin_index(int64_t begin_index) { begin_index_ = begin_index; }
  // The index of `timestep` in timesteps() (compared in float32); the second of two equal
  // entries, as diffusers. Throws when it is not there.
  int64_t index_for_timestep(double timestep) const;

  // sample / sqrt(sigma^2 + 1) at the current step (the model sees unit-variance input).
  torch::Tensor scale_model_input(const torch::Tensor& sample, double timestep);
  // One Euler step from the current sigma to the next. `timestep` is an entry of timesteps().
  // Throws lisadiff::Error before set_timesteps, past the last step, for shape mismatches, or
  // for a noise tensor together with a generator.
  SchedulerStepOutput step(const torch::Tensor& model_output, double timestep, const torch::Tensor& sample,
                           const EulerStepOptions& options = {});

 private:
  void init_step_index(double timestep);

  config::SchedulerConfig config_;
  std::string source_;
  torch::Tensor alphas_cumprod_;
  int num_inference_steps_ = 0;
  torch::Tensor timesteps_, sigmas_;
  std::optional<int64_t> step_index_, begin_index_;
};

}  // namespace lisadiff::schedulers
