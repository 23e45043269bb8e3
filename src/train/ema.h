// Exponential moving averages of model weights.
//
// EMA mirrors diffusers' EMAModel (src/diffusers/training_utils.py), which InstructPix2Pix
// uses with --use_ema (recipes.md §3.3), over any list of named parameters (a whole model
// or a subset). Per step() (call it once per optimizer step, after the update):
//   optimization_step += 1; decay = decay(optimization_step);
//   a tensor that requires grad:    shadow <- shadow - (1 - decay) * (shadow - theta)
//   a tensor that does not:         shadow <- theta          (a plain copy)
// The second rule is diffusers' and matters with LISA: the shadows of frozen tensors follow
// the live weights, so only the tensors that trained at that step are averaged.
//
// ema_update_() is the fixed-rate update of LCM distillation's target network (recipes.md
// §2.5 step 10) and of L-DPO's reference network: target <- mu * target + (1 - mu) * source,
// with no warmup and no bias correction.
//
// Shadows are float32 (whatever the parameters' dtype), on options.device or else on each
// parameter's own device. All updates run under torch::NoGradGuard.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "config/json_fields.h"
#include "io/safetensors.h"

namespace lisadiff::train {

struct EMAOptions {
  // diffusers EMAModel's constructor arguments and defaults.
  double decay = 0.9999;     // the cap of the decay rule
  double min_decay = 0.0;    // the floor (not applied while the rule returns 0, as diffusers)
  std::int64_t update_after_step = 0;
  bool use_ema_warmup = false;  // 1 - (1 + s/inv_gamma)^-power instead of (1 + s)/(10 + s)
  double inv_gamma = 1.0;
  double power = 2.0 / 3.0;
  // diffusers' foreach=True: the torch::_foreach_ kernels, one launch per list instead of
  // per tensor (the rounding can differ from the default path in the last bit).
  bool foreach = false;
  // Where the shadows live (e.g. kCPU to keep them off the GPU); default: with each parameter.
  std::optional<torch::Device> device;

  // Throws lisadiff::Error "<source>: field '<key>': <problem>" (source "EMA" when empty)
  // for decay or min_decay outside [0, 1], min_decay > decay, update_after_step < 0,
  // inv_gamma <= 0 or power <= 0, non-finite values.
  void validate(const std::string& source = "") const;
};

// The state a checkpoint holds: the shadows by parameter name (float32) and the scalar
// fields that diffusers' EMAModel.state_dict() has besides shadow_params.
struct EMAState {
  io::NamedTensors shadows;
  config::Json fields;  // decay, min_decay, optimization_step, update_after_step, use_ema_warmup, inv_gamma, power
};

class EMA {
 public:
  // Shadows start as float32 copies of `params` (names must be unique). The parameters are
  // not kept: step(), copy_to(), store() and restore() take them again, in the same order
  // and with the same names (checked), so a tensor replaced in between (a dtype change)
  // is no problem.
  explicit EMA(const io::NamedTensors& params, EMAOptions options = {});

  // diffusers' get_decay(optimization_step): with s = max(0, step - update_after_step - 1),
  // 0 when s == 0, else min(rule(s), decay) then max(.., min_decay).
  double decay(std::int64_t optimization_step) const;
  // The decay that the last step() used (0 before the first one).
  double current_decay() const { return current_decay_; }
  std::int64_t optimization_step() const { return optimization_step_; }

  // One EMA update from the live parameters (see the rules above).
  void step(const io::NamedTensors& params);
  // Writes the shadows into `params` (converting to their dtype and device).
  void copy_to(const io::NamedTensors& params) const;
  // Keeps a CPU copy of `params` (as diffusers), e.g. before copy_to() for validation...
  void store(const io::NamedTensors& params);
  // ...and writes it back and drops it. Throws lisadiff::Error when nothing is stored.
  void restore(const io::NamedTensors& params);
  bool has_stored() const { return !stored_.empty(); }

  const io::NamedTensors& shadows() const { return shadows_; }
  // Throws lisadiff::Error for a name the EMA does not track.
  const torch::Tensor& shadow(const std::string& name) const;
  const EMAOptions& options() const { return options_; }
  // Moves the shadows (and keeps them there for later steps).
  void to(torch::Device device);

  // The keys diffusers' EMAModel.save_pretrained adds to the model's config.json:
  // decay, min_decay, optimization_step, update_after_step, use_ema_warmup, inv_gamma, power.
  config::Json config_fields() const;
  // Reads those keys from `json` (other keys, e.g. the UNet's own, are ignored; missing ones
  // keep their values, as diffusers' load_state_dict). Errors name `source` and the key.
  void load_config_fields(const config::Json& json, const std::string& source);

  // Copies of the shadows (on their device) and config_fields().
  EMAState state() const;
  // Restores shadows and fields. Every tracked name must be present with the same shape;
  // missing, unexpected and mis-shaped names are reported together. The shadows keep their
  // device and float32. Errors name `source` (e.g. the checkpoint folder).
  void load_state(const EMAState& state, const std::string& source);

  // The folder diffusers' EMAModel.save_pretrained writes: config.json = `model_config` (the
  // tracked model's config.json, with _class_name) plus config_fields(), and
  // diffusion_pytorch_model.safetensors with the shadows under the parameter names. Both
  // files are written atomically.
  void save_pretrained(const std::filesystem::path& dir, const config::Json& model_config) const;
  // Loads such a folder (also one written by diffusers) into this EMA: load_config_fields()
  // from config.json, then the shadows by name as load_state() does.
  void load_pretrained(const std::filesystem::path& dir);

 private:
  void check_names(const io::NamedTensors& params, const char* what) const;
  // Checks everything, then changes the fields and the shadows together (or nothing).
  void apply_state(const config::Json& fields, const std::string& fields_source, const io::NamedTensors& shadows,
                   const std::string& shadows_source);

  EMAOptions options_;
  io::NamedTensors shadows_;
  std::vector<torch::Tensor> stored_;
  std::int64_t optimization_step_ = 0;
  double current_decay_ = 0.0;
};

// The module's parameters as (name, live tensor) pairs in registration order: not detached
// and not copied, so requires_grad is visible and copy_to() writes into the model.
io::NamedTensors named_parameters(const torch::nn::Module& module);

// target <- mu * target + (1 - mu) * source for every pair, as LCM's update_ema()
// (targ.mul_(mu).add_(src, alpha=1 - mu)), with torch::_foreach_mul_ / _foreach_add_.
// Lists must have the same length and pairwise shapes; mu in [0, 1]. Throws lisadiff::Error.
void ema_update_(const std::vector<torch::Tensor>& targets, const std::vector<torch::Tensor>& sources, double mu);
// The same with names, which must match pair by pair (a guard against mixing up models).
void ema_update_(const io::NamedTensors& targets, const io::NamedTensors& sources, double mu);

}  // namespace lisadiff::train
