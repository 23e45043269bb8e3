// DDIMScheduler against diffusers' timesteps and sampling loops stored by
// scripts/make_scheduler_fixtures.py (tests/fixtures/schedulers/sampling.*).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include "config/scheduler_config.h"
#include "io/safetensors.h"
#include "schedulers/ddim.h"
#include "sampling_fixtures.h"
#include "test_util.h"

namespace lisadiff {
namespace {

using schedulers::DDIMScheduler;
using testing::fixtures_dir;

const io::SafetensorsReader& ref() { return testing::sampling_ref(); }

const nlohmann::ordered_json& cases() { return testing::sampling_json().at("ddim"); }

// Read as diffusers' DDIMScheduler.from_config reads the case's config.
DDIMScheduler scheduler(const std::string& name) {
  return DDIMScheduler(config::SchedulerConfig::from_json_as(cases().at(name).at("config"), name, "DDIMScheduler"), name);
}

using testing::max_abs_error;
using testing::show;

class DDIMParity : public ::testing::TestWithParam<std::string> {};

TEST_P(DDIMParity, TimestepsEqualDiffusers) {
  const auto& name = GetParam();
  auto s = scheduler(name);
  for (const int n : cases().at(name).at("schedules")) {
    s.set_timesteps(n);
    EXPECT_EQ(s.num_inference_steps(), n);
    EXPECT_TRUE(testing::same_tensor(s.timesteps(), ref().tensor("ddim." + name + ".timesteps." + std::to_string(n))))
        << name << " with " << n << " steps";
  }
}

TEST_P(DDIMParity, SamplingLoopEqualsDiffusers) {
  const auto& name = GetParam();
  const auto& c = cases().at(name);
  const std::string key = "ddim." + name;
  auto s = scheduler(name);
  s.set_timesteps(c.at("steps").get<int>());
  schedulers::DDIMStepOptions options;
  options.eta = c.value("eta", 0.0);
  options.use_clipped_model_output = c.value("use_clipped_model_output", false);
  auto x = ref().tensor(key + ".x_init");
  double worst = 0;
  for (int64_t i = 0; i < s.timesteps().size(0); ++i) {
    const auto n = std::to_string(i);
    if (options.eta > 0) options.variance_noise = ref().tensor(key + ".noise." + n);
    const auto out = s.step(ref().tensor(key + ".model_output." + n), s.timesteps()[i].item<int64_t>(), x, options);
    const auto prev = ref().tensor(key + ".prev_sample." + n), x0 = ref().tensor(key + ".pred_original_sample." + n);
    // Same float32 ops in the same order as diffusers: measured bit-identical (max error 0);
    // the tolerance allows a few float32 roundings for another CPU's vector kernels.
    EXPECT_TRUE(testing::close_tensor(key + ".prev_sample." + n, out.prev_sample, prev, 1e-6, 1e-6));
    EXPECT_TRUE(testing::close_tensor(key + ".pred_original_sample." + n, out.pred_original_sample, x0, 1e-6, 1e-6));
    worst = std::max({worst, max_abs_error(out.prev_sample, prev), max_abs_error(out.pred_original_sample, x0)});
    x = out.prev_sample;  // the loop runs on our own outputs
  }
  RecordProperty("max_abs_error", show(worst));
}

INSTANTIATE_TEST_SUITE_P(Cases, DDIMParity,
                         ::testing::Values("sd15", "trailing_v_zero_snr", "linspace_sample_eta", "thresholding_cosine"));

TEST(DDIMScheduler, Sd15ReadsItsPipelineFileWithDdimDefaults) {
  // SD1.5's PNDM file as DDIMScheduler: its own keys win, DDIM's defaults fill the rest.
  const auto s = scheduler("sd15");
  EXPECT_EQ(s.config().class_name, "DDIMScheduler");
  EXPECT_FALSE(s.config().set_alpha_to_one);
  EXPECT_FALSE(s.config().clip_sample);
  EXPECT_EQ(s.config().timestep_spacing, "leading");
  EXPECT_EQ(s.final_alpha_cumprod().item<float>(), s.alphas_cumprod()[0].item<float>());
  const auto micro = DDIMScheduler::from_pretrained(fixtures_dir() / "pipelines/micro-sd");
  EXPECT_EQ(micro.config().class_name, "DDIMScheduler");
  EXPECT_EQ(micro.init_noise_sigma(), 1.0);
  EXPECT_THROW_WITH(config::SchedulerConfig::from_json_as(cases().at("sd15").at("config"), "s.json", "FooScheduler"),
                    "s.json", "unknown class 'FooScheduler'");
}

TEST(DDIMScheduler, ThresholdingClampsEachSampleToItsQuantile) {
  // One sample with |x| up to 4: s = quantile(|x|, 0.5) clamped to [1, 3].
  const auto x = torch::tensor({0.5f, -2.0f, 3.0f, -4.0f}).reshape({1, 1, 2, 2});
  const auto y = schedulers::threshold_sample(x, 0.5, 3.0);
  // quantile 0.5 of {0.5, 2, 3, 4} = 2.5 -> clamp to [-2.5, 2.5] / 2.5.
  EXPECT_TRUE(testing::close_tensor("threshold", y, torch::tensor({0.2f, -0.8f, 1.0f, -1.0f}).reshape({1, 1, 2, 2}), 1e-7, 0));
  EXPECT_EQ(schedulers::threshold_sample(x.to(torch::kHalf), 0.5, 3.0).scalar_type(), torch::kHalf);
}

TEST(DDIMScheduler, BadCallsAreErrors) {
  auto s = scheduler("sd15");
  const auto x = torch::zeros({1, 4, 2, 2});
  EXPECT_THROW_WITH(s.step(x, 981, x), "DDIMScheduler::step", "set_timesteps first");
  EXPECT_THROW_WITH(s.set_timesteps(1001), "num_inference_steps 1001", "num_train_timesteps = 1000");
  EXPECT_THROW_WITH(s.set_timesteps(0), "num_inference_steps 0");
  s.set_timesteps(10);
  EXPECT_THROW_WITH(s.step(x, 1000, x), "timestep 1000 outside [0, 1000)");
  EXPECT_THROW_WITH(s.step(x, 901, torch::zeros({1, 4, 2, 3})), "differ in shape");
  schedulers::DDIMStepOptions both;
  both.eta = 1.0;
  both.variance_noise = x;
  both.generator = at::detail::createCPUGenerator(1);
  EXPECT_THROW_WITH(s.step(x, 901, x, both), "either a noise tensor or a generator");
  // Bad config values name the source and the key.
  config::SchedulerConfig c;
  c.timestep_spacing = "karras";
  EXPECT_THROW_WITH(DDIMScheduler(c, "sched.json"), "sched.json", "timestep_spacing");
  // numpy's arange gives diffusers 62 trailing timesteps for 61 steps, the last -1: refused.
  c.timestep_spacing = "trailing";
  DDIMScheduler trailing(c, "sched.json");
  EXPECT_THROW_WITH(trailing.set_timesteps(61), "trailing", "61 steps", "62 timesteps");
  trailing.set_timesteps(60);
  EXPECT_EQ(trailing.timesteps().size(0), 60);
}

TEST(DDIMScheduler, GeneratorNoiseMatchesTheSameDrawPassedExplicitly) {
  auto s = scheduler("linspace_sample_eta");
  s.set_timesteps(6);
  const auto x = torch::randn({2, 4, 3, 3}), out = torch::randn({2, 4, 3, 3});
  schedulers::DDIMStepOptions drawn;
  drawn.eta = 0.5;
  drawn.generator = at::detail::createCPUGenerator(7);
  schedulers::DDIMStepOptions given = drawn;
  given.generator.reset();
  given.variance_noise = torch::randn({2, 4, 3, 3}, at::detail::createCPUGenerator(7));
  EXPECT_TRUE(testing::same_tensor(s.step(out, 999, x, drawn).prev_sample, s.step(out, 999, x, given).prev_sample));
  // eta = 0 is deterministic and ignores the generator.
  EXPECT_TRUE(testing::same_tensor(s.step(out, 999, x).prev_sample, s.step(out, 999, x).prev_sample));
}

}  // namespace
}  // namespace lisadiff
