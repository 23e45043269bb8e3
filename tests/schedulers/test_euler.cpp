// EulerDiscreteScheduler against diffusers' timesteps, sigmas and sampling loops stored by
// scripts/make_scheduler_fixtures.py (tests/fixtures/schedulers/sampling.*).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <numeric>

#include "config/scheduler_config.h"
#include "io/safetensors.h"
#include "schedulers/euler.h"
#include "sampling_fixtures.h"
#include "test_util.h"

namespace lisadiff {
namespace {

using schedulers::EulerDiscreteScheduler;
using testing::fixtures_dir;

const io::SafetensorsReader& ref() { return testing::sampling_ref(); }

const nlohmann::ordered_json& cases() { return testing::sampling_json().at("euler"); }

EulerDiscreteScheduler scheduler(const std::string& name) {
  return EulerDiscreteScheduler(
      config::SchedulerConfig::from_json_as(cases().at(name).at("config"), name, "EulerDiscreteScheduler"), name);
}

using testing::max_abs_error;
using testing::seeded;
using testing::show;

class EulerParity : public ::testing::TestWithParam<std::string> {
 protected:
  // Runs the fixture's loop (scale_model_input, step, on our own outputs) and returns the
  // largest abs error of the step outputs. The churn noise comes from the fixture, or from a
  // generator seeded as the script's step generator.
  double run_loop(bool churn_from_generator) {
    const auto& name = GetParam();
    const auto& c = cases().at(name);
    const std::string key = "euler." + name;
    auto s = scheduler(name);
    s.set_timesteps(c.at("steps").get<int>());
    schedulers::EulerStepOptions options;
    options.s_churn = c.value("s_churn", 0.0);
    options.s_tmin = c.value("s_tmin", 0.0);
    options.s_noise = c.value("s_noise", 1.0);
    if (churn_from_generator) options.generator = seeded(key + ".noise");
    auto x = ref().tensor(key + ".x_init") * s.init_noise_sigma();
    double worst = 0;
    for (int64_t i = 0; i < s.timesteps().size(0); ++i) {
      const auto n = std::to_string(i);
      const double t = s.timesteps()[i].item<double>();
      const auto model_input = s.scale_model_input(x, t);
      EXPECT_EQ(s.step_index(), i);
      if (!churn_from_generator) {
        options.noise = ref().contains(key + ".noise." + n) ? ref().tensor(key + ".noise." + n) : torch::Tensor();
      }
      const auto out = s.step(ref().tensor(key + ".model_output." + n), t, x, options);
      const auto prev = ref().tensor(key + ".prev_sample." + n), x0 = ref().tensor(key + ".pred_original_sample." + n);
      const auto input = ref().tensor(key + ".model_input." + n);
      // float32 ops in diffusers' order on float32 sigmas equal to diffusers' (see the
      // schedule test): measured bit-identical; 1e-6 relative allows a few roundings.
      EXPECT_TRUE(testing::close_tensor(key + ".model_input." + n, model_input, input, 1e-6, 1e-6));
      EXPECT_TRUE(testing::close_tensor(key + ".prev_sample." + n, out.prev_sample, prev, 1e-6, 1e-6));
      EXPECT_TRUE(testing::close_tensor(key + ".pred_original_sample." + n, out.pred_original_sample, x0, 1e-6, 1e-6));
      worst = std::max({worst, max_abs_error(model_input, input), max_abs_error(out.prev_sample, prev),
                        max_abs_error(out.pred_original_sample, x0)});
      x = out.prev_sample;
    }
    EXPECT_EQ(s.step_index(), s.timesteps().size(0));
    return worst;
  }
};

TEST_P(EulerParity, TimestepsSigmasAndInitNoiseSigmaEqualDiffusers) {
  const auto& name = GetParam();
  auto s = scheduler(name);
  double worst_t = 0, worst_sigma = 0;
  for (const int n : cases().at(name).at("schedules")) {
    s.set_timesteps(n);
    const std::string key = "euler." + name, steps = "." + std::to_string(n);
    const auto timesteps = ref().tensor(key + ".timesteps" + steps), sigmas = ref().tensor(key + ".sigmas" + steps);
    // Computed as numpy does in float64, then float32: sigmas measured bit-identical. Karras
    // timesteps interpolate between float32 log-sigmas, which numpy takes with its own SIMD
    // log (about 1 in 5 differs from libm's by one ulp), so they may differ in the last
    // float32 bit: measured max 6.1e-5 at t ~ 933 (one ulp); allowed 1e-6 relative.
    EXPECT_TRUE(testing::close_tensor(key + ".timesteps" + steps, s.timesteps(), timesteps, 1e-6, 1e-6));
    EXPECT_TRUE(testing::close_tensor(key + ".sigmas" + steps, s.sigmas(), sigmas, 1e-7, 1e-6));
    EXPECT_EQ(s.timesteps().scalar_type(), torch::kFloat32);
    EXPECT_NEAR(s.init_noise_sigma(), ref().tensor(key + ".init_noise_sigma" + steps).item<double>(), 1e-6);
    worst_t = std::max(worst_t, max_abs_error(s.timesteps(), timesteps));
    worst_sigma = std::max(worst_sigma, max_abs_error(s.sigmas(), sigmas));
  }
  RecordProperty("max_abs_error_timesteps", show(worst_t));
  RecordProperty("max_abs_error_sigmas", show(worst_sigma));
}

TEST_P(EulerParity, SamplingLoopEqualsDiffusers) {
  RecordProperty("max_abs_error", show(run_loop(/*churn_from_generator=*/false)));
  if (cases().at(GetParam()).contains("s_churn")) {
    // The same noise drawn by the step from a CPU generator seeded as the script's.
    RecordProperty("max_abs_error_generator", show(run_loop(/*churn_from_generator=*/true)));
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, EulerParity,
                         ::testing::Values("sd15", "sd15_leading", "karras_v_trailing", "karras_bounds_sigma_min",
                                           "log_linear_zero_snr_v", "continuous_v", "sample_prediction", "churn"));

TEST(EulerDiscreteScheduler, Sd15ReadsItsPipelineFileWithEulerDefaults) {
  auto s = scheduler("sd15");
  EXPECT_EQ(s.config().class_name, "EulerDiscreteScheduler");
  EXPECT_EQ(s.config().timestep_spacing, "linspace");  // absent from SD1.5's file
  s.set_timesteps(10);
  EXPECT_EQ(s.init_noise_sigma(), s.sigmas()[0].item<double>());
  EXPECT_EQ(s.sigmas()[-1].item<float>(), 0.0f);
  const auto micro = EulerDiscreteScheduler::from_pretrained(fixtures_dir() / "pipelines/micro-sd");
  EXPECT_EQ(micro.config().class_name, "EulerDiscreteScheduler");
}

TEST(EulerDiscreteScheduler, UnsupportedOptionsAreErrorsNamingTheKey) {
  config::SchedulerConfig c = config::SchedulerConfig::defaults_for("EulerDiscreteScheduler");
  c.use_beta_sigmas = true;
  EXPECT_THROW_WITH(EulerDiscreteScheduler(c, "sched.json"), "sched.json", "field 'use_beta_sigmas'", "not supported");
  c.use_beta_sigmas = false;
  c.use_exponential_sigmas = true;
  EXPECT_THROW_WITH(EulerDiscreteScheduler(c, "sched.json"), "sched.json", "field 'use_exponential_sigmas'");
  c.use_karras_sigmas = true;
  EXPECT_THROW_WITH(EulerDiscreteScheduler(c, "sched.json"), "sched.json", "only one of");
  c = config::SchedulerConfig::defaults_for("EulerDiscreteScheduler");
  c.interpolation_type = "cubic";
  EXPECT_THROW_WITH(EulerDiscreteScheduler(c, "sched.json"), "sched.json", "field 'interpolation_type'", "cubic");
  c.interpolation_type = "linear";
  c.timestep_type = "ragged";
  EXPECT_THROW_WITH(EulerDiscreteScheduler(c, "sched.json"), "field 'timestep_type'");
  c.timestep_type = "discrete";
  c.final_sigmas_type = "one";
  EXPECT_THROW_WITH(EulerDiscreteScheduler(c, "sched.json"), "field 'final_sigmas_type'");
  c.final_sigmas_type = "zero";
  c.sigma_min = -1.0;
  EXPECT_THROW_WITH(EulerDiscreteScheduler(c, "sched.json"), "field 'sigma_min'");
}

TEST(EulerDiscreteScheduler, BadCallsAreErrors) {
  auto s = scheduler("sd15");
  const auto x = torch::zeros({1, 4, 2, 2});
  EXPECT_THROW_WITH(s.step(x, 999.0, x), "EulerDiscreteScheduler::step", "set_timesteps first");
  EXPECT_THROW_WITH(s.scale_model_input(x, 999.0), "set_timesteps first");
  EXPECT_THROW_WITH(s.init_noise_sigma(), "set_timesteps first");
  EXPECT_THROW_WITH(s.set_timesteps(1001), "num_inference_steps 1001", "num_train_timesteps = 1000");
  s.set_timesteps(2);
  EXPECT_THROW_WITH(s.step(x, 500.0, x), "timestep 500 is not in the schedule");
  EXPECT_THROW_WITH(s.step(x, 999.0, torch::zeros({1, 4, 2, 3})), "differ in shape");
  s.step(x, 999.0, x);
  s.step(x, 0.0, x);
  EXPECT_THROW_WITH(s.step(x, 0.0, x), "past the last of 2 steps");
  s.set_timesteps(2);
  EXPECT_EQ(s.step_index(), std::nullopt);  // set_timesteps starts over
  // numpy's arange gives diffusers 62 trailing timesteps for 61 steps, the last -1: refused.
  auto c = config::SchedulerConfig::defaults_for("EulerDiscreteScheduler");
  c.timestep_spacing = "trailing";
  EulerDiscreteScheduler trailing(c, "sched.json");
  EXPECT_THROW_WITH(trailing.set_timesteps(61), "EulerDiscreteScheduler::set_timesteps", "62 timesteps");
}

TEST(EulerDiscreteScheduler, HalfModelOutputGivesAHalfSample) {
  auto s = scheduler("sd15");
  s.set_timesteps(4);
  const auto x = torch::randn({1, 4, 2, 2}) * s.init_noise_sigma(), out = torch::randn({1, 4, 2, 2});
  const auto half = s.step(out.to(torch::kHalf), s.timesteps()[0].item<double>(), x.to(torch::kHalf));
  // diffusers upcasts the sample to float32 and casts the result back to the model's dtype.
  EXPECT_EQ(half.prev_sample.scalar_type(), torch::kHalf);
  EXPECT_EQ(half.pred_original_sample.scalar_type(), torch::kFloat32);
}

}  // namespace
}  // namespace lisadiff
