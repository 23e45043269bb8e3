// diffusers' DPMSolverMultistepScheduler (DPM-Solver, Lu et al. 2022, and DPM-Solver++, Lu et
// al. 2022b): a multistep exponential-integrator ODE solver in lambda = log(alpha / sigma),
// reusing the model outputs of the previous one or two steps. The deterministic solvers:
// algorithm_type "dpmsolver++" (the data prediction x0, the default) and "dpmsolver" (the
// noise prediction), solver_order 1, 2, 3, solver_type midpoint or heun for order 2.
//
// Numerics follow diffusers: the schedule as numpy computes it (float64 from the float32
// training sigmas, then float32 sigmas and int64 timesteps; Karras sigmas as in euler.h); the
// step with 0-d float32 coefficients from the sigmas (alpha = 1 / sqrt(sigma^2 + 1)), the
// sample upcast to float32 and the result cast back to the model output's dtype.
//
// The step is stateful, as in diffusers: the last solver_order converted model outputs, the
// number of lower-order steps taken, the step index. set_timesteps resets that state.
//
// Supported: timestep_spacing linspace/leading (+ steps_offset)/trailing, lambda_min_clipped
// (null reads as diffusers' -inf), use_karras_sigmas (with sigma_min / sigma_max keys in the
// file, which diffusers' DPM also reads), final_sigmas_type zero/sigma_min, lower_order_final,
// euler_at_final, prediction_type epsilon/v_prediction/sample, thresholding (threshold_sample),
// rescale_betas_zero_snr (last alpha product 2^-24), diffusers' renames (algorithm_type "deis"
// -> "dpmsolver++", solver_type logrho/bh1/bh2 -> midpoint). Refused with an error naming the
// config and key: the SDE variants (sde-dpmsolver, sde-dpmsolver++), solver_order above 3,
// use_exponential_sigmas, use_beta_sigmas, use_lu_lambdas, use_flow_sigmas,
// use_dynamic_shifting, variance_type learned/learned_range, final_sigmas_type "zero" with
// "dpmsolver" (as diffusers); and trailing step counts whose numpy spacing has another length.
// Custom timestep lists are not implemented.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "config/scheduler_config.h"
#include "schedulers/ddim.h"

namespace lisadiff::schedulers {

class DPMSolverMultistepScheduler {
 public:
  // Validates the config (`source` names it in errors); unsupported options are errors.
  explicit DPMSolverMultistepScheduler(config::SchedulerConfig config, const std::string& source = "scheduler config");
  // Reads <dir>/scheduler_config.json or <dir>/scheduler/scheduler_config.json as a
  // DPMSolverMultistepScheduler config (its defaults for missing keys: timestep_spacing
  // "linspace", solver_order 2, "dpmsolver++", ...). Accepts the -Infinity diffusers writes.
  static DPMSolverMultistepScheduler from_pretrained(const std::filesystem::path& dir);

  const config::SchedulerConfig& config() const { return config_; }
  // float32, CPU, [num_train_timesteps]; with rescale_betas_zero_snr the last entry is 2^-24.
  const torch::Tensor& alphas_cumprod() const { return alphas_cumprod_; }
  // The initial latents are standard normal.
  double init_noise_sigma() const { return 1.0; }

  // The timesteps and sigmas for `num_inference_steps` steps (1..num_train_timesteps); resets
  // the solver state. Throws lisadiff::Error for n out of range, and for trailing step counts
  // where diffusers' numpy spacing has another length than n.
  void set_timesteps(int num_inference_steps);
  // 0 until set_timesteps.
  int num_inference_steps() const { return num_inference_steps_; }
  // int64, CPU, [num_inference_steps], descending (Karras timesteps may repeat at the ends);
  // empty until set_timesteps.
  const torch::Tensor& timesteps() const { return timesteps_; }
  // float32, CPU: one sigma per timestep, then the final one (0, or the smallest training
  // sigma with final_sigmas_type "sigma_min").
  const torch::Tensor& sigmas() const { return sigmas_; }

  // The position in timesteps() of the next step; set from the first timestep passed to step
  // (or from set_begin_index), then advanced by every step.
  std::optional<int64_t> step_index() const { return step_index_; }
  void set_begin_index(int64_t begin_index) { begin_index_ = begin_index; }
  // The index of `timestep` in timesteps(): the second of two equal entries, as diffusers.
  // Throws when it is not there (diffusers would silently take the last step instead).
  int64_t index_for_timestep(int64_t timestep) const;

  // DPM-Solver does not scale the model input.
  torch::Tensor scale_model_input(const torch::Tensor& sample, int64_t /*timestep*/) const { return sample; }
  // One solver step from the current sigma to the next. Returns prev_sample only
  // (pred_original_sample is undefined: diffusers returns none). Throws lisadiff::Error before
  // set_timesteps, for a timestep not in the schedule, past the last step, and for shape
  // mismatches.
  SchedulerStepOutput step(const torch::Tensor& model_output, int64_t timestep, const torch::Tensor& sample);

 private:
  // diffusers' convert_model_output: x0 (dpmsolver++) or epsilon (dpmsolver) at step i.
  torch::Tensor convert_model_output(const torch::Tensor& model_output, const torch::Tensor& sample, int64_t i) const;
  torch::Tensor first_order_update(const torch::Tensor& model_output, const torch::Tensor& sample, int64_t i) const;
  torch::Tensor second_order_update(const torch::Tensor& sample, int64_t i) const;
  torch::Tensor third_order_update(const torch::Tensor& sample, int64_t i) const;

  config::SchedulerConfig config_;
  std::string source_;
  torch::Tensor alphas_cumprod_;
  int num_inference_steps_ = 0;
  torch::Tensor timesteps_, sigmas_;
  // Solver state: the converted outputs, oldest first (undefined until filled).
  std::vector<torch::Tensor> model_outputs_;
  int lower_order_nums_ = 0;
  std::optional<int64_t> step_index_, begin_index_;
};

}  // namespace lisadiff::schedulers
