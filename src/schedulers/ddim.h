// diffusers' DDIMScheduler (sampling side): the inference timesteps for a number of steps
// and the reverse step x_t -> x_{t-k} (deterministic DDIM at eta = 0, DDPM-like noise for
// eta > 0), for epsilon, v_prediction and sample models, with clip_sample and dynamic
// thresholding of the predicted x0.
//
// Numerics follow diffusers op for op: alphas_cumprod in float32 (shared with the DDPM noise
// schedule, ddpm.h), the step's coefficients are 0-d float32 tensors, so the step computes
// in the sample's dtype. Integer timesteps as diffusers produces them (int64).
//
// Also here, because DDIM and LCM share them: threshold_sample (diffusers' _threshold_sample),
// the step output struct and the noise helper of the stochastic steps.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "config/scheduler_config.h"

namespace lisadiff::schedulers {

// What one reverse step returns: the sample at the next (lower) timestep and the model's
// estimate of the clean sample x0 (after clipping or thresholding).
struct SchedulerStepOutput {
  torch::Tensor prev_sample;
  torch::Tensor pred_original_sample;
};

// Dynamic thresholding (Imagen; diffusers' _threshold_sample): per sample, s is the `ratio`
// quantile of |x0| over all non-batch elements, clamped to [1, max_value]; x0 is clamped to
// [-s, s] and divided by s. Computes in float32 for half inputs and returns `sample`'s dtype.
// `sample` is [B, C, ...] with at least 2 dimensions.
torch::Tensor threshold_sample(const torch::Tensor& sample, double ratio, double max_value);

// The noise a stochastic step adds, as diffusers' randn_tensor draws it: `noise` itself when
// defined (it must have `like`'s shape; it is cast to `dtype` and moved to `like`'s device);
// else a standard normal draw of `like`'s shape in `dtype` from `generator` (on the
// generator's device, then moved to `like`'s device, so a CPU generator gives the same values
// on every device) or from the default generator of `like`'s device. Passing both `noise` and
// a generator is an error. `what` names the caller in errors.
torch::Tensor step_noise(const torch::Tensor& like, torch::ScalarType dtype, const torch::Tensor& noise,
                         const std::optional<at::Generator>& generator, const std::string& what);

// The checks every scheduler's step() makes on its inputs (both defined, same shape).
void check_step_inputs(const torch::Tensor& model_output, const torch::Tensor& sample, const std::string& what);
// The position of `timestep` in a schedule, as diffusers' index_for_timestep: the second match
// when the timestep appears twice (img2img starting mid-schedule), else the first. Throws
// naming `what` when it is not there.
int64_t index_in_schedule(const torch::Tensor& timesteps, double timestep, const std::string& what);

// The timestep spacings of diffusers' set_timesteps (Table 2 of "Common Diffusion Noise
// Schedules and Sample Steps are Flawed"), as numpy computes them in float64, descending and
// before any cast or offset:
// linspace(0, num_train - 1, n), unrounded.
std::vector<double> linspace_spacing(int num_train_timesteps, int n);
// arange(0, n) * (num_train // n), unrounded integers.
std::vector<double> leading_spacing(int num_train_timesteps, int n);
// round(arange(num_train, 0, -num_train / n)) (numpy's arange arithmetic and round half to
// even; the caller subtracts 1). For some n (61, 103, ... of 1000) numpy's arange yields n + 1
// values and diffusers then schedules an extra timestep -1; that is refused here with an
// error naming `who` instead of running a step at timestep -1. `start` (default
// num_train_timesteps) is where the spacing begins: DPM-Solver begins it below
// num_train_timesteps with lambda_min_clipped, where numpy may give fewer values (refused too).
std::vector<double> trailing_spacing(int num_train_timesteps, int n, const std::string& who, int start = -1);
// The integer timesteps of DDIM and PNDM by the config's timestep_spacing, descending:
// round(linspace), leading + steps_offset, or trailing - 1 (the errors of trailing_spacing).
std::vector<int64_t> integer_timesteps(const config::SchedulerConfig& config, int n, const std::string& who);

struct DDIMStepOptions {
  // 0: deterministic DDIM; 1: the DDPM posterior variance.
  double eta = 0.0;
  // Re-derive the noise estimate from the clipped x0 (Glide), as diffusers' flag.
  bool use_clipped_model_output = false;
  // For eta > 0: the noise to add (diffusers' variance_noise), or a generator to draw it from;
  // with neither, the device's default generator draws it.
  torch::Tensor variance_noise;
  std::optional<at::Generator> generator;
};

// What DDIM and PNDM share: a validated config, the float32 alpha products of its betas, the
// alpha product past the last step (1 with set_alpha_to_one, else alphas_cumprod[0]), integer
// timesteps after set_timesteps, standard normal initial latents, no input scaling.
class AlphaProductScheduler {
 public:
  const config::SchedulerConfig& config() const { return config_; }
  // float32, CPU, [num_train_timesteps].
  const torch::Tensor& alphas_cumprod() const { return alphas_cumprod_; }
  // The alpha product "before" timestep 0, used past the last step (0-d float32).
  const torch::Tensor& final_alpha_cumprod() const { return final_alpha_cumprod_; }
  // The initial latents are standard normal.
  double init_noise_sigma() const { return 1.0; }
  // 0 until set_timesteps.
  int num_inference_steps() const { return num_inference_steps_; }
  // int64, CPU, descending (see the scheduler's set_timesteps); empty until set_timesteps.
  const torch::Tensor& timesteps() const { return timesteps_; }
  // Neither scheduler scales the model input.
  torch::Tensor scale_model_input(const torch::Tensor& sample, int64_t /*timestep*/) const { return sample; }

 protected:
  // Validates `config` (`source` names it in errors). With ignore_zero_snr the betas are
  // not rescaled whatever rescale_betas_zero_snr says (PNDM takes no such key).
  AlphaProductScheduler(config::SchedulerConfig config, std::string source, bool ignore_zero_snr);

  config::SchedulerConfig config_;
  std::string source_;
  torch::Tensor alphas_cumprod_, final_alpha_cumprod_;
  int num_inference_steps_ = 0;
  torch::Tensor timesteps_;
};

class DDIMScheduler : public AlphaProductScheduler {
 public:
  // Validates the config (`source` names it in errors). Supports every DDIMScheduler key.
  explicit DDIMScheduler(config::SchedulerConfig config, const std::string& source = "scheduler config");
  // Reads <dir>/scheduler_config.json or <dir>/scheduler/scheduler_config.json as a
  // DDIMScheduler config (DDIM's defaults for missing keys, as DDIMScheduler.from_pretrained).
  static DDIMScheduler from_pretrained(const std::filesystem::path& dir);

  // The timesteps for `num_inference_steps` steps (1..num_train_timesteps), by
  // timestep_spacing: leading (multiples of num_train // n, plus steps_offset), trailing
  // (round(num_train - i * num_train / n) - 1) or linspace (round(linspace(0, num_train - 1, n))),
  // descending. Throws lisadiff::Error for n outside that range, and for the trailing step
  // counts diffusers mis-schedules (see trailing_spacing).
  void set_timesteps(int num_inference_steps);

  // One reverse step from `timestep` (in [0, num_train_timesteps)) to
  // timestep - num_train // num_inference_steps (diffusers' rule whatever the spacing; below
  // 0 it uses final_alpha_cumprod). model_output and sample have the same shape. Throws
  // lisadiff::Error before set_timesteps, for a timestep out of range, a shape mismatch, or
  // a noise tensor together with a generator.
  SchedulerStepOutput step(const torch::Tensor& model_output, int64_t timestep, const torch::Tensor& sample,
                           const DDIMStepOptions& options = {}) const;

 private:
  // The DDPM posterior variance between the two alpha products (formula 16 of the DDIM paper).
  torch::Tensor variance(const torch::Tensor& alpha_prod_t, const torch::Tensor& alpha_prod_t_prev) const;
};

// Shared by the DDIM and LCM steps: x0 from a model output by prediction_type, with
// alpha_prod_t a 0-d float32 tensor (diffusers' formulas; the pair is x0 and the noise
// estimate, which DDIM uses).
std::pair<torch::Tensor, torch::Tensor> ddim_x0_and_eps(const torch::Tensor& model_output, const torch::Tensor& sample,
                                                        const torch::Tensor& alpha_prod_t,
                                                        const std::string& prediction_type);

// clip_sample / thresholding of a predicted x0, as configured (DDIM, LCM).
torch::Tensor clip_or_threshold(const torch::Tensor& pred_original_sample, const config::SchedulerConfig& config);

}  // namespace lisadiff::schedulers
