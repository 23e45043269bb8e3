// LCMScheduler, the LCM distillation DDIM solver and the recipe's helpers against diffusers
// and the distillation script's formulas, stored by scripts/make_scheduler_fixtures.py
// (tests/fixtures/schedulers/sampling.*).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <numeric>

#include "config/scheduler_config.h"
#include "io/safetensors.h"
#include "schedulers/ddpm.h"
#include "schedulers/lcm.h"
#include "sampling_fixtures.h"
#include "test_util.h"

namespace lisadiff {
namespace {

using schedulers::LCMScheduler;
using schedulers::LcmDdimSolver;
using testing::fixtures_dir;

const io::SafetensorsReader& ref() { return testing::sampling_ref(); }

const nlohmann::ordered_json& fixture() { return testing::sampling_json(); }

LCMScheduler scheduler(const std::string& name) {
  return LCMScheduler(config::SchedulerConfig::from_json_as(fixture().at("lcm").at(name).at("config"), name, "LCMScheduler"),
                      name);
}

std::optional<int> original_steps(const std::string& name) {
  const auto& c = fixture().at("lcm").at(name);
  return c.contains("original_inference_steps") ? std::optional<int>(c.at("original_inference_steps").get<int>())
                                                 : std::nullopt;
}

using testing::max_abs_error;
using testing::seeded;
using testing::show;

class LCMParity : public ::testing::TestWithParam<std::string> {
 protected:
  // The fixture's loop on our own outputs; the between-step noise from the fixture or drawn
  // from a generator seeded as the script's step generator. Returns the largest abs error.
  double run_loop(bool noise_from_generator) {
    const auto& name = GetParam();
    const std::string key = "lcm." + name;
    auto s = scheduler(name);
    s.set_timesteps(fixture().at("lcm").at(name).at("steps").get<int>(), original_steps(name));
    schedulers::LCMStepOptions options;
    if (noise_from_generator) options.generator = seeded(key + ".noise");
    auto x = ref().tensor(key + ".x_init");
    double worst = 0;
    for (int64_t i = 0; i < s.timesteps().size(0); ++i) {
      const auto n = std::to_string(i);
      if (!noise_from_generator) {
        options.noise = ref().contains(key + ".noise." + n) ? ref().tensor(key + ".noise." + n) : torch::Tensor();
      }
      const auto out = s.step(ref().tensor(key + ".model_output." + n), s.timesteps()[i].item<int64_t>(), x, options);
      const auto prev = ref().tensor(key + ".prev_sample." + n), denoised = ref().tensor(key + ".denoised." + n);
      // diffusers' float32 ops in the same order: measured bit-identical; 1e-6 relative allows
      // a few roundings of another CPU's vector kernels.
      EXPECT_TRUE(testing::close_tensor(key + ".prev_sample." + n, out.prev_sample, prev, 1e-6, 1e-6));
      EXPECT_TRUE(testing::close_tensor(key + ".denoised." + n, out.denoised, denoised, 1e-6, 1e-6));
      worst = std::max({worst, max_abs_error(out.prev_sample, prev), max_abs_error(out.denoised, denoised)});
      x = out.prev_sample;
    }
    return worst;
  }
};

TEST_P(LCMParity, TimestepsEqualDiffusers) {
  const auto& name = GetParam();
  auto s = scheduler(name);
  for (const int n : fixture().at("lcm").at(name).at("schedules")) {
    s.set_timesteps(n, original_steps(name));
    EXPECT_TRUE(testing::same_tensor(s.timesteps(), ref().tensor("lcm." + name + ".timesteps." + std::to_string(n))))
        << name << " with " << n << " steps";
  }
}

TEST_P(LCMParity, SamplingLoopEqualsDiffusers) {
  RecordProperty("max_abs_error", show(run_loop(/*noise_from_generator=*/false)));
  RecordProperty("max_abs_error_generator", show(run_loop(/*noise_from_generator=*/true)));
}

INSTANTIATE_TEST_SUITE_P(Cases, LCMParity, ::testing::Values("sd15", "v_zero_snr_clip", "sample_thresholding"));

TEST(LCMScheduler, Sd15ScheduleIsTheRecipesValidationSchedule) {
  // recipes.md 6.3: LCMScheduler from SD1.5's scheduler folder, original_inference_steps 50.
  auto s = LCMScheduler::from_pretrained(fixtures_dir() / "configs/sd15");
  EXPECT_EQ(s.config().class_name, "LCMScheduler");
  EXPECT_EQ(s.config().original_inference_steps, 50);
  EXPECT_EQ(s.config().timestep_scaling, 10.0);
  const std::vector<std::pair<int, std::vector<int64_t>>> expected = {
      {1, {999}}, {2, {999, 499}}, {4, {999, 759, 499, 259}}, {8, {999, 879, 759, 639, 499, 379, 259, 139}}};
  for (const auto& [n, t] : expected) {
    s.set_timesteps(n);
    EXPECT_TRUE(testing::same_tensor(s.timesteps(), torch::tensor(t, torch::kInt64))) << n << " steps";
  }
  // The last step returns the denoised estimate itself.
  s.set_timesteps(1);
  const auto x = torch::randn({1, 4, 2, 2}), out = torch::randn({1, 4, 2, 2});
  const auto step = s.step(out, 999, x);
  EXPECT_TRUE(testing::same_tensor(step.prev_sample, step.denoised));
}

TEST(LCMScheduler, BadCallsAreErrors) {
  auto s = scheduler("sd15");
  const auto x = torch::zeros({1, 4, 2, 2});
  EXPECT_THROW_WITH(s.step(x, 999, x), "LCMScheduler::step", "set_timesteps first");
  EXPECT_THROW_WITH(s.set_timesteps(51), "num_inference_steps 51", "original_inference_steps = 50");
  EXPECT_THROW_WITH(s.set_timesteps(4, 1001), "original_inference_steps 1001", "num_train_timesteps = 1000");
  EXPECT_THROW_WITH(s.set_timesteps(1001, 1000), "num_inference_steps 1001");
  EXPECT_THROW_WITH(s.set_timesteps(0), "num_inference_steps 0");
  s.set_timesteps(2);
  EXPECT_THROW_WITH(s.step(x, 500, x), "timestep 500 is not in the schedule");
  EXPECT_THROW_WITH(s.step(x, 999, torch::zeros({2, 4, 2, 2})), "differ in shape");
  schedulers::LCMStepOptions both;
  both.noise = x;
  both.generator = at::detail::createCPUGenerator(3);
  EXPECT_THROW_WITH(s.step(x, 999, x, both), "either a noise tensor or a generator");
  s.set_timesteps(2);
  s.step(x, 999, x);
  s.step(x, 499, x);
  EXPECT_THROW_WITH(s.step(x, 499, x), "past the last of 2 steps");
  config::SchedulerConfig c = config::SchedulerConfig::defaults_for("LCMScheduler");
  c.original_inference_steps = 0;
  EXPECT_THROW_WITH(LCMScheduler(c, "sched.json"), "sched.json", "field 'original_inference_steps'");
}

// ---- The distillation script's DDIM solver --------------------------------------------------

class LcmSolverParity : public ::testing::TestWithParam<std::string> {};

TEST_P(LcmSolverParity, GridAlphasAndStepEqualTheScript) {
  const auto& name = GetParam();
  const auto& c = fixture().at("lcm_solver").at(name);
  const std::string key = "lcm_solver." + name;
  const auto alphas_cumprod =
      schedulers::alphas_cumprod_of(config::SchedulerConfig::from_json_as(c.at("config"), name, "DDPMScheduler"));
  const LcmDdimSolver solver(alphas_cumprod, c.at("num_ddim_timesteps").get<int>());
  EXPECT_TRUE(testing::same_tensor(solver.ddim_timesteps(), ref().tensor(key + ".ddim_timesteps")));
  EXPECT_TRUE(testing::same_tensor(solver.alpha_cumprods(), ref().tensor(key + ".alpha_cumprods")));
  EXPECT_TRUE(testing::same_tensor(solver.alpha_cumprods_prev(), ref().tensor(key + ".alpha_cumprods_prev")));
  const auto x_prev = solver.ddim_step(ref().tensor(key + ".x0"), ref().tensor(key + ".eps"), ref().tensor(key + ".index"));
  // float64 like the script (its coefficients are float64): measured bit-identical.
  EXPECT_EQ(x_prev.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(testing::close_tensor(key + ".x_prev", x_prev, ref().tensor(key + ".x_prev"), 1e-12, 1e-12));
  RecordProperty("max_abs_error", show(max_abs_error(x_prev, ref().tensor(key + ".x_prev"))));
}

INSTANTIATE_TEST_SUITE_P(Cases, LcmSolverParity, ::testing::Values("sd15", "cosine_40"));

TEST(LcmDdimSolver, Sd15GridMatchesTheSpec) {
  // recipes.md 6.3: [19, 39, ..., 999]; alpha_prev[0] = alphas_cumprod[0], alpha_prev[j] =
  // alphas_cumprod[20 j - 1].
  const schedulers::DDPMNoiseSchedule ddpm(config::SchedulerConfig::from_file(fixtures_dir() / "configs/sd15/scheduler/scheduler_config.json"));
  const LcmDdimSolver solver(ddpm.alphas_cumprod());
  EXPECT_EQ(solver.num_ddim_timesteps(), 50);
  EXPECT_EQ(solver.ddim_timesteps()[0].item<int64_t>(), 19);
  EXPECT_EQ(solver.ddim_timesteps()[49].item<int64_t>(), 999);
  EXPECT_NEAR(solver.alpha_cumprods_prev()[0].item<double>(), 0.99915, 1e-6);
  EXPECT_EQ(solver.alpha_cumprods_prev()[2].item<double>(), ddpm.alphas_cumprod()[39].item<float>());
  EXPECT_THROW_WITH(LcmDdimSolver(ddpm.alphas_cumprod(), 1001), "num_ddim_timesteps 1001");
  EXPECT_THROW_WITH(solver.ddim_step(torch::zeros({2, 4}), torch::zeros({2, 4}), torch::tensor({0, 50})),
                    "indices 0..50 outside [0, 50)");
}

// ---- Helpers of the recipe -------------------------------------------------------------------

TEST(LcmHelpers, BoundaryScalingsEqualTheScript) {
  const auto t = ref().tensor("helpers.boundary.t");
  for (const double scaling : {10.0, 5.0}) {
    const auto [c_skip, c_out] = schedulers::lcm_boundary_scalings(t, scaling);
    const std::string key = "helpers.boundary." + std::string(scaling == 10.0 ? "10" : "5");
    // The script's float32 ops: measured bit-identical.
    EXPECT_TRUE(testing::same_tensor(c_skip, ref().tensor(key + ".c_skip"))) << key;
    EXPECT_TRUE(testing::same_tensor(c_out, ref().tensor(key + ".c_out"))) << key;
  }
  // recipes.md 6.3.
  const auto [c_skip, c_out] = schedulers::lcm_boundary_scalings(torch::tensor({0, 1, 19, 999}));
  EXPECT_EQ(c_skip[0].item<float>(), 1.0f);
  EXPECT_EQ(c_out[0].item<float>(), 0.0f);
  EXPECT_NEAR(c_skip[1].item<double>(), 0.00249377, 1e-8);
  EXPECT_NEAR(c_out[1].item<double>(), 0.99875234, 1e-7);
  EXPECT_NEAR(c_skip[2].item<double>(), 6.92516e-06, 1e-10);
  EXPECT_NEAR(c_skip[3].item<double>(), 2.50501e-09, 1e-13);
  // The scheduler uses the same function on its 0-d timestep.
  const auto lcm = scheduler("sd15").scalings_for_boundary_condition(19);
  EXPECT_EQ(lcm.c_skip.item<float>(), c_skip[2].item<float>());
}

TEST(LcmHelpers, GuidanceScaleEmbeddingEqualsTheScript) {
  const auto w = ref().tensor("helpers.w");
  for (const int64_t dim : {256, 7}) {
    const auto emb = schedulers::guidance_scale_embedding(w, dim);
    // The script's op sequence with the same torch kernels: bit-identical.
    EXPECT_TRUE(testing::same_tensor(emb, ref().tensor("helpers.w_emb." + std::to_string(dim)))) << dim;
  }
  // recipes.md 6.3 (float64 reference; fp32 arguments up to 15000 rad carry ~1e-3 error).
  const auto emb = schedulers::guidance_scale_embedding(torch::tensor({5.0f}), 256);
  EXPECT_NEAR(emb[0][0].item<double>(), -0.98796644, 2e-3);
  EXPECT_NEAR(emb[0][127].item<double>(), 0.47942554, 1e-6);
  EXPECT_NEAR(emb[0][128].item<double>(), 0.15466841, 2e-3);
  EXPECT_NEAR(emb[0][255].item<double>(), 0.87758256, 1e-6);
  EXPECT_EQ(schedulers::guidance_scale_embedding(torch::tensor({5.0f}), 7)[0][6].item<float>(), 0.0f);
  EXPECT_THROW_WITH(schedulers::guidance_scale_embedding(torch::ones({2, 1}), 256), "expected w of shape [B]");
  EXPECT_THROW_WITH(schedulers::guidance_scale_embedding(torch::ones({2}), 3), "embedding_dim 3");
}

TEST(LcmHelpers, X0AndEpsFromTheModelOutputEqualTheScript) {
  const auto& h = fixture().at("helpers");
  const auto alphas_cumprod = schedulers::alphas_cumprod_of(
      config::SchedulerConfig::from_json_as(h.at("alphas_cumprod_config"), "helpers", "DDPMScheduler"));
  const auto schedules = schedulers::alpha_sigma_schedules(alphas_cumprod);
  const auto z = ref().tensor("helpers.z"), out = ref().tensor("helpers.model_output"), t = ref().tensor("helpers.t");
  for (const std::string type : {"epsilon", "sample", "v_prediction"}) {
    const auto x0 = schedulers::lcm_predicted_original_sample(out, t, z, type, schedules);
    const auto eps = schedulers::lcm_predicted_noise(out, t, z, type, schedules);
    // float32, the script's ops: measured bit-identical.
    EXPECT_TRUE(testing::close_tensor("x0 " + type, x0, ref().tensor("helpers." + type + ".x0"), 1e-6, 1e-6));
    EXPECT_TRUE(testing::close_tensor("eps " + type, eps, ref().tensor("helpers." + type + ".eps"), 1e-6, 1e-6));
    RecordProperty("max_abs_error_" + type,
                   show(std::max(max_abs_error(x0, ref().tensor("helpers." + type + ".x0")),
                                 max_abs_error(eps, ref().tensor("helpers." + type + ".eps")))));
  }
  EXPECT_THROW_WITH(schedulers::lcm_predicted_original_sample(out, t, z, "x0", schedules), "prediction_type 'x0'");
  EXPECT_THROW_WITH(schedulers::lcm_predicted_noise(out, t.slice(0, 0, 2), z, "epsilon", schedules),
                    "2 timesteps for a batch");
  EXPECT_THROW_WITH(schedulers::lcm_predicted_noise(out, torch::tensor({0, 1, 1000}), z, "epsilon", schedules),
                    "outside [0, 1000)");
}

}  // namespace
}  // namespace lisadiff
