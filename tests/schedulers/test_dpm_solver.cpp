// DPMSolverMultistepScheduler against diffusers' timesteps, sigmas and sampling loops stored by
// scripts/make_scheduler_fixtures.py (tests/fixtures/schedulers/sampling.*).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "config/scheduler_config.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "schedulers/dpm_solver.h"
#include "sampling_fixtures.h"
#include "test_util.h"

namespace lisadiff {
namespace {

using schedulers::DPMSolverMultistepScheduler;
using testing::fixtures_dir;
using testing::max_abs_error;
using testing::show;

const io::SafetensorsReader& ref() { return testing::sampling_ref(); }

const nlohmann::ordered_json& cases() { return testing::sampling_json().at("dpm"); }

const char* const kClass = "DPMSolverMultistepScheduler";

DPMSolverMultistepScheduler scheduler(const std::string& name) {
  return DPMSolverMultistepScheduler(config::SchedulerConfig::from_json_as(cases().at(name).at("config"), name, kClass),
                                     name);
}

class DPMSolverSchedule : public ::testing::TestWithParam<std::string> {};
class DPMSolverLoop : public ::testing::TestWithParam<std::string> {};

TEST_P(DPMSolverSchedule, TimestepsAndSigmasEqualDiffusers) {
  const auto& name = GetParam();
  auto s = scheduler(name);
  double worst_sigma = 0;
  for (const int n : cases().at(name).at("schedules")) {
    s.set_timesteps(n);
    const std::string key = "dpm." + name, steps = "." + std::to_string(n);
    // int64 timesteps: identical. Sigmas computed as numpy does in float64, then float32:
    // measured bit-identical; 1e-7 relative allows a libm that rounds pow/log differently.
    EXPECT_TRUE(testing::same_tensor(s.timesteps(), ref().tensor(key + ".timesteps" + steps))) << key << steps;
    const auto sigmas = ref().tensor(key + ".sigmas" + steps);
    EXPECT_TRUE(testing::close_tensor(key + ".sigmas" + steps, s.sigmas(), sigmas, 1e-7, 0));
    EXPECT_EQ(s.num_inference_steps(), s.timesteps().size(0));
    worst_sigma = std::max(worst_sigma, max_abs_error(s.sigmas(), sigmas));
  }
  RecordProperty("max_abs_error_sigmas", show(worst_sigma));
}

TEST_P(DPMSolverLoop, SamplingLoopEqualsDiffusers) {
  const auto& name = GetParam();
  const int steps = cases().at(name).at("steps").get<int>();
  ASSERT_GT(steps, 0) << name << " stores schedules only";
  const std::string key = "dpm." + name;
  auto s = scheduler(name);
  s.set_timesteps(steps);
  auto x = ref().tensor(key + ".x_init");
  double worst = 0;
  for (int64_t i = 0; i < s.timesteps().size(0); ++i) {
    const auto n = std::to_string(i);
    const int64_t t = s.timesteps()[i].item<int64_t>();
    const auto out = s.step(ref().tensor(key + ".model_output." + n), t, x);
    EXPECT_EQ(s.step_index(), i + 1);
    const auto prev = ref().tensor(key + ".prev_sample." + n);
    // diffusers' float32 ops in its order on sigmas equal to diffusers': measured
    // bit-identical (max error 0); 1e-6 relative allows a few roundings of other vector kernels.
    EXPECT_TRUE(testing::close_tensor(key + ".prev_sample." + n, out.prev_sample, prev, 1e-6, 1e-6));
    EXPECT_FALSE(out.pred_original_sample.defined());
    worst = std::max(worst, max_abs_error(out.prev_sample, prev));
    x = out.prev_sample;
  }
  RecordProperty("max_abs_error", show(worst));
}

#define DPM_LOOP_CASES                                                                                   \
  "sd15", "sd15_short", "karras_v", "karras_bounds", "order1_leading", "heun_sigma_min_trailing",              \
      "euler_at_final_no_lower", "order3_zero_snr_v", "dpmsolver_midpoint_sample",                             \
      "dpmsolver_heun_order3_thresholding", "thresholding_sample", "cosine_clipped_leading"
// cosine_karras_clipped stores schedules only (steps 0, see the fixture script).
INSTANTIATE_TEST_SUITE_P(Cases, DPMSolverSchedule, ::testing::Values(DPM_LOOP_CASES, "cosine_karras_clipped"));
INSTANTIATE_TEST_SUITE_P(Cases, DPMSolverLoop, ::testing::Values(DPM_LOOP_CASES));
#undef DPM_LOOP_CASES

TEST(DPMSolverMultistepScheduler, ReadsSd15AndItsOwnSavedConfig) {
  const auto sd15 = scheduler("sd15");
  EXPECT_EQ(sd15.config().class_name, kClass);
  EXPECT_EQ(sd15.config().timestep_spacing, "linspace");  // absent from SD1.5's file
  EXPECT_EQ(sd15.config().solver_order, 2);
  EXPECT_EQ(sd15.config().algorithm_type, "dpmsolver++");
  EXPECT_EQ(sd15.init_noise_sigma(), 1.0);
  // A config file as diffusers saves it: -Infinity for lambda_min_clipped, null variance_type.
  const auto file = fixtures_dir() / "schedulers/dpm_scheduler_config.json";
  const auto c = config::SchedulerConfig::from_file_as(file, kClass);
  EXPECT_TRUE(c.use_karras_sigmas);
  EXPECT_FALSE(c.lambda_min_clipped.has_value());
  EXPECT_FALSE(c.variance_type.has_value());
  // Every key and default of diffusers' class (the file holds them all) equals ours.
  std::string text = io::read_file(file);
  const auto inf = text.find("-Infinity");
  ASSERT_NE(inf, std::string::npos);  // the token the reader has to get past
  text.replace(inf, 9, "null");        // -inf, which JSON cannot hold
  auto expected = config::Json::parse(text);
  expected.erase("_diffusers_version");
  auto defaults = config::SchedulerConfig::defaults_for(kClass);
  defaults.beta_start = 0.00085;
  defaults.beta_end = 0.012;
  defaults.beta_schedule = "scaled_linear";
  defaults.use_karras_sigmas = true;
  const auto ours = defaults.to_json();
  EXPECT_EQ(ours.size(), expected.size());
  for (const auto& [key, value] : expected.items()) EXPECT_EQ(ours.value(key, config::Json("missing")), value) << key;
  DPMSolverMultistepScheduler from_file(c, file.string());
  from_file.set_timesteps(10);
  EXPECT_EQ(from_file.timesteps()[0].item<int64_t>(), 999);
}

TEST(DPMSolverMultistepScheduler, UnsupportedOptionsAreErrorsNamingTheKey) {
  const auto base = config::SchedulerConfig::defaults_for(kClass);
  const auto expect_refused = [&](auto set, const std::string& key, const std::string& what) {
    auto c = base;
    set(c);
    EXPECT_THROW_WITH(DPMSolverMultistepScheduler(c, "sched.json"), "sched.json", "field '" + key + "'", what);
  };
  expect_refused([](auto& c) { c.algorithm_type = "sde-dpmsolver++"; }, "algorithm_type", "not supported");
  expect_refused([](auto& c) { c.algorithm_type = "unipc"; }, "algorithm_type", "unipc");
  expect_refused([](auto& c) { c.solver_order = 4; }, "solver_order", "expected 1, 2 or 3");
  expect_refused([](auto& c) { c.solver_type = "euler"; }, "solver_type", "euler");
  expect_refused([](auto& c) { c.use_exponential_sigmas = true; }, "use_exponential_sigmas", "not supported");
  expect_refused([](auto& c) { c.use_beta_sigmas = true; }, "use_beta_sigmas", "not supported");
  expect_refused([](auto& c) { c.use_lu_lambdas = true; }, "use_lu_lambdas", "not supported");
  expect_refused([](auto& c) { c.use_flow_sigmas = true; }, "use_flow_sigmas", "not supported");
  expect_refused([](auto& c) { c.use_dynamic_shifting = true; }, "use_dynamic_shifting", "not supported");
  expect_refused([](auto& c) { c.variance_type = "learned_range"; }, "variance_type", "learned variance");
  expect_refused([](auto& c) { c.final_sigmas_type = "one"; }, "final_sigmas_type", "one");
  expect_refused([](auto& c) { c.algorithm_type = "dpmsolver"; }, "final_sigmas_type", "'zero' is not supported");
  expect_refused([](auto& c) { c.prediction_type = "flow_prediction"; }, "prediction_type", "flow_prediction");
  expect_refused(
      [](auto& c) {
        c.use_karras_sigmas = true;
        c.use_beta_sigmas = true;
      },
      "use_karras_sigmas", "only one of");
  // diffusers' renames of old names.
  auto c = base;
  c.algorithm_type = "deis";
  c.solver_type = "bh2";
  const DPMSolverMultistepScheduler renamed(c, "sched.json");
  EXPECT_EQ(renamed.config().algorithm_type, "dpmsolver++");
  EXPECT_EQ(renamed.config().solver_type, "midpoint");
}

TEST(DPMSolverMultistepScheduler, BadCallsAreErrors) {
  auto s = scheduler("sd15");
  const auto x = torch::zeros({1, 4, 2, 2});
  EXPECT_THROW_WITH(s.step(x, 999, x), "DPMSolverMultistepScheduler::step", "set_timesteps first");
  EXPECT_THROW_WITH(s.set_timesteps(1001), "num_inference_steps 1001", "num_train_timesteps = 1000");
  EXPECT_THROW_WITH(s.set_timesteps(0), "num_inference_steps 0");
  s.set_timesteps(2);  // [999, 500]
  EXPECT_THROW_WITH(s.step(x, 998, x), "timestep 998 is not in the schedule");
  EXPECT_THROW_WITH(s.step(x, 999, torch::zeros({1, 4, 2, 3})), "differ in shape");
  s.step(x, 999, x);
  s.step(x, 500, x);
  EXPECT_THROW_WITH(s.step(x, 500, x), "past the last of 2 steps");
  s.set_timesteps(2);
  EXPECT_EQ(s.step_index(), std::nullopt);  // set_timesteps starts over
  // numpy's arange gives diffusers 62 trailing timesteps for 61 steps: refused.
  auto c = config::SchedulerConfig::defaults_for(kClass);
  c.timestep_spacing = "trailing";
  DPMSolverMultistepScheduler trailing(c, "sched.json");
  EXPECT_THROW_WITH(trailing.set_timesteps(61), "DPMSolverMultistepScheduler::set_timesteps", "62 timesteps");
  // With lambda clipped (the cosine schedule's lambda passes -5.1 at timestep 996) the trailing
  // spacing arange(996, 0, -1000 / n) has fewer values than asked for large n.
  c.beta_schedule = "squaredcos_cap_v2";
  c.lambda_min_clipped = -5.1;
  DPMSolverMultistepScheduler clipped(c, "sched.json");
  clipped.set_timesteps(10);
  EXPECT_EQ(clipped.timesteps()[0].item<int64_t>(), 995);
  EXPECT_THROW_WITH(clipped.set_timesteps(500), "from timestep 996", "lambda_min_clipped", "only 498 timesteps");
}

TEST(DPMSolverMultistepScheduler, HalfModelOutputGivesAHalfSample) {
  auto s = scheduler("sd15");
  s.set_timesteps(4);
  const auto x = torch::randn({1, 4, 2, 2}), out = torch::randn({1, 4, 2, 2});
  const auto half = s.step(out.to(torch::kHalf), s.timesteps()[0].item<int64_t>(), x.to(torch::kHalf));
  // diffusers upcasts the sample to float32 and casts the result to the converted output's dtype.
  EXPECT_EQ(half.prev_sample.scalar_type(), torch::kHalf);
}

}  // namespace
}  // namespace lisadiff
