#include "schedulers/ddim.h"

#include <cmath>

#include <fmt/format.h>

#include "core/error.h"
#include "schedulers/ddpm.h"

namespace lisadiff::schedulers {

torch::Tensor threshold_sample(const torch::Tensor& sample, double ratio, double max_value) {
  if (sample.dim() < 2) throw Error("threshold_sample: expected a [B, C, ...] sample, found " + std::to_string(sample.dim()) + " dimensions");
  const auto dtype = sample.scalar_type();
  auto x = sample;
  // quantile and clamp need float32 on CPU (diffusers upcasts the same way).
  if (dtype != torch::kFloat32 && dtype != torch::kFloat64) x = x.to(torch::kFloat32);
  const auto shape = x.sizes().vec();
  x = x.reshape({shape[0], -1});
  auto s = torch::quantile(x.abs(), ratio, /*dim=*/1, /*keepdim=*/false, "linear");
  s = torch::clamp(s, /*min=*/1, /*max=*/max_value).unsqueeze(1);
  x = torch::clamp(x, -s, s) / s;
  return x.reshape(shape).to(dtype);
}

torch::Tensor step_noise(const torch::Tensor& like, torch::ScalarType dtype, const torch::Tensor& noise,
                         const std::optional<at::Generator>& generator, const std::string& what) {
  if (noise.defined()) {
    if (generator) throw Error(what + ": pass either a noise tensor or a generator, not both");
    if (noise.sizes() != like.sizes()) {
      throw Error(fmt::format("{}: noise {} does not match the sample {}", what, fmt::join(noise.sizes(), "x"),
                              fmt::join(like.sizes(), "x")));
    }
    return noise.to(like.device(), dtype);
  }
  if (generator) {
    const auto draw = torch::randn(like.sizes(), *generator, torch::TensorOptions().dtype(dtype).device(generator->device()));
    return draw.to(like.device());
  }
  return torch::randn(like.sizes(), torch::TensorOptions().dtype(dtype).device(like.device()));
}

std::pair<torch::Tensor, torch::Tensor> ddim_x0_and_eps(const torch::Tensor& model_output, const torch::Tensor& sample,
                                                        const torch::Tensor& alpha_prod_t,
                                                        const std::string& prediction_type) {
  const auto beta_prod_t = 1 - alpha_prod_t;
  if (prediction_type == "epsilon") {
    return {(sample - beta_prod_t.pow(0.5) * model_output) / alpha_prod_t.pow(0.5), model_output};
  }
  if (prediction_type == "sample") {
    return {model_output, (sample - alpha_prod_t.pow(0.5) * model_output) / beta_prod_t.pow(0.5)};
  }
  if (prediction_type == "v_prediction") {
    return {alpha_prod_t.pow(0.5) * sample - beta_prod_t.pow(0.5) * model_output,
            alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample};
  }
  throw Error("prediction_type '" + prediction_type + "' is not supported (epsilon, v_prediction, sample)");
}

torch::Tensor clip_or_threshold(const torch::Tensor& pred_original_sample, const config::SchedulerConfig& c) {
  if (c.thresholding) return threshold_sample(pred_original_sample, c.dynamic_thresholding_ratio, c.sample_max_value);
  if (c.clip_sample) return pred_original_sample.clamp(-c.clip_sample_range, c.clip_sample_range);
  return pred_original_sample;
}

std::vector<double> linspace_spacing(int train, int n) {
  // numpy: i * ((stop - start) / (n - 1)) + start, with the last value set to stop.
  std::vector<double> v(static_cast<std::size_t>(n));
  const double step = n > 1 ? static_cast<double>(train - 1) / (n - 1) : 0.0;
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(n - 1 - i)] = (n > 1 && i == n - 1) ? train - 1 : i * step;
  return v;
}

std::vector<double> leading_spacing(int train, int n) {
  std::vector<double> v(static_cast<std::size_t>(n));
  const int ratio = train / n;
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(n - 1 - i)] = static_cast<double>(i) * ratio;
  return v;
}

std::vector<double> trailing_spacing(int train, int n, const std::string& who, int start_at) {
  // numpy's arange(start, stop, step) has ceil((stop - start) / step) values: start,
  // start + step, then start + i * delta with delta = (start + step) - start.
  const double start = start_at < 0 ? train : start_at, step = -static_cast<double>(train) / n;
  const auto length = static_cast<int64_t>(std::ceil((0.0 - start) / step));
  if (length > n) {
    throw Error(fmt::format("{}: timestep_spacing 'trailing' with {} steps: diffusers' schedule has {} timesteps here "
                            "(numpy arange rounding), the last one -1; choose another step count",
                            who, n, length));
  }
  if (length < n) {
    throw Error(fmt::format("{}: timestep_spacing 'trailing' with {} steps from timestep {} (lambda_min_clipped): "
                            "diffusers' schedule has only {} timesteps here; choose another spacing",
                            who, n, start, length));
  }
  const double delta = (start + step) - start;
  std::vector<double> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    const double x = i == 0 ? start : (i == 1 ? start + step : start + i * delta);
    v[static_cast<std::size_t>(i)] = std::nearbyint(x);
  }
  return v;
}

std::vector<int64_t> integer_timesteps(const config::SchedulerConfig& config, int n, const std::string& who) {
  const int train = config.num_train_timesteps;
  std::vector<int64_t> t;
  if (config.timestep_spacing == "linspace") {
    for (const double v : linspace_spacing(train, n)) t.push_back(static_cast<int64_t>(std::nearbyint(v)));
  } else if (config.timestep_spacing == "leading") {
    for (const double v : leading_spacing(train, n)) t.push_back(static_cast<int64_t>(v) + config.steps_offset);
  } else {  // trailing (validated)
    for (const double v : trailing_spacing(train, n, who)) t.push_back(static_cast<int64_t>(v) - 1);
  }
  return t;
}

void check_step_inputs(const torch::Tensor& model_output, const torch::Tensor& sample, const std::string& what) {
  if (!model_output.defined() || !sample.defined()) throw Error(what + ": undefined tensor");
  if (model_output.sizes() != sample.sizes()) {
    throw Error(fmt::format("{}: model_output {} and sample {} differ in shape", what,
                            fmt::join(model_output.sizes(), "x"), fmt::join(sample.sizes(), "x")));
  }
}

int64_t index_in_schedule(const torch::Tensor& timesteps, double timestep, const std::string& what) {
  const auto hits = torch::eq(timesteps, timestep).nonzero();
  if (hits.size(0) == 0) {
    throw Error(fmt::format("{}: timestep {} is not in the schedule (pass one of timesteps())", what, timestep));
  }
  return hits[hits.size(0) > 1 ? 1 : 0][0].item<int64_t>();
}

AlphaProductScheduler::AlphaProductScheduler(config::SchedulerConfig config, std::string source, bool ignore_zero_snr)
    : config_(std::move(config)), source_(std::move(source)) {
  config_.validate(source_);
  auto betas_config = config_;
  if (ignore_zero_snr) betas_config.rescale_betas_zero_snr = false;
  alphas_cumprod_ = alphas_cumprod_of(betas_config);
  final_alpha_cumprod_ = config_.set_alpha_to_one ? torch::tensor(1.0f) : alphas_cumprod_[0].clone();
}

DDIMScheduler::DDIMScheduler(config::SchedulerConfig config, const std::string& source)
    : AlphaProductScheduler(std::move(config), source, /*ignore_zero_snr=*/false) {}

DDIMScheduler DDIMScheduler::from_pretrained(const std::filesystem::path& dir) {
  const auto file = scheduler_config_file(dir);
  return DDIMScheduler(config::SchedulerConfig::from_file_as(file, "DDIMScheduler"), file.string());
}

void DDIMScheduler::set_timesteps(int n) {
  const int train = config_.num_train_timesteps;
  if (n < 1 || n > train) {
    throw Error(fmt::format("DDIMScheduler::set_timesteps: num_inference_steps {} outside [1, num_train_timesteps = {}]",
                            n, train));
  }
  num_inference_steps_ = n;
  timesteps_ = torch::tensor(integer_timesteps(config_, n, "DDIMScheduler::set_timesteps"), torch::kInt64);
}

torch::Tensor DDIMScheduler::variance(const torch::Tensor& alpha_prod_t, const torch::Tensor& alpha_prod_t_prev) const {
  const auto beta_prod_t = 1 - alpha_prod_t;
  const auto beta_prod_t_prev = 1 - alpha_prod_t_prev;
  return (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev);
}

SchedulerStepOutput DDIMScheduler::step(const torch::Tensor& model_output, int64_t timestep, const torch::Tensor& sample,
                                        const DDIMStepOptions& options) const {
  if (num_inference_steps_ == 0) throw Error("DDIMScheduler::step: call set_timesteps first");
  check_step_inputs(model_output, sample, "DDIMScheduler::step");
  const int train = config_.num_train_timesteps;
  if (timestep < 0 || timestep >= train) {
    throw Error(fmt::format("DDIMScheduler::step: timestep {} outside [0, {})", timestep, train));
  }
  const int64_t prev_timestep = timestep - train / num_inference_steps_;
  const auto alpha_prod_t = alphas_cumprod_[timestep];
  const auto alpha_prod_t_prev = prev_timestep >= 0 ? alphas_cumprod_[prev_timestep] : final_alpha_cumprod_;
  const auto beta_prod_t = 1 - alpha_prod_t;

  auto [pred_original_sample, pred_epsilon] = ddim_x0_and_eps(model_output, sample, alpha_prod_t, config_.prediction_type);
  pred_original_sample = clip_or_threshold(pred_original_sample, config_);

  const auto std_dev_t = options.eta * variance(alpha_prod_t, alpha_prod_t_prev).pow(0.5);
  if (options.use_clipped_model_output) {
    pred_epsilon = (sample - alpha_prod_t.pow(0.5) * pred_original_sample) / beta_prod_t.pow(0.5);
  }
  // "direction pointing to x_t" (formula 12 of the DDIM paper), then x_{t-1} without noise.
  const auto pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t.pow(2)).pow(0.5) * pred_epsilon;
  auto prev_sample = alpha_prod_t_prev.pow(0.5) * pred_original_sample + pred_sample_direction;
  if (options.eta > 0) {
    const auto noise = step_noise(model_output, model_output.scalar_type(), options.variance_noise, options.generator,
                                  "DDIMScheduler::step");
    prev_sample = prev_sample + std_dev_t * noise;
  }
  return {prev_sample, pred_original_sample};
}

}  // namespace lisadiff::schedulers
