// The training side of diffusers' DDPMScheduler: the beta schedule, alphas_cumprod, the
// forward process (add_noise), the v-prediction target (get_velocity) and the training target
// for the configured prediction_type. Every recipe builds this from its pipeline's
// scheduler/scheduler_config.json, whatever class the file names (recipes.md section 1.6:
// the scripts call DDPMScheduler.from_pretrained on SD1.5's PNDM config).
//
// Numerics follow diffusers op for op: betas in float32 (linear: linspace; scaled_linear:
// linspace of the square roots, squared in float32; squaredcos_cap_v2: the Glide cosine
// computed in double, then float32), optional rescale to zero terminal SNR, alphas_cumprod
// as a float32 cumulative product. add_noise and get_velocity compute in the dtype of the
// sample (alphas_cumprod is cast to it first) and broadcast per sample.
#pragma once
#include <filesystem>

#include <torch/torch.h>

#include "config/scheduler_config.h"

namespace lisadiff::schedulers {

// diffusers' betas_for_alpha_bar(n, max_beta=0.999, "cosine"), float32.
torch::Tensor cosine_betas(int num_timesteps, double max_beta = 0.999);
// diffusers' rescale_zero_terminal_snr (float32 in, float32 out).
torch::Tensor rescale_zero_terminal_snr(const torch::Tensor& betas);
// {min, max} of an integer tensor with one device-to-host transfer (numel() > 0).
std::pair<int64_t, int64_t> integer_range(const torch::Tensor& values);

// The betas of a validated config (trained_betas, or the beta_schedule), rescaled when
// rescale_betas_zero_snr is set.
torch::Tensor betas_of(const config::SchedulerConfig& config);
// The float32 cumulative product of 1 - betas_of(config).
torch::Tensor alphas_cumprod_of(const config::SchedulerConfig& config);
// <dir>/scheduler_config.json, or <dir>/scheduler/scheduler_config.json for a pipeline
// folder; throws lisadiff::Error naming `dir` when neither exists.
std::filesystem::path scheduler_config_file(const std::filesystem::path& dir);

class DDPMNoiseSchedule {
 public:
  // Validates the config (`source` names it in errors).
  explicit DDPMNoiseSchedule(config::SchedulerConfig config, const std::string& source = "scheduler config");
  // Reads <dir>/scheduler_config.json, or <dir>/scheduler/scheduler_config.json for a
  // pipeline folder.
  static DDPMNoiseSchedule from_pretrained(const std::filesystem::path& dir);

  const config::SchedulerConfig& config() const { return config_; }
  int num_train_timesteps() const { return config_.num_train_timesteps; }
  // float32, CPU, [num_train_timesteps].
  const torch::Tensor& betas() const { return betas_; }
  const torch::Tensor& alphas() const { return alphas_; }
  const torch::Tensor& alphas_cumprod() const { return alphas_cumprod_; }

  // sqrt(a_t) x0 + sqrt(1 - a_t) noise, per sample; timesteps [B] (integers in
  // [0, num_train_timesteps)) or a 0-d tensor. Throws lisadiff::Error for shape mismatches
  // or timesteps out of range.
  torch::Tensor add_noise(const torch::Tensor& original, const torch::Tensor& noise, const torch::Tensor& timesteps) const;
  // sqrt(a_t) noise - sqrt(1 - a_t) sample.
  torch::Tensor get_velocity(const torch::Tensor& sample, const torch::Tensor& noise, const torch::Tensor& timesteps) const;
  // What the model learns to predict: noise (epsilon), get_velocity (v_prediction) or the
  // clean sample (sample).
  torch::Tensor training_target(const torch::Tensor& original, const torch::Tensor& noise,
                                const torch::Tensor& timesteps) const;

 private:
  // sqrt(a_t) and sqrt(1 - a_t) in `like`'s dtype and device, shaped to broadcast against it.
  std::pair<torch::Tensor, torch::Tensor> coefficients(const torch::Tensor& like, const torch::Tensor& other,
                                                       const torch::Tensor& timesteps, const char* what) const;

  config::SchedulerConfig config_;
  torch::Tensor betas_, alphas_, alphas_cumprod_;
};

}  // namespace lisadiff::schedulers
