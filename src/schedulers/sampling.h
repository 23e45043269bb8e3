// The sampling schedulers behind one interface, as an inference pipeline drives them:
// set_timesteps, the initial noise scale, scale_model_input and step, with the timestep as the
// 0-d tensor the pipeline iterates over (int64 for DDIM and LCM, float32 for Euler, as
// diffusers' `for t in scheduler.timesteps`).
//
// make_sampler(name, scheduler_config_json) builds one from a pipeline's
// scheduler/scheduler_config.json the way diffusers' <Class>.from_config does: the keys the
// file has, that class's defaults for the rest (a PNDM file read as Euler gets Euler's
// "linspace" spacing).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "config/json_fields.h"
#include "config/scheduler_config.h"

namespace lisadiff::schedulers {

// What a pipeline passes to every step besides the tensors (diffusers'
// prepare_extra_step_kwargs: eta and the generator go to the schedulers whose step takes them).
struct SamplerStepSettings {
  double eta = 0.0;                       // DDIM only (diffusers ignores it elsewhere)
  std::optional<at::Generator> generator;  // the noise of stochastic steps (DDIM eta > 0, LCM)
};

class Sampler {
 public:
  virtual ~Sampler() = default;
  // diffusers' class name, e.g. "DDIMScheduler".
  virtual std::string class_name() const = 0;
  virtual const config::SchedulerConfig& config() const = 0;
  virtual void set_timesteps(int num_inference_steps) = 0;
  // CPU, descending; int64 or float32 by scheduler (see above).
  virtual torch::Tensor timesteps() const = 0;
  // The standard deviation of the initial latents (valid after set_timesteps).
  virtual double init_noise_sigma() const = 0;
  virtual torch::Tensor scale_model_input(const torch::Tensor& sample, const torch::Tensor& timestep) = 0;
  // One reverse step; returns the sample at the next timestep (LCM: the denoised sample on
  // the last step, as its step returns).
  virtual torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                             const torch::Tensor& sample, const SamplerStepSettings& settings) = 0;
};

// The class names make_sampler knows, in diffusers' spelling, and their short names.
std::vector<std::pair<std::string, std::string>> sampler_names();
// "DDIMScheduler" for "ddim", ... (diffusers' names pass through). Throws lisadiff::Error
// naming the known ones for anything else.
std::string sampler_class(const std::string& name);

// Builds `name` (a short or diffusers name; empty: the config's own `_class_name`) from a
// scheduler config JSON object; `source` names it in errors (unsupported options, unknown
// or training-only classes such as DDPMScheduler).
std::unique_ptr<Sampler> make_sampler(const std::string& name, const config::Json& scheduler_config,
                                      const std::string& source);

}  // namespace lisadiff::schedulers
