#include "schedulers/pndm.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "config/json_fields.h"
#include "core/error.h"
#include "schedulers/ddpm.h"

namespace lisadiff::schedulers {
namespace {

// The Runge-Kutta phase: 3 full steps of 4 model evaluations each (the paper's pndm_order 4
// counts the spaced timesteps it covers).
constexpr int kPrkOrder = 4;

}  // namespace

// PNDMScheduler takes no rescale_betas_zero_snr: diffusers ignores the key, so does this.
PNDMScheduler::PNDMScheduler(config::SchedulerConfig config, const std::string& source)
    : AlphaProductScheduler(std::move(config), source, /*ignore_zero_snr=*/true) {
  if (config_.prediction_type == "sample") {
    config::field_error(source_, "prediction_type",
                        "PNDMScheduler supports epsilon and v_prediction, not 'sample' (diffusers raises at the first "
                        "step)");
  }
}

PNDMScheduler PNDMScheduler::from_pretrained(const std::filesystem::path& dir) {
  const auto file = scheduler_config_file(dir);
  return PNDMScheduler(config::SchedulerConfig::from_file_as(file, "PNDMScheduler"), file.string());
}

void PNDMScheduler::set_timesteps(int n) {
  const int train = config_.num_train_timesteps;
  if (n < 1 || n > train) {
    throw Error(fmt::format("PNDMScheduler::set_timesteps: num_inference_steps {} outside [1, num_train_timesteps = {}]",
                            n, train));
  }
  if (!config_.skip_prk_steps && n < kPrkOrder) {
    throw Error(fmt::format("PNDMScheduler::set_timesteps: {} steps with skip_prk_steps false ({}): the Runge-Kutta "
                            "start needs at least {} steps (diffusers fails here too)", n, source_, kPrkOrder));
  }
  // The spaced timesteps, ascending, as diffusers' _timesteps (int64).
  auto spaced = integer_timesteps(config_, n, "PNDMScheduler::set_timesteps");
  std::reverse(spaced.begin(), spaced.end());  // integer_timesteps gives them descending

  std::vector<int64_t> schedule;
  prk_timesteps_.clear();
  if (config_.skip_prk_steps) {
    // diffusers: concatenate(_t[:-1], _t[-2:-1], _t[-1:])[::-1]: t_{n-2} twice (not for n = 1).
    schedule.assign(spaced.begin(), spaced.end() - 1);
    if (n >= 2) schedule.push_back(spaced[spaced.size() - 2]);
    schedule.push_back(spaced.back());
    std::reverse(schedule.begin(), schedule.end());
  } else {
    // The last four spaced timesteps and their half steps, a0 a0+h a1 a1+h ... a3+h; drop the
    // last, double every entry, drop the first and last, reverse: 12 timesteps.
    const int64_t half = train / n / 2;
    std::vector<int64_t> grid;
    for (std::size_t i = spaced.size() - kPrkOrder; i < spaced.size(); ++i) {
      grid.push_back(spaced[i]);
      grid.push_back(spaced[i] + half);
    }
    grid.pop_back();
    std::vector<int64_t> doubled;
    for (const int64_t t : grid) doubled.insert(doubled.end(), {t, t});
    prk_timesteps_.assign(doubled.rbegin() + 1, doubled.rend() - 1);
    schedule = prk_timesteps_;
    // Then PLMS over the spaced timesteps below the last three, descending.
    schedule.insert(schedule.end(), spaced.rbegin() + (kPrkOrder - 1), spaced.rend());
  }
  num_inference_steps_ = n;
  timesteps_ = torch::tensor(schedule, torch::kInt64);
  counter_ = 0;
  ets_.clear();
  cur_sample_ = torch::Tensor();
  cur_model_output_ = torch::Tensor();
}

SchedulerStepOutput PNDMScheduler::step(const torch::Tensor& model_output, int64_t timestep,
                                        const torch::Tensor& sample) {
  const std::string what = "PNDMScheduler::step";
  if (num_inference_steps_ == 0) throw Error(what + ": call set_timesteps first");
  check_step_inputs(model_output, sample, what);
  const int train = config_.num_train_timesteps;
  if (timestep < 0 || timestep >= train) throw Error(fmt::format("{}: timestep {} outside [0, {})", what, timestep, train));
  if (counter_ >= timesteps_.size(0)) {
    throw Error(fmt::format("{}: step {} is past the last of the {} scheduled steps (call set_timesteps again)", what,
                            counter_, timesteps_.size(0)));
  }
  if (!config_.skip_prk_steps && counter_ < static_cast<int64_t>(prk_timesteps_.size())) {
    return step_prk(model_output, timestep, sample);
  }
  return step_plms(model_output, timestep, sample);
}

SchedulerStepOutput PNDMScheduler::step_prk(const torch::Tensor& model_output, int64_t timestep,
                                            const torch::Tensor& sample) {
  // Four evaluations per Runge-Kutta step, all from the sample at the step's start
  // (cur_sample): to the half step with k1, to the half step with k2, to the full step with
  // k3, then to the full step with (k1 + 2 k2 + 2 k3 + k4) / 6. Odd evaluations target the
  // timestep passed (the half or full step); even ones half a step below it.
  const int64_t diff_to_prev = counter_ % 2 ? 0 : config_.num_train_timesteps / num_inference_steps_ / 2;
  const int64_t prev_timestep = timestep - diff_to_prev;
  const int64_t start = prk_timesteps_[static_cast<std::size_t>(counter_ / 4 * 4)];
  auto output = model_output;
  switch (counter_ % 4) {
    case 0:
      cur_model_output_ = model_output * (1.0 / 6);  // diffusers: 0 + 1 / 6 * model_output
      ets_.push_back(model_output);
      cur_sample_ = sample;
      break;
    case 1:
    case 2:
      cur_model_output_ += model_output * (1.0 / 3);
      break;
    default:
      output = cur_model_output_ + model_output * (1.0 / 6);
      cur_model_output_ = torch::Tensor();
      break;
  }
  const auto& from = cur_sample_.defined() ? cur_sample_ : sample;
  auto prev = prev_sample(from, start, prev_timestep, output);
  ++counter_;
  return {prev, torch::Tensor()};
}

SchedulerStepOutput PNDMScheduler::step_plms(const torch::Tensor& model_output, int64_t timestep,
                                             const torch::Tensor& sample) {
  if (!config_.skip_prk_steps && ets_.size() < 3) {
    throw Error("PNDMScheduler::step: PLMS steps need the 12 Runge-Kutta steps first (skip_prk_steps false)");
  }
  const int64_t stride = config_.num_train_timesteps / num_inference_steps_;
  int64_t prev_timestep = timestep - stride;
  if (counter_ != 1) {
    // Keep the last three outputs plus this one: the 4th-order Adams-Bashforth window.
    if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
    ets_.push_back(model_output);
  } else {
    // The second step redoes the first one (from t_{n-1} to t_{n-2}, the repeated timestep)
    // with the mean of both outputs: a Heun step that starts the multistep history.
    prev_timestep = timestep;
    timestep = timestep + stride;
  }
  auto output = model_output;
  auto from = sample;
  if (ets_.size() == 1 && counter_ == 0) {
    cur_sample_ = sample;
  } else if (ets_.size() == 1 && counter_ == 1) {
    output = (model_output + ets_.back()) / 2;
    from = cur_sample_;
    cur_sample_ = torch::Tensor();
  } else {
    // Adams-Bashforth of order 2, 3, 4 over the history, with diffusers' weights and order of
    // operations (Python int and float scalars).
    const auto e = [&](std::size_t back) -> const torch::Tensor& { return ets_[ets_.size() - back]; };
    if (ets_.size() == 2) {
      output = (e(1) * 3 - e(2)) / 2;
    } else if (ets_.size() == 3) {
      output = (e(1) * 23 - e(2) * 16 + e(3) * 5) / 12;
    } else {
      output = (e(1) * 55 - e(2) * 59 + e(3) * 37 - e(4) * 9) * (1.0 / 24);
    }
  }
  auto prev = prev_sample(from, timestep, prev_timestep, output);
  ++counter_;
  return {prev, torch::Tensor()};
}

torch::Tensor PNDMScheduler::prev_sample(const torch::Tensor& sample, int64_t timestep, int64_t prev_timestep,
                                         torch::Tensor model_output) const {
  const int train = config_.num_train_timesteps;
  if (timestep < 0 || timestep >= train || prev_timestep >= train) {
    throw Error(fmt::format("PNDMScheduler::step: the step from timestep {} to {} leaves the training schedule [0, {}) "
                            "(pass the entries of timesteps() in order)", timestep, prev_timestep, train));
  }
  const auto alpha_prod_t = alphas_cumprod_[timestep];
  const auto alpha_prod_t_prev = prev_timestep >= 0 ? alphas_cumprod_[prev_timestep] : final_alpha_cumprod_;
  const auto beta_prod_t = 1 - alpha_prod_t;
  const auto beta_prod_t_prev = 1 - alpha_prod_t_prev;
  if (config_.prediction_type == "v_prediction") {
    // The noise estimate from v (the formula needs epsilon).
    model_output = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
  }
  // (a_prev - a_t) / (sqrt(a_t) (sqrt(a_prev) + sqrt(a_t))) + 1 simplifies to sqrt(a_prev / a_t).
  const auto sample_coeff = (alpha_prod_t_prev / alpha_prod_t).pow(0.5);
  // The denominator of the noise term of formula (9).
  const auto model_output_denom_coeff =
      alpha_prod_t * beta_prod_t_prev.pow(0.5) + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).pow(0.5);
  return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / model_output_denom_coeff;
}

}  // namespace lisadiff::schedulers
