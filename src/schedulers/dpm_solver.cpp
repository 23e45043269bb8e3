#include "schedulers/dpm_solver.h"

#include <cmath>

#include <fmt/format.h>

#include "config/config_checks.h"
#include "config/json_fields.h"
#include "core/error.h"
#include "schedulers/ddpm.h"
#include "schedulers/euler.h"

namespace lisadiff::schedulers {
namespace {

// alpha_t = 1 / sqrt(sigma^2 + 1) and sigma_t = sigma alpha_t (diffusers'
// _sigma_to_alpha_sigma_t on a 0-d float32 sigma; Python's 1 / x is x.reciprocal()).
std::pair<torch::Tensor, torch::Tensor> alpha_sigma(const torch::Tensor& sigma) {
  const auto alpha_t = (sigma.pow(2) + 1).pow(0.5).reciprocal();
  return {alpha_t, sigma * alpha_t};
}

torch::Tensor lambda_of(const std::pair<torch::Tensor, torch::Tensor>& alpha_sigma_t) {
  return torch::log(alpha_sigma_t.first) - torch::log(alpha_sigma_t.second);
}

}  // namespace

DPMSolverMultistepScheduler::DPMSolverMultistepScheduler(config::SchedulerConfig config, const std::string& source)
    : config_(std::move(config)), source_(source) {
  config_.validate(source_);
  auto& c = config_;
  const auto refuse = [&](const char* key, const std::string& what) {
    config::field_error(source_, key, "DPMSolverMultistepScheduler: " + what + " is not supported");
  };
  check_sigma_options(c, source_, "DPMSolverMultistepScheduler");
  if (c.use_lu_lambdas) refuse("use_lu_lambdas", "Lu's uniform-lambda schedule");
  if (c.use_flow_sigmas) refuse("use_flow_sigmas", "flow-matching sigmas");
  if (c.use_dynamic_shifting) refuse("use_dynamic_shifting", "dynamic shifting (flow matching)");
  if (c.variance_type && (*c.variance_type == "learned" || *c.variance_type == "learned_range")) {
    refuse("variance_type", "a model output with learned variance ('" + *c.variance_type + "')");
  }
  // diffusers' constructor renames these (register_to_config), so does this.
  if (c.algorithm_type == "deis") c.algorithm_type = "dpmsolver++";
  if (c.solver_type == "logrho" || c.solver_type == "bh1" || c.solver_type == "bh2") c.solver_type = "midpoint";
  config::require_one_of(source_, "algorithm_type", c.algorithm_type,
                         {"dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"});
  if (c.algorithm_type.rfind("sde-", 0) == 0) {
    refuse("algorithm_type", "the stochastic solver '" + c.algorithm_type + "' (dpmsolver++ and dpmsolver are)");
  }
  config::require_one_of(source_, "solver_type", c.solver_type, {"midpoint", "heun"});
  if (c.solver_order < 1 || c.solver_order > 3) {
    config::field_error(source_, "solver_order", fmt::format("expected 1, 2 or 3, found {}", c.solver_order));
  }
  if (c.algorithm_type == "dpmsolver" && c.final_sigmas_type == "zero") {
    // The noise-prediction solver divides by the final sigma (diffusers raises too).
    config::field_error(source_, "final_sigmas_type",
                        "'zero' is not supported with algorithm_type 'dpmsolver'; use 'sigma_min'");
  }
  alphas_cumprod_ = alphas_cumprod_of(config_);
  // diffusers: a zero-SNR schedule ends at alpha 0, i.e. sigma infinity; 2^-24 keeps it finite.
  if (c.rescale_betas_zero_snr) alphas_cumprod_[-1].fill_(std::ldexp(1.0, -24));
}

DPMSolverMultistepScheduler DPMSolverMultistepScheduler::from_pretrained(const std::filesystem::path& dir) {
  const auto file = scheduler_config_file(dir);
  return DPMSolverMultistepScheduler(config::SchedulerConfig::from_file_as(file, "DPMSolverMultistepScheduler"),
                                     file.string());
}

void DPMSolverMultistepScheduler::set_timesteps(int n) {
  const int train = config_.num_train_timesteps;
  const std::string who = "DPMSolverMultistepScheduler::set_timesteps";
  if (n < 1 || n > train) {
    throw Error(fmt::format("{}: num_inference_steps {} outside [1, num_train_timesteps = {}]", who, n, train));
  }
  const auto [sigma_table, log_sigmas] = training_sigmas(alphas_cumprod_);
  std::vector<double> sigmas;
  std::vector<int64_t> timesteps;
  if (config_.use_karras_sigmas) {
    // Karras sigmas between the training schedule's ends (or the file's sigma_min /
    // sigma_max), each mapped to its fractional timestep; rounded except for the cosine
    // schedule, then truncated to int64 (as numpy's astype). The spacing is not used.
    sigmas = karras_sigmas(config_.sigma_min.value_or(sigma_table.front()),
                           config_.sigma_max.value_or(sigma_table.back()), n);
    for (const double s : sigmas) {
      double t = sigma_to_t(s, log_sigmas);
      if (config_.beta_schedule != "squaredcos_cap_v2") t = std::nearbyint(t);
      timesteps.push_back(static_cast<int64_t>(t));
    }
  } else {
    // lambda_min_clipped: the spacing ends at the last timestep whose lambda = log(alpha /
    // sigma) is at least the bound (torch.searchsorted on the float32 lambdas, as diffusers).
    int64_t last = train;
    if (config_.lambda_min_clipped) {
      const auto lambdas = torch::log(alphas_cumprod_.sqrt()) - torch::log((1 - alphas_cumprod_).sqrt());
      last = train - torch::searchsorted(lambdas.flip({0}), torch::Scalar(*config_.lambda_min_clipped)).item<int64_t>();
    }
    const int span = static_cast<int>(last);
    if (config_.timestep_spacing == "linspace") {
      // round(linspace(0, last - 1, n + 1)), descending, without the final 0.
      auto v = linspace_spacing(span, n + 1);
      v.pop_back();
      for (const double t : v) timesteps.push_back(static_cast<int64_t>(std::nearbyint(t)));
    } else if (config_.timestep_spacing == "leading") {
      // arange(0, n + 1) * (last // (n + 1)), descending, without the final 0, + steps_offset.
      auto v = leading_spacing(span, n + 1);
      v.pop_back();
      for (const double t : v) timesteps.push_back(static_cast<int64_t>(t) + config_.steps_offset);
    } else {  // trailing (validated): round(arange(last, 0, -train / n)) - 1
      for (const double t : trailing_spacing(train, n, who, span)) timesteps.push_back(static_cast<int64_t>(t) - 1);
    }
    for (const int64_t t : timesteps) sigmas.push_back(interp_on_index_grid(static_cast<double>(t), sigma_table));
  }
  sigmas.push_back(config_.final_sigmas_type == "sigma_min" ? sigma_table.front() : 0.0);
  sigmas_ = torch::tensor(std::vector<float>(sigmas.begin(), sigmas.end()), torch::kFloat32);
  timesteps_ = torch::tensor(timesteps, torch::kInt64);
  num_inference_steps_ = static_cast<int>(timesteps.size());
  model_outputs_.assign(static_cast<std::size_t>(config_.solver_order), torch::Tensor());
  lower_order_nums_ = 0;
  step_index_.reset();
  begin_index_.reset();
}

int64_t DPMSolverMultistepScheduler::index_for_timestep(int64_t timestep) const {
  return index_in_schedule(timesteps_, static_cast<double>(timestep), "DPMSolverMultistepScheduler");
}

torch::Tensor DPMSolverMultistepScheduler::convert_model_output(const torch::Tensor& model_output,
                                                                const torch::Tensor& sample, int64_t i) const {
  const auto& c = config_;
  const auto [alpha_t, sigma_t] = alpha_sigma(sigmas_[i]);
  if (c.algorithm_type == "dpmsolver++") {
    // DPM-Solver++ integrates the data prediction x0.
    torch::Tensor x0;
    if (c.prediction_type == "epsilon") {
      x0 = (sample - sigma_t * model_output) / alpha_t;
    } else if (c.prediction_type == "sample") {
      x0 = model_output;
    } else {  // v_prediction (validated)
      x0 = alpha_t * sample - sigma_t * model_output;
    }
    return c.thresholding ? threshold_sample(x0, c.dynamic_thresholding_ratio, c.sample_max_value) : x0;
  }
  // DPM-Solver integrates the noise prediction.
  torch::Tensor eps;
  if (c.prediction_type == "epsilon") {
    eps = model_output;
  } else if (c.prediction_type == "sample") {
    eps = (sample - alpha_t * model_output) / sigma_t;
  } else {  // v_prediction
    eps = alpha_t * model_output + sigma_t * sample;
  }
  if (c.thresholding) {
    auto x0 = (sample - sigma_t * eps) / alpha_t;
    x0 = threshold_sample(x0, c.dynamic_thresholding_ratio, c.sample_max_value);
    eps = (sample - alpha_t * x0) / sigma_t;
  }
  return eps;
}

// The updates below are diffusers' formulas term by term (same 0-d float32 coefficients,
// same order of operations); h is the step in lambda, r0, r1 the ratios of the previous steps.
torch::Tensor DPMSolverMultistepScheduler::first_order_update(const torch::Tensor& model_output,
                                                              const torch::Tensor& sample, int64_t i) const {
  const auto t = alpha_sigma(sigmas_[i + 1]), s = alpha_sigma(sigmas_[i]);
  const auto& [alpha_t, sigma_t] = t;
  const auto h = lambda_of(t) - lambda_of(s);
  if (config_.algorithm_type == "dpmsolver++") {
    return (sigma_t / s.second) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * model_output;
  }
  return (alpha_t / s.first) * sample - (sigma_t * (torch::exp(h) - 1.0)) * model_output;
}

torch::Tensor DPMSolverMultistepScheduler::second_order_update(const torch::Tensor& sample, int64_t i) const {
  const auto t = alpha_sigma(sigmas_[i + 1]), s0 = alpha_sigma(sigmas_[i]), s1 = alpha_sigma(sigmas_[i - 1]);
  const auto& [alpha_t, sigma_t] = t;
  const auto lambda_t = lambda_of(t), lambda_s0 = lambda_of(s0), lambda_s1 = lambda_of(s1);
  const auto& m0 = model_outputs_[model_outputs_.size() - 1];
  const auto& m1 = model_outputs_[model_outputs_.size() - 2];
  const auto h = lambda_t - lambda_s0, h_0 = lambda_s0 - lambda_s1;
  const auto r0 = h_0 / h;
  const auto& d0 = m0;
  const auto d1 = r0.reciprocal() * (m0 - m1);
  const bool midpoint = config_.solver_type == "midpoint";
  if (config_.algorithm_type == "dpmsolver++") {
    const auto x = (sigma_t / s0.second) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * d0;
    return midpoint ? x - 0.5 * (alpha_t * (torch::exp(-h) - 1.0)) * d1
                    : x + (alpha_t * ((torch::exp(-h) - 1.0) / h + 1.0)) * d1;
  }
  const auto x = (alpha_t / s0.first) * sample - (sigma_t * (torch::exp(h) - 1.0)) * d0;
  return midpoint ? x - 0.5 * (sigma_t * (torch::exp(h) - 1.0)) * d1
                  : x - (sigma_t * ((torch::exp(h) - 1.0) / h - 1.0)) * d1;
}

torch::Tensor DPMSolverMultistepScheduler::third_order_update(const torch::Tensor& sample, int64_t i) const {
  const auto t = alpha_sigma(sigmas_[i + 1]), s0 = alpha_sigma(sigmas_[i]);
  const auto s1 = alpha_sigma(sigmas_[i - 1]), s2 = alpha_sigma(sigmas_[i - 2]);
  const auto& [alpha_t, sigma_t] = t;
  const auto lambda_t = lambda_of(t), lambda_s0 = lambda_of(s0), lambda_s1 = lambda_of(s1), lambda_s2 = lambda_of(s2);
  const auto n = model_outputs_.size();
  const auto &m0 = model_outputs_[n - 1], &m1 = model_outputs_[n - 2], &m2 = model_outputs_[n - 3];
  const auto h = lambda_t - lambda_s0, h_0 = lambda_s0 - lambda_s1, h_1 = lambda_s1 - lambda_s2;
  const auto r0 = h_0 / h, r1 = h_1 / h;
  const auto& d0 = m0;
  const auto d1_0 = r0.reciprocal() * (m0 - m1), d1_1 = r1.reciprocal() * (m1 - m2);
  const auto d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1);
  const auto d2 = (r0 + r1).reciprocal() * (d1_0 - d1_1);
  if (config_.algorithm_type == "dpmsolver++") {
    return (sigma_t / s0.second) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * d0 +
           (alpha_t * ((torch::exp(-h) - 1.0) / h + 1.0)) * d1 -
           (alpha_t * ((torch::exp(-h) - 1.0 + h) / h.pow(2) - 0.5)) * d2;
  }
  return (alpha_t / s0.first) * sample - (sigma_t * (torch::exp(h) - 1.0)) * d0 -
         (sigma_t * ((torch::exp(h) - 1.0) / h - 1.0)) * d1 -
         (sigma_t * ((torch::exp(h) - 1.0 - h) / h.pow(2) - 0.5)) * d2;
}

SchedulerStepOutput DPMSolverMultistepScheduler::step(const torch::Tensor& model_output, int64_t timestep,
                                                      const torch::Tensor& sample) {
  const std::string what = "DPMSolverMultistepScheduler::step";
  if (num_inference_steps_ == 0) throw Error(what + ": call set_timesteps first");
  check_step_inputs(model_output, sample, what);
  if (!step_index_) step_index_ = begin_index_ ? *begin_index_ : index_for_timestep(timestep);
  const int64_t i = *step_index_;
  const int64_t steps = timesteps_.size(0);
  if (i >= steps) {
    throw Error(fmt::format("{}: step {} is past the last of {} steps (call set_timesteps again)", what, i, steps));
  }
  const auto& c = config_;
  // Fewer steps, lower orders at the end: first order for the last step (always with a zero
  // final sigma), second order for the one before (with lower_order_final and < 15 steps).
  const bool lower_order_final =
      i == steps - 1 && (c.euler_at_final || (c.lower_order_final && steps < 15) || c.final_sigmas_type == "zero");
  const bool lower_order_second = i == steps - 2 && c.lower_order_final && steps < 15;

  const auto converted = convert_model_output(model_output, sample, i);
  model_outputs_.erase(model_outputs_.begin());
  model_outputs_.push_back(converted);
  const auto x = sample.to(torch::kFloat32);  // diffusers upcasts for the update
  torch::Tensor prev;
  if (c.solver_order == 1 || lower_order_nums_ < 1 || lower_order_final) {
    prev = first_order_update(converted, x, i);
  } else if (c.solver_order == 2 || lower_order_nums_ < 2 || lower_order_second) {
    prev = second_order_update(x, i);
  } else {
    prev = third_order_update(x, i);
  }
  if (lower_order_nums_ < c.solver_order) ++lower_order_nums_;
  step_index_ = i + 1;
  return {prev.to(converted.scalar_type()), torch::Tensor()};
}

}  // namespace lisadiff::schedulers
