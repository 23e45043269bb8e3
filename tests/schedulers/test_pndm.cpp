// PNDMScheduler against diffusers' timesteps and sampling loops stored by
// scripts/make_scheduler_fixtures.py (tests/fixtures/schedulers/sampling.*).
#include <gtest/gtest.h>

#include "config/scheduler_config.h"
#include "io/safetensors.h"
#include "schedulers/pndm.h"
#include "sampling_fixtures.h"
#include "test_util.h"

namespace lisadiff {
namespace {

using schedulers::PNDMScheduler;
using testing::fixtures_dir;
using testing::max_abs_error;
using testing::show;

const io::SafetensorsReader& ref() { return testing::sampling_ref(); }

const nlohmann::ordered_json& cases() { return testing::sampling_json().at("pndm"); }

// Read as diffusers' PNDMScheduler.from_config reads the case's config.
PNDMScheduler scheduler(const std::string& name) {
  return PNDMScheduler(config::SchedulerConfig::from_json_as(cases().at(name).at("config"), name, "PNDMScheduler"), name);
}

class PNDMParity : public ::testing::TestWithParam<std::string> {};

TEST_P(PNDMParity, TimestepsEqualDiffusers) {
  const auto& name = GetParam();
  auto s = scheduler(name);
  for (const int n : cases().at(name).at("schedules")) {
    s.set_timesteps(n);
    EXPECT_EQ(s.num_inference_steps(), n);
    EXPECT_TRUE(testing::same_tensor(s.timesteps(), ref().tensor("pndm." + name + ".timesteps." + std::to_string(n))))
        << name << " with " << n << " steps";
  }
}

TEST_P(PNDMParity, SamplingLoopEqualsDiffusers) {
  const auto& name = GetParam();
  const std::string key = "pndm." + name;
  auto s = scheduler(name);
  s.set_timesteps(cases().at(name).at("steps").get<int>());
  auto x = ref().tensor(key + ".x_init");
  double worst = 0;
  for (int64_t i = 0; i < s.timesteps().size(0); ++i) {
    const auto n = std::to_string(i);
    const int64_t t = s.timesteps()[i].item<int64_t>();
    EXPECT_TRUE(testing::same_tensor(s.scale_model_input(x, t), x));
    const auto out = s.step(ref().tensor(key + ".model_output." + n), t, x);
    const auto prev = ref().tensor(key + ".prev_sample." + n);
    // Same float32 ops in the same order as diffusers (the multistep weights as the same
    // Python scalars): measured bit-identical (max error 0); the tolerance allows a few
    // float32 roundings for another CPU's vector kernels.
    EXPECT_TRUE(testing::close_tensor(key + ".prev_sample." + n, out.prev_sample, prev, 1e-6, 1e-6));
    EXPECT_FALSE(out.pred_original_sample.defined());  // diffusers' PNDM returns none
    worst = std::max(worst, max_abs_error(out.prev_sample, prev));
    x = out.prev_sample;  // the loop runs on our own outputs
  }
  RecordProperty("max_abs_error", show(worst));
}

INSTANTIATE_TEST_SUITE_P(Cases, PNDMParity,
                         ::testing::Values("sd15", "sd15_one_step", "sd15_two_steps", "v_trailing",
                                           "linspace_alpha_one", "prk", "prk_v_linspace"));

TEST(PNDMScheduler, Sd15ReadsItsPipelineFileAsPlms) {
  auto s = scheduler("sd15");
  EXPECT_EQ(s.config().class_name, "PNDMScheduler");
  EXPECT_TRUE(s.config().skip_prk_steps);
  EXPECT_FALSE(s.config().set_alpha_to_one);
  EXPECT_EQ(s.config().steps_offset, 1);
  EXPECT_EQ(s.final_alpha_cumprod().item<float>(), s.alphas_cumprod()[0].item<float>());
  EXPECT_EQ(s.init_noise_sigma(), 1.0);
  // n + 1 steps: the second one repeats the next timestep (the PLMS start).
  s.set_timesteps(4);
  EXPECT_TRUE(testing::same_tensor(s.timesteps(), torch::tensor({751, 501, 501, 251, 1}, torch::kInt64)));
  // A file without skip_prk_steps gets PNDM's default (false): Runge-Kutta start.
  const auto micro = PNDMScheduler::from_pretrained(fixtures_dir() / "pipelines/micro-sd");
  EXPECT_EQ(micro.config().class_name, "PNDMScheduler");
}

TEST(PNDMScheduler, SetTimestepsStartsOver) {
  // The same loop twice on one scheduler: set_timesteps clears the history.
  auto s = scheduler("sd15");
  const auto run = [&] {
    s.set_timesteps(5);
    auto x = torch::ones({1, 4, 2, 2});
    for (int64_t i = 0; i < s.timesteps().size(0); ++i) {
      x = s.step(x * 0.5 + 0.1 * static_cast<double>(i), s.timesteps()[i].item<int64_t>(), x).prev_sample;
    }
    return x;
  };
  const auto first = run();
  EXPECT_TRUE(testing::same_tensor(run(), first));
}

TEST(PNDMScheduler, BadCallsAndUnsupportedOptionsAreErrors) {
  auto s = scheduler("sd15");
  const auto x = torch::zeros({1, 4, 2, 2});
  EXPECT_THROW_WITH(s.step(x, 981, x), "PNDMScheduler::step", "set_timesteps first");
  EXPECT_THROW_WITH(s.set_timesteps(1001), "num_inference_steps 1001", "num_train_timesteps = 1000");
  EXPECT_THROW_WITH(s.set_timesteps(0), "num_inference_steps 0");
  s.set_timesteps(2);
  EXPECT_THROW_WITH(s.step(x, 1000, x), "timestep 1000 outside [0, 1000)");
  EXPECT_THROW_WITH(s.step(x, 501, torch::zeros({1, 4, 2, 3})), "differ in shape");
  s.step(x, 501, x);
  // The PLMS start redoes the step from t + 1000 // n: past the training schedule here.
  EXPECT_THROW_WITH(s.step(x, 999, x), "from timestep 1499 to 999", "leaves the training schedule");
  s.set_timesteps(2);
  for (int i = 0; i < 3; ++i) s.step(x, s.timesteps()[i].item<int64_t>(), x);
  EXPECT_THROW_WITH(s.step(x, 1, x), "past the last of the 3 scheduled steps");

  auto c = config::SchedulerConfig::defaults_for("PNDMScheduler");
  c.prediction_type = "sample";
  EXPECT_THROW_WITH(PNDMScheduler(c, "sched.json"), "sched.json", "field 'prediction_type'", "not 'sample'");
  c.prediction_type = "epsilon";
  c.timestep_spacing = "karras";
  EXPECT_THROW_WITH(PNDMScheduler(c, "sched.json"), "sched.json", "field 'timestep_spacing'");
  c.timestep_spacing = "leading";
  PNDMScheduler prk(c, "sched.json");  // skip_prk_steps false: the Runge-Kutta start needs 4 steps
  EXPECT_THROW_WITH(prk.set_timesteps(3), "3 steps with skip_prk_steps false", "sched.json", "at least 4");
  c.timestep_spacing = "trailing";
  c.skip_prk_steps = true;
  PNDMScheduler trailing(c, "sched.json");
  EXPECT_THROW_WITH(trailing.set_timesteps(61), "PNDMScheduler::set_timesteps", "62 timesteps");
  // PNDMScheduler has no rescale_betas_zero_snr: ignored, as by diffusers.
  c.rescale_betas_zero_snr = true;
  EXPECT_TRUE(testing::same_tensor(PNDMScheduler(c, "sched.json").alphas_cumprod(), trailing.alphas_cumprod()));
}

}  // namespace
}  // namespace lisadiff
