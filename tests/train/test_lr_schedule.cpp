// LR schedules: parity with diffusers' get_scheduler over whole runs (the values that
// scripts/make_train_fixtures.py recorded in tests/fixtures/train/lr_schedules.json), the
// numbers of recipes.md §6.5, the global-step rule, the accelerate N-process equivalence,
// and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <set>

#include "train/lr_schedule.h"
#include "test_util.h"

namespace lisadiff {
namespace {

using testing::CapturedLog;
using testing::fixtures_dir;
using testing::read_json;
using train::LrSchedule;
using train::LrScheduleType;
using train::OriginalScheduling;

// The issue asks for diffusers' values to 1e-7 relative over a whole run. The formulas run
// in the same double operations on the same libm, so the measured error is 0.
constexpr double kRelTol = 1e-7;

LrSchedule make(const std::string& name, std::int64_t warmup, std::optional<std::int64_t> total, double lr = 1e-4) {
  LrSchedule s = LrSchedule::from_name(name);
  s.base_lr = lr;
  s.warmup_steps = warmup;
  s.total_steps = total;
  s.validate();
  return s;
}

TEST(LrScheduleParity, MatchesDiffusersGetSchedulerOverWholeRuns) {
  const auto fixture = read_json(fixtures_dir() / "train" / "lr_schedules.json");
  std::set<std::string> names;
  double max_rel = 0;
  std::size_t values = 0;
  for (const auto& item : fixture.at("cases")) {
    config::Json settings = item;
    settings.erase("lr");
    const LrSchedule schedule = LrSchedule::from_json(settings, "lr_schedules.json");
    names.insert(schedule.name());
    const auto& expected = item.at("lr");
    // The fixture runs s = 0 .. T+5: past the end, where polynomial switches to lr_end.
    ASSERT_EQ(expected.size(), static_cast<std::size_t>(*schedule.total_steps + 6)) << schedule.summary();
    for (std::size_t s = 0; s < expected.size(); ++s) {
      const double want = expected[s].get<double>();
      const double got = schedule.lr(static_cast<std::int64_t>(s));
      const double err = std::abs(got - want);
      if (want != 0) max_rel = std::max(max_rel, err / std::abs(want));
      ASSERT_LE(err, kRelTol * std::abs(want)) << schedule.summary() << " at step " << s << ": " << got << " vs " << want;
      ++values;
    }
  }
  // Every schedule lisadiff offers is covered by the fixture.
  EXPECT_EQ(names, std::set<std::string>(LrSchedule::known_names().begin(), LrSchedule::known_names().end()));
  std::cout << "compared " << values << " lr values, max relative error " << max_rel << "\n";
  RecordProperty("max_relative_error", std::to_string(max_rel));
}

TEST(LrSchedule, SpecNumbersForWarmup500Total1000) {
  // recipes.md §6.5.
  const auto linear = make("linear", 500, 1000);
  EXPECT_EQ(linear.multiplier(0), 0.0);
  EXPECT_DOUBLE_EQ(linear.multiplier(250), 0.5);
  EXPECT_DOUBLE_EQ(linear.multiplier(500), 1.0);
  EXPECT_DOUBLE_EQ(linear.multiplier(750), 0.5);
  EXPECT_EQ(linear.multiplier(1000), 0.0);
  EXPECT_EQ(linear.multiplier(1200), 0.0);  // clamped, never negative

  const auto cosine = make("cosine", 500, 1000);
  EXPECT_NEAR(cosine.multiplier(750), 0.5, 1e-15);
  EXPECT_NEAR(cosine.multiplier(1000), 0.0, 1e-15);
  EXPECT_DOUBLE_EQ(cosine.multiplier(500), 1.0);

  auto restarts = make("cosine_with_restarts", 500, 1000);
  restarts.num_cycles = 2;
  EXPECT_NEAR(restarts.multiplier(625), 0.5, 1e-15);  // progress 0.25
  EXPECT_DOUBLE_EQ(restarts.multiplier(750), 1.0);    // progress 0.5: restart
  EXPECT_EQ(restarts.multiplier(1000), 0.0);          // progress 1: 0 from here on
  EXPECT_EQ(restarts.multiplier(1001), 0.0);

  auto poly = make("polynomial", 0, 1000);
  poly.lr_end = 1e-7;
  poly.power = 1.0;
  EXPECT_NEAR(poly.multiplier(500), 0.5005, 1e-12);
  EXPECT_NEAR(poly.lr(1000), 1e-7, 1e-20);
  EXPECT_NEAR(poly.lr(1001), 1e-7, 1e-20);  // s > T: lr_end
}

TEST(LrSchedule, WarmupStartsAtZeroAndConstantIgnoresIt) {
  // The first update uses lr(0): 0 for any schedule with warmup.
  for (const auto* name : {"constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"}) {
    const auto s = make(name, 10, 100);
    EXPECT_EQ(s.lr(0), 0.0) << name;
    EXPECT_DOUBLE_EQ(s.lr(5), 0.5e-4) << name;
    EXPECT_DOUBLE_EQ(s.lr(10), 1e-4) << name;
  }
  // constant ignores warmup: the scripts' default lr_warmup_steps=500 has no effect.
  const auto constant = make("constant", 500, std::nullopt);
  EXPECT_EQ(constant.lr(0), 1e-4);
  EXPECT_EQ(constant.lr(499), 1e-4);
  EXPECT_EQ(constant.lr(1 << 30), 1e-4);
  // constant_with_warmup needs no total either.
  EXPECT_EQ(make("constant_with_warmup", 4, std::nullopt).multiplier(2), 0.5);
}

TEST(LrSchedule, IsAPureFunctionOfTheGlobalStep) {
  // A tensor that LISA activates at step 5000 gets lr(5000), whatever was asked before.
  const auto s = make("cosine", 500, 10000);
  const double late_first = s.lr(5000);
  for (std::int64_t k = 0; k < 5000; k += 7) (void)s.lr(k);
  EXPECT_EQ(s.lr(5000), late_first);
  EXPECT_GT(late_first, 0.5e-4);  // past warmup, on the decay: not lr(0)
  EXPECT_NE(late_first, s.lr(0));
}

TEST(LrSchedule, OriginalsCurveUnderAccelerateEqualsTheOptimizerStepCurve) {
  // recipes.md §1.1: IP2P/DPO/LISA scale W and T by N and accelerate steps N times per
  // update; LCM neither scales nor steps more than once. Both equal lisadiff's curve.
  std::vector<LrSchedule> schedules = {make("linear", 10, 100), make("cosine", 7, 93), make("polynomial", 5, 60),
                                       make("constant_with_warmup", 9, 50)};
  auto restarts = make("cosine_with_restarts", 3, 77);
  restarts.num_cycles = 3;
  schedules.push_back(restarts);
  for (const auto& s : schedules) {
    for (int n = 1; n <= 8; ++n) {
      for (std::int64_t k = 0; k <= *s.total_steps + 3; ++k) {
        const OriginalScheduling ip2p{n, /*split_batches=*/false, /*script_scales_steps=*/true};
        const OriginalScheduling lcm{n, /*split_batches=*/true, /*script_scales_steps=*/false};
        ASSERT_DOUBLE_EQ(train::original_multiplier(s, k, ip2p), s.multiplier(k)) << s.summary() << " N=" << n << " k=" << k;
        ASSERT_EQ(train::original_multiplier(s, k, lcm), s.multiplier(k)) << s.summary() << " N=" << n << " k=" << k;
      }
    }
  }
  // L-LCM scales W and T by N but steps once per update: its warmup lasts N times longer.
  const auto linear = make("linear", 10, 100);
  const OriginalScheduling l_lcm{4, /*split_batches=*/true, /*script_scales_steps=*/true};
  EXPECT_DOUBLE_EQ(train::original_multiplier(linear, 10, l_lcm), 0.25);
  EXPECT_DOUBLE_EQ(linear.multiplier(10), 1.0);
  EXPECT_THROW_WITH(train::original_multiplier(linear, 1, {0, false, true}), "num_processes");
}

TEST(LrSchedule, JsonRoundTripUsesTheScriptsFlagNames) {
  const auto json = config::Json::parse(R"({"lr_scheduler": "cosine_with_restarts", "learning_rate": 5e-5,
      "lr_warmup_steps": 20, "max_train_steps": 300, "lr_num_cycles": 3, "lr_power": 2.0})");
  const auto s = LrSchedule::from_json(json, "recipe.json");
  EXPECT_EQ(s.type, LrScheduleType::kCosineWithRestarts);
  EXPECT_EQ(s.base_lr, 5e-5);
  EXPECT_EQ(s.warmup_steps, 20);
  EXPECT_EQ(s.total_steps, 300);
  EXPECT_EQ(s.num_cycles, 3);
  EXPECT_EQ(s.power, 2.0);
  const auto back = LrSchedule::from_json(s.to_json(), "round trip");
  EXPECT_EQ(back.to_json(), s.to_json());
  for (std::int64_t k = 0; k < 310; k += 13) EXPECT_EQ(back.lr(k), s.lr(k));

  // Defaults are the diffusers scripts' flag defaults.
  const auto defaults = LrSchedule::from_json(config::Json::object(), "empty.json");
  EXPECT_EQ(defaults.name(), "constant");
  EXPECT_EQ(defaults.warmup_steps, 500);
  EXPECT_FALSE(defaults.total_steps.has_value());
  EXPECT_EQ(defaults.num_cycles, 1);
  EXPECT_EQ(defaults.power, 1.0);
  EXPECT_EQ(defaults.lr_end, 1e-7);

  // Standalone JSON: unknown keys are reported once; a shared reader leaves that to its owner.
  {
    const CapturedLog log;
    (void)LrSchedule::from_json(config::Json::parse(R"({"lr_scheduler": "linear", "max_train_steps": 600,
        "lr_warmup_step": 10})"), "typo.json");
    EXPECT_NE(log.text().find("typo.json: ignoring unknown keys: lr_warmup_step"), std::string::npos) << log.text();
  }
  {
    const auto recipe = config::Json::parse(R"({"lr_scheduler": "linear", "max_train_steps": 600, "seed": 3})");
    config::FieldReader reader(recipe, "recipe.json");
    const CapturedLog log;
    const auto read = LrSchedule::read(reader);
    EXPECT_EQ(read.total_steps, 600);
    EXPECT_EQ(reader.unclaimed(), std::vector<std::string>{"seed"});
    EXPECT_EQ(log.text(), "");
  }
}

TEST(LrSchedule, NamesAndBadNames) {
  EXPECT_EQ(LrSchedule::known_names().size(), 6u);
  for (const auto& name : LrSchedule::known_names()) EXPECT_EQ(LrSchedule::from_name(name).name(), name);
  EXPECT_THROW_WITH(LrSchedule::from_name("cosine_annealing"), "unknown lr_scheduler \"cosine_annealing\"", "constant",
                    "constant_with_warmup", "linear", "cosine_with_restarts", "polynomial");
  EXPECT_THROW_WITH(LrSchedule::from_name("piecewise_constant"), "piecewise_constant", "not supported");
  EXPECT_THROW_WITH(LrSchedule::from_json(config::Json::parse(R"({"lr_scheduler": "step"})"), "cfg.json"), "cfg.json",
                    "field 'lr_scheduler'", "unknown lr_scheduler \"step\"");
}

TEST(LrSchedule, BadValuesNameTheFieldAndTheProblem) {
  const auto bad = [](const std::string& text) { return LrSchedule::from_json(config::Json::parse(text), "cfg.json"); };
  EXPECT_THROW_WITH(bad(R"({"lr_scheduler": "polynomial", "learning_rate": 1e-7, "max_train_steps": 10, "lr_warmup_steps": 0})"),
                    "cfg.json", "field 'learning_rate'", "lr_end (1e-07) must be smaller than initial lr (1e-07)");
  EXPECT_THROW_WITH(bad(R"({"lr_scheduler": "polynomial", "max_train_steps": 10, "lr_warmup_steps": 10})"),
                    "field 'lr_warmup_steps'", "equals max_train_steps 10");
  EXPECT_THROW_WITH(bad(R"({"lr_scheduler": "polynomial", "max_train_steps": 10, "lr_warmup_steps": 0, "lr_power": 0})"),
                    "field 'lr_power'", "must be positive");
  EXPECT_THROW_WITH(bad(R"({"lr_warmup_steps": -1})"), "field 'lr_warmup_steps'", "must be >= 0, found -1");
  EXPECT_THROW_WITH(bad(R"({"lr_scheduler": "linear", "max_train_steps": -5, "lr_warmup_steps": 0})"),
                    "field 'max_train_steps'", "must be >= 0");
  EXPECT_THROW_WITH(bad(R"({"lr_scheduler": "cosine"})"), "field 'max_train_steps'", "\"cosine\" needs the total");
  EXPECT_THROW_WITH(bad(R"({"lr_scheduler": "linear", "max_train_steps": 100})"), "field 'lr_warmup_steps'",
                    "500 is longer than max_train_steps 100");
  EXPECT_THROW_WITH(bad(R"({"lr_scheduler": "cosine_with_restarts", "max_train_steps": 100, "lr_warmup_steps": 0,
                            "lr_num_cycles": 0})"),
                    "field 'lr_num_cycles'", "must be >= 1");
  EXPECT_THROW_WITH(bad(R"({"learning_rate": 0})"), "field 'learning_rate'", "must be positive");
  EXPECT_THROW_WITH(bad(R"({"lr_warmup_steps": "10"})"), "cfg.json", "field 'lr_warmup_steps'", "expected an integer",
                    "string \"10\"");
  EXPECT_THROW_WITH(bad(R"({"max_train_steps": 1.5})"), "field 'max_train_steps'", "expected null or an integer");
  EXPECT_THROW_WITH(bad("[1]"), "cfg.json", "expected a JSON object");
  // Without a source the messages still say what is wrong.
  LrSchedule s;
  s.type = LrScheduleType::kLinear;
  EXPECT_THROW_WITH(s.validate(), "LR schedule: field 'max_train_steps'");
  EXPECT_THROW_WITH(make("linear", 0, 10).multiplier(-1), "step must be >= 0, found -1");

  // constant_with_warmup with a warmup longer than the run is legal but suspicious.
  const CapturedLog log;
  (void)bad(R"({"lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 50, "max_train_steps": 40})");
  EXPECT_NE(log.text().find("never reaches learning_rate"), std::string::npos) << log.text();
}

}  // namespace
}  // namespace lisadiff
