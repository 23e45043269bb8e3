// DDPM noise schedule (training side) against diffusers' DDPMScheduler values stored by
// scripts/make_scheduler_fixtures.py.
#include <gtest/gtest.h>

#include "config/scheduler_config.h"
#include "io/safetensors.h"
#include "schedulers/ddpm.h"
#include "test_util.h"

namespace lisadiff {
namespace {

using schedulers::DDPMNoiseSchedule;
using testing::fixtures_dir;

class DDPMParity : public ::testing::TestWithParam<std::string> {
 protected:
  static const io::SafetensorsReader& ref() {
    static io::SafetensorsReader r(fixtures_dir() / "schedulers/ddpm.safetensors");
    return r;
  }
  static DDPMNoiseSchedule schedule(const std::string& name) {
    const auto cases = testing::read_json(fixtures_dir() / "schedulers/ddpm.json").at("cases");
    return DDPMNoiseSchedule(config::SchedulerConfig::from_json(cases.at(name), name), name);
  }
};

TEST_P(DDPMParity, BetasAlphasAndTheForwardProcessEqualDiffusers) {
  const auto& name = GetParam();
  const auto s = schedule(name);
  const auto& r = ref();
  // Same float32 ops as diffusers: the schedule must match to the last bit or within one
  // float32 rounding (1e-7 relative) where libm's cos/sqrt might differ.
  EXPECT_TRUE(testing::close_tensor(name + ".betas", s.betas(), r.tensor(name + ".betas"), 0, 2e-7));
  EXPECT_TRUE(testing::close_tensor(name + ".alphas_cumprod", s.alphas_cumprod(), r.tensor(name + ".alphas_cumprod"), 0, 1e-6));
  const auto x0 = r.tensor(name + ".x0"), noise = r.tensor(name + ".noise"), t = r.tensor(name + ".t");
  EXPECT_TRUE(testing::close_tensor(name + ".noisy", s.add_noise(x0, noise, t), r.tensor(name + ".noisy"), 1e-6, 1e-6));
  EXPECT_TRUE(testing::close_tensor(name + ".velocity", s.get_velocity(x0, noise, t), r.tensor(name + ".velocity"), 1e-6, 1e-6));
  // In the sample's dtype, as diffusers.
  const auto noisy16 = s.add_noise(x0.to(torch::kHalf), noise.to(torch::kHalf), t);
  EXPECT_EQ(noisy16.scalar_type(), torch::kHalf);
  EXPECT_TRUE(testing::close_tensor(name + ".fp16.noisy", noisy16.to(torch::kFloat32),
                                    r.tensor(name + ".fp16.noisy").to(torch::kFloat32), 1e-3, 1e-3));
  EXPECT_TRUE(testing::close_tensor(name + ".fp16.velocity",
                                    s.get_velocity(x0.to(torch::kHalf), noise.to(torch::kHalf), t).to(torch::kFloat32),
                                    r.tensor(name + ".fp16.velocity").to(torch::kFloat32), 1e-3, 1e-3));
  // The training target follows prediction_type.
  const auto target = s.training_target(x0, noise, t);
  if (s.config().prediction_type == "epsilon") {
    EXPECT_TRUE(testing::same_tensor(target, noise));
  } else if (s.config().prediction_type == "v_prediction") {
    EXPECT_TRUE(testing::close_tensor("target", target, r.tensor(name + ".velocity"), 1e-6, 1e-6));
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, DDPMParity,
                         ::testing::Values("sd15", "ddpm_default", "cosine_v", "zero_snr", "trained_16"));

TEST(DDPMNoiseSchedule, ZeroSnrEndsAtZeroAndSd15ValuesMatchTheSpec) {
  config::SchedulerConfig c;
  c.beta_schedule = "scaled_linear";
  c.beta_start = 0.00085;
  c.beta_end = 0.012;
  c.rescale_betas_zero_snr = true;
  EXPECT_EQ(DDPMNoiseSchedule(c).alphas_cumprod()[-1].item<float>(), 0.0f);
  c.rescale_betas_zero_snr = false;
  const DDPMNoiseSchedule sd15(c);
  // recipes.md 6.2 (float64 reference): alpha_bar_0 = 1 - 0.00085, alpha_bar_999 ~ 0.0047.
  EXPECT_NEAR(sd15.alphas_cumprod()[0].item<double>(), 0.99915, 1e-6);
  EXPECT_NEAR(sd15.alphas_cumprod()[999].item<double>(), 0.0046, 2e-4);
}

TEST(DDPMNoiseSchedule, BadInputsAreErrors) {
  const DDPMNoiseSchedule s{config::SchedulerConfig{}};
  const auto x = torch::zeros({2, 4, 3, 3});
  EXPECT_THROW_WITH(s.add_noise(x, x, torch::tensor({0, 1000})), "add_noise", "outside [0, 1000)");
  EXPECT_THROW_WITH(s.add_noise(x, x, torch::tensor({-1, 3})), "outside");
  EXPECT_THROW_WITH(s.add_noise(x, x, torch::tensor({0.5, 1.0})), "integers");
  EXPECT_THROW_WITH(s.get_velocity(x, torch::zeros({2, 4, 3, 4}), torch::tensor({1, 2})), "get_velocity", "differ in shape");
  EXPECT_THROW_WITH(s.add_noise(x, x, torch::tensor({1, 2, 3})), "timesteps of shape [3] for a batch of 2");
  config::SchedulerConfig c;
  c.num_train_timesteps = 4;
  c.trained_betas = std::vector<double>{0.1, 0.2};
  EXPECT_THROW_WITH(DDPMNoiseSchedule(c, "sched.json"), "sched.json", "trained_betas", "found 2");
  c = config::SchedulerConfig{};
  c.beta_schedule = "sigmoid";
  EXPECT_THROW_WITH(DDPMNoiseSchedule(c, "sched.json"), "sched.json", "beta_schedule");
  testing::TempDir tmp;
  EXPECT_THROW_WITH(DDPMNoiseSchedule::from_pretrained(tmp.path()), tmp.path().string(), "scheduler_config.json");
}

TEST(DDPMNoiseSchedule, FromAPipelineFolderReadsItsSchedulerConfig) {
  const auto s = DDPMNoiseSchedule::from_pretrained(fixtures_dir() / "pipelines/micro-sd");
  const auto direct = config::SchedulerConfig::from_file(fixtures_dir() / "pipelines/micro-sd/scheduler/scheduler_config.json");
  EXPECT_EQ(s.num_train_timesteps(), direct.num_train_timesteps);
  EXPECT_EQ(s.config().beta_schedule, direct.beta_schedule);
  // A 0-d timestep broadcasts over the batch.
  const auto x = torch::ones({3, 2});
  const auto y = s.add_noise(x, torch::zeros({3, 2}), torch::tensor(5));
  EXPECT_TRUE(testing::close_tensor("0-d", y, x * std::sqrt(s.alphas_cumprod()[5].item<double>()), 1e-7, 1e-6));
}

}  // namespace
}  // namespace lisadiff
