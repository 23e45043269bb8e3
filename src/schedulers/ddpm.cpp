#include "schedulers/ddpm.h"

#include <cmath>

#include <fmt/format.h>

#include "core/error.h"

namespace lisadiff::schedulers {

namespace fs = std::filesystem;

torch::Tensor cosine_betas(int n, double max_beta) {
  const auto alpha_bar = [](double t) {
    const double c = std::cos((t + 0.008) / 1.008 * M_PI / 2);
    return c * c;
  };
  std::vector<double> betas(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    const double t1 = static_cast<double>(i) / n, t2 = static_cast<double>(i + 1) / n;
    betas[static_cast<std::size_t>(i)] = std::min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta);
  }
  return torch::tensor(betas, torch::kFloat64).to(torch::kFloat32);
}

torch::Tensor rescale_zero_terminal_snr(const torch::Tensor& betas) {
  auto alphas_bar_sqrt = torch::cumprod(1.0 - betas, 0).sqrt();
  const auto first = alphas_bar_sqrt[0].clone();
  const auto last = alphas_bar_sqrt[-1].clone();
  alphas_bar_sqrt -= last;
  alphas_bar_sqrt *= first / (first - last);
  const auto alphas_bar = alphas_bar_sqrt.pow(2);
  const auto n = alphas_bar.size(0);
  const auto alphas = torch::cat({alphas_bar.slice(0, 0, 1), alphas_bar.slice(0, 1, n) / alphas_bar.slice(0, 0, n - 1)});
  return 1 - alphas;
}

torch::Tensor betas_of(const config::SchedulerConfig& c) {
  torch::Tensor betas;
  const int n = c.num_train_timesteps;
  if (c.trained_betas) {
    betas = torch::tensor(*c.trained_betas, torch::kFloat64).to(torch::kFloat32);
  } else if (c.beta_schedule == "linear") {
    betas = torch::linspace(c.beta_start, c.beta_end, n, torch::kFloat32);
  } else if (c.beta_schedule == "scaled_linear") {
    betas = torch::linspace(std::sqrt(c.beta_start), std::sqrt(c.beta_end), n, torch::kFloat32).pow(2);
  } else if (c.beta_schedule == "squaredcos_cap_v2") {
    betas = cosine_betas(n);
  } else {
    throw Error("beta_schedule '" + c.beta_schedule + "' is not supported (linear, scaled_linear, squaredcos_cap_v2)");
  }
  if (c.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  return betas;
}

torch::Tensor alphas_cumprod_of(const config::SchedulerConfig& config) {
  return torch::cumprod(1.0 - betas_of(config), 0);
}

fs::path scheduler_config_file(const fs::path& dir) {
  if (fs::exists(dir / "scheduler_config.json")) return dir / "scheduler_config.json";
  if (fs::exists(dir / "scheduler" / "scheduler_config.json")) return dir / "scheduler" / "scheduler_config.json";
  throw Error(dir.string(), "has no scheduler_config.json (nor scheduler/scheduler_config.json)");
}

DDPMNoiseSchedule::DDPMNoiseSchedule(config::SchedulerConfig config, const std::string& source) : config_(std::move(config)) {
  config_.validate(source);
  betas_ = betas_of(config_);
  alphas_ = 1.0 - betas_;
  alphas_cumprod_ = torch::cumprod(alphas_, 0);
}

std::pair<int64_t, int64_t> integer_range(const torch::Tensor& values) {
  const auto [lo, hi] = torch::aminmax(values);
  const auto both = torch::stack({lo, hi}).to(torch::kCPU, torch::kLong);
  return {both[0].item<int64_t>(), both[1].item<int64_t>()};
}

DDPMNoiseSchedule DDPMNoiseSchedule::from_pretrained(const fs::path& dir) {
  const fs::path file = scheduler_config_file(dir);
  return DDPMNoiseSchedule(config::SchedulerConfig::from_file(file), file.string());
}

std::pair<torch::Tensor, torch::Tensor> DDPMNoiseSchedule::coefficients(const torch::Tensor& like, const torch::Tensor& other,
                                                                        const torch::Tensor& timesteps,
                                                                        const char* what) const {
  if (!like.defined() || !other.defined() || !timesteps.defined()) throw Error(std::string(what) + ": undefined tensor");
  if (like.sizes() != other.sizes()) {
    throw Error(fmt::format("{}: sample {} and noise {} differ in shape", what, fmt::join(like.sizes(), "x"),
                            fmt::join(other.sizes(), "x")));
  }
  if (timesteps.is_floating_point() || timesteps.is_complex()) {
    throw Error(std::string(what) + ": timesteps must be integers (diffusers indexes alphas_cumprod with them)");
  }
  if (timesteps.dim() > 1 || (timesteps.dim() == 1 && like.dim() > 0 && timesteps.size(0) != 1 &&
                              timesteps.size(0) != like.size(0))) {
    throw Error(fmt::format("{}: timesteps of shape [{}] for a batch of {}", what, fmt::join(timesteps.sizes(), ", "),
                            like.dim() > 0 ? like.size(0) : 0));
  }
  if (timesteps.numel() > 0) {
    const auto [lo, hi] = integer_range(timesteps);
    if (lo < 0 || hi >= config_.num_train_timesteps) {
      throw Error(fmt::format("{}: timesteps {}..{} outside [0, {})", what, lo, hi, config_.num_train_timesteps));
    }
  }
  const auto a = alphas_cumprod_.to(like.device()).to(like.scalar_type()).index({timesteps.to(like.device()).to(torch::kLong)});
  auto sqrt_a = a.pow(0.5).flatten();
  auto sqrt_1ma = (1 - a).pow(0.5).flatten();
  while (sqrt_a.dim() < like.dim()) {
    sqrt_a = sqrt_a.unsqueeze(-1);
    sqrt_1ma = sqrt_1ma.unsqueeze(-1);
  }
  return {sqrt_a, sqrt_1ma};
}

torch::Tensor DDPMNoiseSchedule::add_noise(const torch::Tensor& original, const torch::Tensor& noise,
                                           const torch::Tensor& timesteps) const {
  const auto [sqrt_a, sqrt_1ma] = coefficients(original, noise, timesteps, "add_noise");
  return sqrt_a * original + sqrt_1ma * noise;
}

torch::Tensor DDPMNoiseSchedule::get_velocity(const torch::Tensor& sample, const torch::Tensor& noise,
                                              const torch::Tensor& timesteps) const {
  const auto [sqrt_a, sqrt_1ma] = coefficients(sample, noise, timesteps, "get_velocity");
  return sqrt_a * noise - sqrt_1ma * sample;
}

torch::Tensor DDPMNoiseSchedule::training_target(const torch::Tensor& original, const torch::Tensor& noise,
                                                 const torch::Tensor& timesteps) const {
  if (config_.prediction_type == "epsilon") return noise;
  if (config_.prediction_type == "v_prediction") return get_velocity(original, noise, timesteps);
  return original;  // "sample" (validated)
}

}  // namespace lisadiff::schedulers
