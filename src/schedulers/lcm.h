// Latent Consistency Models: diffusers' LCMScheduler (few-step sampling with a distilled
// model) and the pieces the LCM distillation recipe (recipes.md 2.4-2.5, diffusers'
// train_lcm_distill_sd_wds.py) builds itself: the DDIM ODE solver on a coarse timestep grid,
// the consistency boundary scalings c_skip / c_out, the guidance-scale embedding, and x0 / eps
// from a model output per prediction type.
//
// Numerics follow diffusers and the script op for op: alphas_cumprod in float32 (ddpm.h);
// c_skip / c_out in float32 for integer timesteps; the solver's previous alpha products are
// float64, as the script builds them (see LcmDdimSolver::ddim_step).
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include <torch/torch.h>

#include "config/scheduler_config.h"
#include "schedulers/ddim.h"

namespace lisadiff::schedulers {

// ---- Helpers of the distillation recipe ----------------------------------------------------

struct BoundaryScalings {
  torch::Tensor c_skip;  // sigma_data^2 / (s^2 + sigma_data^2), s = timestep_scaling * t
  torch::Tensor c_out;   // s / sqrt(s^2 + sigma_data^2)
};
// The consistency model's boundary condition (LCMScheduler's
// get_scalings_for_boundary_condition_discrete; the script's scalings_for_boundary_conditions):
// at t = 0, c_skip = 1 and c_out = 0. `timesteps` of any shape; the results have that shape,
// in float32 for integer timesteps (else the timesteps' dtype), on their device.
BoundaryScalings lcm_boundary_scalings(const torch::Tensor& timesteps, double timestep_scaling = 10.0,
                                       double sigma_data = 0.5);

// The guidance-scale embedding fed to an LCM UNet's time_cond_proj (recipes.md 2.5 step 4):
// for w [B], sin(1000 w f_i) for i < D/2 followed by cos(1000 w f_i), f_i = exp(-i ln(10000) /
// (D/2 - 1)), zero-padded by one column for odd D. Returns [B, embedding_dim] in `dtype` on
// w's device. Throws lisadiff::Error unless w is 1-D and embedding_dim >= 4.
torch::Tensor guidance_scale_embedding(const torch::Tensor& w, int64_t embedding_dim,
                                       torch::ScalarType dtype = torch::kFloat32);

// The script's "alpha and sigma schedules": sqrt(alphas_cumprod) and sqrt(1 - alphas_cumprod)
// (float32, [num_train_timesteps], on alphas_cumprod's device).
struct AlphaSigmaSchedules {
  torch::Tensor alphas;
  torch::Tensor sigmas;
};
AlphaSigmaSchedules alpha_sigma_schedules(const torch::Tensor& alphas_cumprod);

// x0 from a model output at integer timesteps [B] (recipes.md 2.5 step 5): epsilon:
// (z - sigma_t out) / alpha_t; sample: out; v_prediction: alpha_t z - sigma_t out. The
// per-sample alpha_t, sigma_t are float32 [B, 1, ...], so half inputs compute in float32, as
// in the script. Throws lisadiff::Error for an unknown prediction_type.
torch::Tensor lcm_predicted_original_sample(const torch::Tensor& model_output, const torch::Tensor& timesteps,
                                            const torch::Tensor& sample, const std::string& prediction_type,
                                            const AlphaSigmaSchedules& schedules);
// The noise estimate (recipes.md 2.5 step 6): epsilon: out; sample: (z - alpha_t out) /
// sigma_t; v_prediction: alpha_t out + sigma_t z.
torch::Tensor lcm_predicted_noise(const torch::Tensor& model_output, const torch::Tensor& timesteps,
                                  const torch::Tensor& sample, const std::string& prediction_type,
                                  const AlphaSigmaSchedules& schedules);

// The distillation script's DDIMSolver (recipes.md 2.4): a grid of num_ddim_timesteps
// timesteps k - 1, 2k - 1, ..., with k = num_train_timesteps // num_ddim_timesteps, and a
// deterministic DDIM step from grid point j to grid point j - 1 (to timestep 0's alpha for
// j = 0).
class LcmDdimSolver {
 public:
  // alphas_cumprod: float32 [num_train_timesteps] (DDPMNoiseSchedule::alphas_cumprod()).
  // Throws lisadiff::Error unless 1 <= num_ddim_timesteps <= num_train_timesteps.
  LcmDdimSolver(const torch::Tensor& alphas_cumprod, int num_ddim_timesteps = 50);

  int num_ddim_timesteps() const { return static_cast<int>(ddim_timesteps_.size(0)); }
  // int64 [num_ddim_timesteps]: [k - 1, 2k - 1, ..., num_ddim_timesteps * k - 1].
  const torch::Tensor& ddim_timesteps() const { return ddim_timesteps_; }
  // float32 [num_ddim_timesteps]: alphas_cumprod at the grid.
  const torch::Tensor& alpha_cumprods() const { return alpha_cumprods_; }
  // float64 [num_ddim_timesteps]: alphas_cumprod[0], then alphas_cumprod at the grid point
  // before (the script's list round trip makes these float64).
  const torch::Tensor& alpha_cumprods_prev() const { return alpha_cumprods_prev_; }

  // The solver's tensors on `device` (the script's solver.to(device)).
  LcmDdimSolver to(const torch::Device& device) const;

  // sqrt(a_prev[j]) x0 + sqrt(1 - a_prev[j]) eps for grid indices j = `index` [B] (int64,
  // 0..num_ddim_timesteps - 1). x0 and eps are [B, ...]. The coefficients are float64, so
  // float32 or half inputs give a float64 result, exactly as the script; it casts to float32
  // before the target model (`x_prev.float()`), and so should the caller.
  torch::Tensor ddim_step(const torch::Tensor& pred_x0, const torch::Tensor& pred_noise, const torch::Tensor& index) const;

 private:
  LcmDdimSolver() = default;
  torch::Tensor ddim_timesteps_, alpha_cumprods_, alpha_cumprods_prev_;
};

// ---- LCMScheduler (inference) -----------------------------------------------------------------

struct LCMStepOutput {
  torch::Tensor prev_sample;  // the sample for the next timestep (denoised on the last step)
  torch::Tensor denoised;     // c_out x0 + c_skip x_t
};

struct LCMStepOptions {
  // The noise injected between steps (the sample's shape), or a generator to draw it from
  // (see step_noise); unused on the last step.
  torch::Tensor noise;
  std::optional<at::Generator> generator;
};

class LCMScheduler {
 public:
  // Validates the config (`source` names it in errors). Supports every LCMScheduler key.
  explicit LCMScheduler(config::SchedulerConfig config, const std::string& source = "scheduler config");
  // Reads <dir>/scheduler_config.json or <dir>/scheduler/scheduler_config.json as an
  // LCMScheduler config (its defaults for missing keys), as the recipe's validation does with
  // the teacher's scheduler folder.
  static LCMScheduler from_pretrained(const std::filesystem::path& dir);

  const config::SchedulerConfig& config() const { return config_; }
  // float32, CPU, [num_train_timesteps].
  const torch::Tensor& alphas_cumprod() const { return alphas_cumprod_; }
  const torch::Tensor& final_alpha_cumprod() const { return final_alpha_cumprod_; }
  double init_noise_sigma() const { return 1.0; }

  // LCM's schedule: the distillation grid [k - 1, 2k - 1, ..., original * k - 1] with
  // k = num_train // original (original_inference_steps from the config unless given),
  // reversed, and num_inference_steps of its entries at floor(linspace(0, original, n,
  // endpoint=False)): 4 steps of SD1.5 are [999, 759, 499, 259]. Throws lisadiff::Error for
  // n < 1, n > original, or original > num_train_timesteps.
  void set_timesteps(int num_inference_steps, std::optional<int> original_inference_steps = std::nullopt);
  int num_inference_steps() const { return num_inference_steps_; }
  // int64, CPU, [num_inference_steps], descending; empty until set_timesteps.
  const torch::Tensor& timesteps() const { return timesteps_; }
  torch::Tensor scale_model_input(const torch::Tensor& sample, int64_t /*timestep*/) const { return sample; }

  // As the step uses them: lcm_boundary_scalings of the 0-d int64 timestep with the config's
  // timestep_scaling (0-d float32 tensors).
  BoundaryScalings scalings_for_boundary_condition(int64_t timestep) const;

  std::optional<int64_t> step_index() const { return step_index_; }
  void set_begin_index(int64_t begin_index) { begin_index_ = begin_index; }

  // One LCM step at `timestep` (an entry of timesteps()): x0 by prediction_type (clipped or
  // thresholded as configured), denoised = c_out x0 + c_skip x_t; before the last step,
  // prev_sample = sqrt(a_next) denoised + sqrt(1 - a_next) noise at the next timestep.
  // Throws lisadiff::Error before set_timesteps, past the last step, for a timestep not in
  // the schedule, shape mismatches, or a noise tensor together with a generator.
  LCMStepOutput step(const torch::Tensor& model_output, int64_t timestep, const torch::Tensor& sample,
                     const LCMStepOptions& options = {});

 private:
  config::SchedulerConfig config_;
  std::string source_;
  torch::Tensor alphas_cumprod_, final_alpha_cumprod_;
  int num_inference_steps_ = 0;
  torch::Tensor timesteps_;
  std::optional<int64_t> step_index_, begin_index_;
};

}  // namespace lisadiff::schedulers
