#include "schedulers/lcm.h"

#include <cmath>

#include <fmt/format.h>

#include "config/json_fields.h"
#include "schedulers/ddpm.h"
#include "core/error.h"
#include "schedulers/ddpm.h"

namespace lisadiff::schedulers {
namespace {

// The checks of the script's extract_into_tensor: integer timesteps [B], one per sample of x,
// each an index into a schedule of `length` entries.
void check_indices(const torch::Tensor& timesteps, const torch::Tensor& x, int64_t length, const char* what) {
  if (timesteps.dim() != 1 || timesteps.is_floating_point()) {
    throw Error(fmt::format("{}: expected integer timesteps [B], found {} of shape [{}]", what,
                            std::string(c10::toString(timesteps.scalar_type())), fmt::join(timesteps.sizes(), ", ")));
  }
  if (x.dim() == 0 || x.size(0) != timesteps.size(0)) {
    throw Error(fmt::format("{}: {} timesteps for a batch of shape {}", what, timesteps.size(0), fmt::join(x.sizes(), "x")));
  }
  if (timesteps.numel() > 0) {
    const auto [lo, hi] = integer_range(timesteps);
    if (lo < 0 || hi >= length) throw Error(fmt::format("{}: indices {}..{} outside [0, {})", what, lo, hi, length));
  }
}

// extract_into_tensor itself: schedule[t] reshaped to [B, 1, ...] to broadcast over x
// (timesteps checked by check_indices).
torch::Tensor per_sample(const torch::Tensor& schedule, const torch::Tensor& timesteps, const torch::Tensor& x) {
  std::vector<int64_t> shape(static_cast<std::size_t>(x.dim()), 1);
  shape[0] = timesteps.size(0);
  return schedule.to(x.device()).gather(-1, timesteps.to(x.device(), torch::kLong)).reshape(shape);
}

}  // namespace

BoundaryScalings lcm_boundary_scalings(const torch::Tensor& timesteps, double timestep_scaling, double sigma_data) {
  const double sd2 = std::pow(sigma_data, 2);
  const auto scaled = timesteps * timestep_scaling;  // int64 * float -> float32, as in torch
  // Python evaluates `sd2 / tensor` as tensor.reciprocal() * sd2; so does this, for bitwise parity.
  const auto c_skip = (scaled.pow(2) + sd2).reciprocal() * sd2;
  const auto c_out = scaled / (scaled.pow(2) + sd2).pow(0.5);
  return {c_skip, c_out};
}

torch::Tensor guidance_scale_embedding(const torch::Tensor& w, int64_t embedding_dim, torch::ScalarType dtype) {
  if (!w.defined() || w.dim() != 1) throw Error("guidance_scale_embedding: expected w of shape [B]");
  if (embedding_dim < 4) {
    throw Error(fmt::format("guidance_scale_embedding: embedding_dim {} is too small (at least 4)", embedding_dim));
  }
  const int64_t half = embedding_dim / 2;
  const auto scaled_w = w * 1000.0;
  auto freq = torch::log(torch::tensor(10000.0f, torch::TensorOptions().device(w.device()))) / (half - 1);
  freq = torch::exp(torch::arange(half, torch::TensorOptions().dtype(dtype).device(w.device())) * -freq);
  const auto arg = scaled_w.to(dtype).unsqueeze(1) * freq.unsqueeze(0);
  auto emb = torch::cat({torch::sin(arg), torch::cos(arg)}, /*dim=*/1);
  if (embedding_dim % 2 == 1) emb = torch::constant_pad_nd(emb, {0, 1});
  return emb;
}

AlphaSigmaSchedules alpha_sigma_schedules(const torch::Tensor& alphas_cumprod) {
  return {torch::sqrt(alphas_cumprod), torch::sqrt(1 - alphas_cumprod)};
}

torch::Tensor lcm_predicted_original_sample(const torch::Tensor& model_output, const torch::Tensor& timesteps,
                                            const torch::Tensor& sample, const std::string& prediction_type,
                                            const AlphaSigmaSchedules& schedules) {
  const char* what = "lcm_predicted_original_sample";
  check_indices(timesteps, sample, schedules.alphas.size(0), what);
  const auto alphas = per_sample(schedules.alphas, timesteps, sample);
  const auto sigmas = per_sample(schedules.sigmas, timesteps, sample);
  if (prediction_type == "epsilon") return (sample - sigmas * model_output) / alphas;
  if (prediction_type == "sample") return model_output;
  if (prediction_type == "v_prediction") return alphas * sample - sigmas * model_output;
  throw Error(std::string(what) + ": prediction_type '" + prediction_type + "' is not supported (epsilon, v_prediction, sample)");
}

torch::Tensor lcm_predicted_noise(const torch::Tensor& model_output, const torch::Tensor& timesteps,
                                  const torch::Tensor& sample, const std::string& prediction_type,
                                  const AlphaSigmaSchedules& schedules) {
  const char* what = "lcm_predicted_noise";
  check_indices(timesteps, sample, schedules.alphas.size(0), what);
  const auto alphas = per_sample(schedules.alphas, timesteps, sample);
  const auto sigmas = per_sample(schedules.sigmas, timesteps, sample);
  if (prediction_type == "epsilon") return model_output;
  if (prediction_type == "sample") return (sample - alphas * model_output) / sigmas;
  if (prediction_type == "v_prediction") return alphas * model_output + sigmas * sample;
  throw Error(std::string(what) + ": prediction_type '" + prediction_type + "' is not supported (epsilon, v_prediction, sample)");
}

// ---- LcmDdimSolver --------------------------------------------------------------------------

LcmDdimSolver::LcmDdimSolver(const torch::Tensor& alphas_cumprod, int num_ddim_timesteps) {
  if (!alphas_cumprod.defined() || alphas_cumprod.dim() != 1) throw Error("LcmDdimSolver: expected alphas_cumprod [T]");
  const int64_t train = alphas_cumprod.size(0);
  if (num_ddim_timesteps < 1 || num_ddim_timesteps > train) {
    throw Error(fmt::format("LcmDdimSolver: num_ddim_timesteps {} outside [1, num_train_timesteps = {}]",
                            num_ddim_timesteps, train));
  }
  const int64_t k = train / num_ddim_timesteps;
  ddim_timesteps_ = torch::arange(1, num_ddim_timesteps + 1, torch::kInt64) * k - 1;
  const auto ac = alphas_cumprod.to(torch::kCPU, torch::kFloat32);
  alpha_cumprods_ = ac.index({ddim_timesteps_});
  alpha_cumprods_prev_ =
      torch::cat({ac.slice(0, 0, 1), ac.index({ddim_timesteps_.slice(0, 0, num_ddim_timesteps - 1)})}).to(torch::kFloat64);
}

LcmDdimSolver LcmDdimSolver::to(const torch::Device& device) const {
  LcmDdimSolver moved;
  moved.ddim_timesteps_ = ddim_timesteps_.to(device);
  moved.alpha_cumprods_ = alpha_cumprods_.to(device);
  moved.alpha_cumprods_prev_ = alpha_cumprods_prev_.to(device);
  return moved;
}

torch::Tensor LcmDdimSolver::ddim_step(const torch::Tensor& pred_x0, const torch::Tensor& pred_noise,
                                       const torch::Tensor& index) const {
  if (!pred_x0.defined() || !pred_noise.defined() || pred_x0.sizes() != pred_noise.sizes()) {
    throw Error("LcmDdimSolver::ddim_step: pred_x0 and pred_noise must be defined and have the same shape");
  }
  check_indices(index, pred_x0, alpha_cumprods_prev_.size(0), "LcmDdimSolver::ddim_step");
  const auto alpha_prev = per_sample(alpha_cumprods_prev_, index, pred_x0);
  const auto dir_xt = (1.0 - alpha_prev).sqrt() * pred_noise;
  return alpha_prev.sqrt() * pred_x0 + dir_xt;
}

// ---- LCMScheduler ----------------------------------------------------------------------------

LCMScheduler::LCMScheduler(config::SchedulerConfig config, const std::string& source)
    : config_(std::move(config)), source_(source) {
  config_.validate(source_);
  if (config_.original_inference_steps < 1) {
    config::field_error(source_, "original_inference_steps",
                        fmt::format("expected a positive integer, found {}", config_.original_inference_steps));
  }
  alphas_cumprod_ = alphas_cumprod_of(config_);
  final_alpha_cumprod_ = config_.set_alpha_to_one ? torch::tensor(1.0f) : alphas_cumprod_[0].clone();
}

LCMScheduler LCMScheduler::from_pretrained(const std::filesystem::path& dir) {
  const auto file = scheduler_config_file(dir);
  return LCMScheduler(config::SchedulerConfig::from_file_as(file, "LCMScheduler"), file.string());
}

void LCMScheduler::set_timesteps(int n, std::optional<int> original_inference_steps) {
  const std::string what = "LCMScheduler::set_timesteps";
  const int train = config_.num_train_timesteps;
  const int original = original_inference_steps.value_or(config_.original_inference_steps);
  if (original < 1 || original > train) {
    throw Error(fmt::format("{}: original_inference_steps {} outside [1, num_train_timesteps = {}]", what, original, train));
  }
  if (n < 1 || n > original) {
    throw Error(fmt::format("{}: num_inference_steps {} outside [1, original_inference_steps = {}] (the schedule is a "
                            "subset of the {}-step distillation grid)", what, n, original, original));
  }
  // The distillation grid, descending: original * k - 1, ..., 2k - 1, k - 1.
  const int k = train / original;
  std::vector<int64_t> grid(static_cast<std::size_t>(original));
  for (int i = 0; i < original; ++i) grid[static_cast<std::size_t>(i)] = int64_t{original - i} * k - 1;
  // numpy: floor(linspace(0, original, n, endpoint=False)) = floor(i * (original / n)).
  std::vector<int64_t> t(static_cast<std::size_t>(n));
  const double step = static_cast<double>(original) / n;
  for (int i = 0; i < n; ++i) t[static_cast<std::size_t>(i)] = grid[static_cast<std::size_t>(std::floor(i * step))];
  timesteps_ = torch::tensor(t, torch::kInt64);
  num_inference_steps_ = n;
  step_index_.reset();
  begin_index_.reset();
}

BoundaryScalings LCMScheduler::scalings_for_boundary_condition(int64_t timestep) const {
  return lcm_boundary_scalings(torch::tensor(timestep, torch::kInt64), config_.timestep_scaling);
}

LCMStepOutput LCMScheduler::step(const torch::Tensor& model_output, int64_t timestep, const torch::Tensor& sample,
                                 const LCMStepOptions& options) {
  const std::string what = "LCMScheduler::step";
  if (num_inference_steps_ == 0) throw Error(what + ": call set_timesteps first");
  check_step_inputs(model_output, sample, what);
  if (!step_index_) {
    step_index_ = begin_index_ ? *begin_index_ : index_in_schedule(timesteps_, static_cast<double>(timestep), what);
  }
  const int64_t i = *step_index_;
  if (i >= timesteps_.size(0)) {
    throw Error(fmt::format("{}: step {} is past the last of {} steps (call set_timesteps again)", what, i,
                            timesteps_.size(0)));
  }
  if (timestep < 0 || timestep >= config_.num_train_timesteps) {
    throw Error(fmt::format("{}: timestep {} outside [0, {})", what, timestep, config_.num_train_timesteps));
  }
  const int64_t prev_timestep = i + 1 < timesteps_.size(0) ? timesteps_[i + 1].item<int64_t>() : timestep;
  const auto alpha_prod_t = alphas_cumprod_[timestep];
  const auto alpha_prod_t_prev = prev_timestep >= 0 ? alphas_cumprod_[prev_timestep] : final_alpha_cumprod_;
  const auto beta_prod_t_prev = 1 - alpha_prod_t_prev;
  const auto [c_skip, c_out] = scalings_for_boundary_condition(timestep);

  auto x0 = ddim_x0_and_eps(model_output, sample, alpha_prod_t, config_.prediction_type).first;
  x0 = clip_or_threshold(x0, config_);
  const auto denoised = c_out * x0 + c_skip * sample;
  torch::Tensor prev_sample = denoised;
  // Multistep consistency sampling: re-noise the estimate to the next timestep.
  if (i != num_inference_steps_ - 1) {
    const auto noise = step_noise(model_output, denoised.scalar_type(), options.noise, options.generator, what);
    prev_sample = alpha_prod_t_prev.sqrt() * denoised + beta_prod_t_prev.sqrt() * noise;
  }
  step_index_ = i + 1;
  return {prev_sample, denoised};
}

}  // namespace lisadiff::schedulers
