#include "schedulers/euler.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "config/config_checks.h"
#include "config/json_fields.h"
#include "core/error.h"
#include "schedulers/ddpm.h"

namespace lisadiff::schedulers {

double interp_on_index_grid(double x, const std::vector<double>& fp) {
  const auto last = static_cast<double>(fp.size() - 1);
  if (x <= 0.0) return fp.front();
  if (x >= last) return fp.back();
  const auto j = static_cast<std::size_t>(std::floor(x));
  if (static_cast<double>(j) == x) return fp[j];
  const double slope = fp[j + 1] - fp[j];  // the grid step is 1
  return slope * (x - static_cast<double>(j)) + fp[j];
}

double sigma_to_t(double sigma, const std::vector<double>& log_sigmas) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  // numpy: cumsum(dists >= 0).argmax(), i.e. the last index at or below log_sigma (0 if none).
  std::size_t low = 0;
  for (std::size_t i = 0; i < log_sigmas.size(); ++i) {
    if (log_sigma - log_sigmas[i] >= 0) low = i;
  }
  low = std::min(low, log_sigmas.size() - 2);
  const std::size_t high = low + 1;
  const double lo = log_sigmas[low], hi = log_sigmas[high];
  const double w = std::clamp((lo - log_sigma) / (lo - hi), 0.0, 1.0);
  return (1 - w) * static_cast<double>(low) + w * static_cast<double>(high);
}

std::vector<double> to_doubles(const torch::Tensor& t) {
  const auto c = t.to(torch::kFloat64).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

TrainingSigmas training_sigmas(const torch::Tensor& alphas_cumprod) {
  // The training sigmas in float32, as diffusers computes them with torch; their logs in
  // float32, as numpy's log of a float32 array.
  TrainingSigmas out;
  out.sigmas = to_doubles(((1 - alphas_cumprod) / alphas_cumprod).pow(0.5));
  for (const double s : out.sigmas) out.log_sigmas.push_back(std::log(static_cast<float>(s)));
  return out;
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int n) {
  const double rho = 7.0;
  const double min_inv_rho = std::pow(sigma_min, 1 / rho), max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> sigmas(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    // numpy.linspace(0, 1, n): i * (1 / (n - 1)), the last one exactly 1.
    const double ramp = (n > 1 && i == n - 1) ? 1.0 : (n > 1 ? i * (1.0 / (n - 1)) : 0.0);
    sigmas[static_cast<std::size_t>(i)] = std::pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho);
  }
  return sigmas;
}

void check_sigma_options(const config::SchedulerConfig& c, const std::string& source, const std::string& who) {
  if (int{c.use_karras_sigmas} + int{c.use_exponential_sigmas} + int{c.use_beta_sigmas} > 1) {
    config::field_error(source, "use_karras_sigmas",
                        "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas can be true");
  }
  if (c.use_exponential_sigmas) {
    config::field_error(source, "use_exponential_sigmas", who + ": exponential sigmas are not supported (Karras sigmas are)");
  }
  if (c.use_beta_sigmas) {
    config::field_error(source, "use_beta_sigmas", who + ": beta sigmas are not supported (Karras sigmas are)");
  }
  config::require_one_of(source, "final_sigmas_type", c.final_sigmas_type, {"zero", "sigma_min"});
  if (c.sigma_min) config::require_positive(source, "sigma_min", *c.sigma_min);
  if (c.sigma_max) config::require_positive(source, "sigma_max", *c.sigma_max);
}

EulerDiscreteScheduler::EulerDiscreteScheduler(config::SchedulerConfig config, const std::string& source)
    : config_(std::move(config)), source_(source) {
  config_.validate(source_);
  const auto& c = config_;
  check_sigma_options(c, source_, "EulerDiscreteScheduler");
  config::require_one_of(source_, "interpolation_type", c.interpolation_type, {"linear", "log_linear"});
  config::require_one_of(source_, "timestep_type", c.timestep_type, {"discrete", "continuous"});
  alphas_cumprod_ = alphas_cumprod_of(config_);
  // diffusers: a zero-SNR schedule ends at alpha 0, i.e. sigma infinity; 2^-24 keeps it finite.
  if (c.rescale_betas_zero_snr) alphas_cumprod_[-1].fill_(std::ldexp(1.0, -24));
}

EulerDiscreteScheduler EulerDiscreteScheduler::from_pretrained(const std::filesystem::path& dir) {
  const auto file = scheduler_config_file(dir);
  return EulerDiscreteScheduler(config::SchedulerConfig::from_file_as(file, "EulerDiscreteScheduler"), file.string());
}

void EulerDiscreteScheduler::set_timesteps(int n) {
  const int train = config_.num_train_timesteps;
  if (n < 1 || n > train) {
    throw Error(fmt::format("EulerDiscreteScheduler::set_timesteps: num_inference_steps {} outside [1, "
                            "num_train_timesteps = {}]", n, train));
  }
  // Timesteps as numpy makes them, cast to float32 (offsets added in float32).
  std::vector<double> timesteps;
  if (config_.timestep_spacing == "linspace") {
    for (const double v : linspace_spacing(train, n)) timesteps.push_back(static_cast<float>(v));
  } else if (config_.timestep_spacing == "leading") {
    for (const double v : leading_spacing(train, n)) {
      timesteps.push_back(static_cast<float>(v) + static_cast<float>(config_.steps_offset));
    }
  } else {  // trailing (validated)
    for (const double v : trailing_spacing(train, n, "EulerDiscreteScheduler::set_timesteps")) {
      timesteps.push_back(static_cast<float>(v) - 1.0f);
    }
  }
  const auto [sigma_table, log_sigmas] = training_sigmas(alphas_cumprod_);
  std::vector<double> sigmas;
  if (config_.interpolation_type == "linear") {
    for (const double t : timesteps) sigmas.push_back(interp_on_index_grid(t, sigma_table));
  } else {  // log_linear: n + 1 sigmas evenly spaced in log, in float32 (torch.linspace)
    sigmas = to_doubles(torch::linspace(log_sigmas.back(), log_sigmas.front(), n + 1, torch::kFloat32).exp());
  }
  if (config_.use_karras_sigmas) {
    // Karras et al. (2022) eq. 5 with rho = 7, between the schedule's ends (or the configured
    // sigma_min / sigma_max), then each sigma's fractional timestep.
    const double lo = config_.sigma_min.value_or(sigmas.back()), hi = config_.sigma_max.value_or(sigmas.front());
    sigmas = karras_sigmas(lo, hi, n);
    timesteps.clear();
    for (const double s : sigmas) timesteps.push_back(static_cast<float>(sigma_to_t(s, log_sigmas)));
  }
  sigmas.push_back(config_.final_sigmas_type == "sigma_min" ? sigma_table.front() : 0.0);

  std::vector<float> sigmas32(sigmas.begin(), sigmas.end());
  sigmas_ = torch::tensor(sigmas32, torch::kFloat32);
  if (config_.timestep_type == "continuous" && config_.prediction_type == "v_prediction") {
    // diffusers builds these one 0-d tensor at a time: 0.25 * log(sigma) in float32.
    std::vector<float> continuous;
    for (std::size_t i = 0; i + 1 < sigmas32.size(); ++i) continuous.push_back(0.25f * std::log(sigmas32[i]));
    timesteps_ = torch::tensor(continuous, torch::kFloat32);
  } else {
    timesteps_ = torch::tensor(std::vector<float>(timesteps.begin(), timesteps.end()), torch::kFloat32);
  }
  num_inference_steps_ = n;
  step_index_.reset();
  begin_index_.reset();
}

double EulerDiscreteScheduler::init_noise_sigma() const {
  if (num_inference_steps_ == 0) throw Error("EulerDiscreteScheduler::init_noise_sigma: call set_timesteps first");
  auto max_sigma = sigmas_.max();
  if (config_.timestep_spacing == "leading") max_sigma = (max_sigma.pow(2) + 1).pow(0.5);
  return max_sigma.item<double>();
}

int64_t EulerDiscreteScheduler::index_for_timestep(double timestep) const {
  return index_in_schedule(timesteps_, timestep, "EulerDiscreteScheduler");
}

void EulerDiscreteScheduler::init_step_index(double timestep) {
  step_index_ = begin_index_ ? *begin_index_ : index_for_timestep(timestep);
}

torch::Tensor EulerDiscreteScheduler::scale_model_input(const torch::Tensor& sample, double timestep) {
  if (num_inference_steps_ == 0) throw Error("EulerDiscreteScheduler::scale_model_input: call set_timesteps first");
  if (!step_index_) init_step_index(timestep);
  const auto sigma = sigmas_[*step_index_];
  return sample / (sigma.pow(2) + 1).pow(0.5);
}

SchedulerStepOutput EulerDiscreteScheduler::step(const torch::Tensor& model_output, double timestep,
                                                 const torch::Tensor& sample, const EulerStepOptions& options) {
  const std::string what = "EulerDiscreteScheduler::step";
  if (num_inference_steps_ == 0) throw Error(what + ": call set_timesteps first");
  check_step_inputs(model_output, sample, what);
  if (!step_index_) init_step_index(timestep);
  const int64_t i = *step_index_;
  if (i + 1 >= sigmas_.size(0)) {
    throw Error(fmt::format("{}: step {} is past the last of {} steps (call set_timesteps again)", what, i,
                            num_inference_steps_));
  }
  auto x = sample.to(torch::kFloat32);
  const auto sigma = sigmas_[i];
  // diffusers compares the 0-d float32 sigma with the bounds, i.e. in float32.
  const float sigma_f = sigma.item<float>();
  const bool churn = static_cast<float>(options.s_tmin) <= sigma_f && sigma_f <= static_cast<float>(options.s_tmax);
  const double gamma =
      churn ? std::min(options.s_churn / static_cast<double>(sigmas_.size(0) - 1), std::sqrt(2.0) - 1) : 0.0;
  const auto sigma_hat = sigma * (gamma + 1);
  if (gamma > 0) {
    const auto noise = step_noise(model_output, model_output.scalar_type(), options.noise, options.generator, what);
    const auto eps = noise * options.s_noise;
    x = x + eps * (sigma_hat.pow(2) - sigma.pow(2)).pow(0.5);
  }
  torch::Tensor pred_original_sample;
  if (config_.prediction_type == "epsilon") {
    pred_original_sample = x - sigma_hat * model_output;
  } else if (config_.prediction_type == "v_prediction") {
    pred_original_sample = model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + (x / (sigma.pow(2) + 1));
  } else {  // sample (validated)
    pred_original_sample = model_output;
  }
  // The ODE derivative dx/dsigma, then one Euler step to the next sigma.
  const auto derivative = (x - pred_original_sample) / sigma_hat;
  const auto dt = sigmas_[i + 1] - sigma_hat;
  const auto prev_sample = (x + derivative * dt).to(model_output.scalar_type());
  step_index_ = i + 1;
  return {prev_sample, pred_original_sample};
}

}  // namespace lisadiff::schedulers
