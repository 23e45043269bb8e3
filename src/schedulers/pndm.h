// diffusers' PNDMScheduler (pseudo numerical methods, Liu et al. 2022): the scheduler SD1.5
// ships. With skip_prk_steps (SD1.5's setting) it is crowsonkb's PLMS sampler: a linear
// multistep method over the history of model outputs, started with one Heun-like step. Without
// it, F-PNDM: three Runge-Kutta (PRK) steps of four model evaluations each, then PLMS.
//
// Numerics follow diffusers op for op: alphas_cumprod in float32 (shared with the DDPM noise
// schedule, ddpm.h), the transfer step (formula 9 of the paper) with 0-d float32
// coefficients, so the step computes in the sample's dtype; the multistep combinations
// with Python-float weights. Timesteps are int64 as diffusers produces them.
//
// The steps are stateful, as in diffusers: step() keeps the model outputs ("ets"), a step
// counter and, for the first PLMS step and the Runge-Kutta steps, the sample the step started
// from. set_timesteps resets that state. The timestep passed to step() enters the formulas
// (the previous timestep is timestep - num_train_timesteps // num_inference_steps), the
// counter picks the method, so a loop passes timesteps() in order.
//
// Supported: every PNDMScheduler key (timestep_spacing leading/linspace/trailing with
// steps_offset, skip_prk_steps, set_alpha_to_one, prediction_type epsilon/v_prediction).
// Refused with an error naming the config and key: prediction_type "sample" (diffusers
// raises at the first step). Keys PNDMScheduler does not take (rescale_betas_zero_snr,
// clip_sample, ...) are ignored, as diffusers' PNDMScheduler.from_config ignores them.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "config/scheduler_config.h"
#include "schedulers/ddim.h"

namespace lisadiff::schedulers {

class PNDMScheduler : public AlphaProductScheduler {
 public:
  // Validates the config (`source` names it in errors).
  explicit PNDMScheduler(config::SchedulerConfig config, const std::string& source = "scheduler config");
  // Reads <dir>/scheduler_config.json or <dir>/scheduler/scheduler_config.json as a
  // PNDMScheduler config (PNDM's defaults for missing keys: set_alpha_to_one false,
  // skip_prk_steps false).
  static PNDMScheduler from_pretrained(const std::filesystem::path& dir);

  // The schedule for `num_inference_steps` steps (1..num_train_timesteps) and a fresh step
  // state. With skip_prk_steps the n spaced timesteps t_0 < ... < t_{n-1} give n + 1 steps,
  // [t_{n-1}, t_{n-2}, t_{n-2}, t_{n-3}, ..., t_0] (one entry for n = 1): the repeated one is
  // the PLMS start, which redoes the first step with the mean of two model outputs. Without
  // it, 12 Runge-Kutta timesteps around the last four spaced ones (half steps of
  // num_train // n // 2), then t_{n-4} ... t_0; that needs n >= 4 (diffusers fails with a
  // numpy broadcast error below). Throws lisadiff::Error for n out of range, and for the
  // trailing step counts diffusers mis-schedules (see trailing_spacing in ddim.h).
  void set_timesteps(int num_inference_steps);

  // The next step of the schedule from `timestep` (the current entry of timesteps()).
  // Returns prev_sample only (pred_original_sample is undefined: diffusers' PNDM has none).
  // Throws lisadiff::Error before set_timesteps, past the last step, for a timestep outside
  // [0, num_train_timesteps) or one whose step would index outside the training schedule,
  // and for shape mismatches.
  SchedulerStepOutput step(const torch::Tensor& model_output, int64_t timestep, const torch::Tensor& sample);

 private:
  SchedulerStepOutput step_prk(const torch::Tensor& model_output, int64_t timestep, const torch::Tensor& sample);
  SchedulerStepOutput step_plms(const torch::Tensor& model_output, int64_t timestep, const torch::Tensor& sample);
  // Formula (9) of the PNDM paper: x_t -> x_{t_prev} given the noise estimate.
  torch::Tensor prev_sample(const torch::Tensor& sample, int64_t timestep, int64_t prev_timestep,
                            torch::Tensor model_output) const;

  std::vector<int64_t> prk_timesteps_;  // empty with skip_prk_steps
  // Step state (diffusers' counter, ets, cur_sample, cur_model_output).
  int64_t counter_ = 0;
  std::vector<torch::Tensor> ets_;
  torch::Tensor cur_sample_, cur_model_output_;
};

}  // namespace lisadiff::schedulers
