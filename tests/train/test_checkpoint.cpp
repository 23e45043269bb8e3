// Checkpoints: resuming reproduces the uninterrupted run bit for bit; a crash while saving
// leaves the previous checkpoint usable and nothing half-written that `latest` could pick.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include "io/atomic_file.h"
#include "models/unet.h"
#include "train/checkpoint.h"
#include "train/lisa.h"
#include "train/training_state.h"
#include "test_util.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::fixtures_dir;
using testing::TempDir;
using train::CheckpointManager;

// The micro-batch k of a deterministic synthetic data stream (the loader's position is k).
struct Batch {
  torch::Tensor latents, timesteps, context;
};
Batch batch(int64_t k) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 + k);
  return {at::randn({2, 4, 8, 8}, gen), at::randint(0, 1000, {2}, gen), at::randn({2, 7, 8}, gen)};
}

struct RunResult {
  std::vector<double> losses;
  std::vector<torch::Tensor> weights;
};

constexpr int64_t kSteps = 20, kAccum = 2, kStopAt = 7;

// Trains micro-sd's UNet with LISA from `start` (0, or a checkpoint) to kSteps; saves
// checkpoint-<kStopAt> into `out` on the way when asked.
RunResult train_lisa(const fs::path& out, const std::optional<fs::path>& resume, bool eight_bit) {
  const fs::path weights = resume ? *resume / "unet" : fixtures_dir() / "pipelines/micro-sd/unet";
  auto unet = models::load_unet(weights);
  unet->train();
  train::LisaOptions lo;
  lo.n_active = 12;
  lo.interval = 3;
  lo.seed = 5;
  train::FusedOptimizerOptions o;
  o.adamw.lr = 1e-3;
  o.lr_at = [](int64_t s) { return 1e-3 * std::min(1.0, static_cast<double>(s + 1) / 4.0); };
  o.max_grad_norm = 1.0;
  o.use_8bit_adam = eight_bit;
  train::Lisa lisa(*unet, lo, o);
  int64_t start = 0;
  if (resume) {
    lisa.load_state(testing::read_json(*resume / "training_state.json").at("lisa"));
    train::load_optimizer_state(lisa.optimizer(), *resume / "optimizer.safetensors");
    train::load_rng_states(*resume / "random_states.safetensors");  // last: loading drew numbers
    start = CheckpointManager::step_of(*resume);
    EXPECT_EQ(lisa.optimizer().global_step(), start);
  } else {
    torch::manual_seed(42);
  }
  RunResult run;
  CheckpointManager manager(out, 3);
  for (int64_t step = start; step < kSteps; ++step) {
    for (int64_t micro = 0; micro < kAccum; ++micro) {
      const auto b = batch(step * kAccum + micro);
      auto noise = torch::randn_like(b.latents);  // the global generator: must resume exactly
      lisa.set_sync(micro == kAccum - 1);
      auto loss = torch::mse_loss(unet->forward(b.latents + noise, b.timesteps, b.context), noise);
      run.losses.push_back(loss.item<double>());
      (loss / kAccum).backward();
    }
    const int64_t done = lisa.step();
    if (done == kStopAt && !resume) {
      manager.save(done, [&](const fs::path& dir) {
        models::save_unet(*unet, dir / "unet");
        train::save_optimizer_state(lisa.optimizer(), dir / "optimizer.safetensors");
        train::save_rng_states(dir / "random_states.safetensors");
        io::write_file_atomic(dir / "training_state.json", nlohmann::json{{"lisa", lisa.state()}}.dump());
      });
    }
  }
  for (auto& p : unet->parameters()) run.weights.push_back(p.detach().clone());
  return run;
}

class Resume : public ::testing::TestWithParam<bool> {};

TEST_P(Resume, StopAtStep7Of20AndResumeEqualsTheStraightRun) {
  TempDir tmp;
  const RunResult straight = train_lisa(tmp.path(), std::nullopt, GetParam());
  CheckpointManager manager(tmp.path());
  const auto ckpt = manager.find("latest");
  ASSERT_TRUE(ckpt);
  EXPECT_EQ(ckpt->filename(), "checkpoint-7");
  const RunResult resumed = train_lisa(tmp.path() / "unused", *ckpt, GetParam());
  ASSERT_EQ(resumed.losses.size(), static_cast<std::size_t>((kSteps - kStopAt) * kAccum));
  for (std::size_t i = 0; i < resumed.losses.size(); ++i) {
    EXPECT_EQ(resumed.losses[i], straight.losses[static_cast<std::size_t>(kStopAt * kAccum) + i]) << "micro-batch " << i;
  }
  for (std::size_t i = 0; i < straight.weights.size(); ++i) {
    EXPECT_TRUE(testing::same_tensor(resumed.weights[i], straight.weights[i])) << "parameter " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Optimizers, Resume, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "adamw8bit" : "adamw"; });

void write_files(const fs::path& dir) { io::write_file_atomic(dir / "weights.bin", "0123456789"); }

TEST(Checkpoints, CrashWhileSavingLeavesThePreviousOneUsable) {
  TempDir tmp;
  CheckpointManager manager(tmp.path());
  manager.save(7, write_files);
  EXPECT_THROW(manager.save(14,
                            [](const fs::path& dir) {
                              write_files(dir);
                              throw std::runtime_error("disk full (simulated)");
                            }),
               std::runtime_error);
  EXPECT_FALSE(fs::exists(tmp.path() / "checkpoint-14"));
  // A process killed mid-save leaves its temporary folder, and an old tool a folder
  // without checkpoint.json: neither is a checkpoint.
  fs::create_directories(tmp.path() / ".checkpoint-21.tmp-999");
  write_files(tmp.path() / ".checkpoint-21.tmp-999");
  fs::create_directories(tmp.path() / "checkpoint-28");
  const auto latest = manager.find("latest");
  ASSERT_TRUE(latest);
  EXPECT_EQ(latest->filename(), "checkpoint-7");
  EXPECT_EQ(testing::read_file(*latest / "weights.bin"), "0123456789");
  EXPECT_EQ(CheckpointManager::step_of(*latest), 7);
  manager.save(35, write_files);  // cleans the leftover temporary folder
  EXPECT_FALSE(fs::exists(tmp.path() / ".checkpoint-21.tmp-999"));
  EXPECT_EQ(manager.find("latest")->filename(), "checkpoint-35");
}

TEST(Checkpoints, TotalLimitKeepsTheNewest) {
  TempDir tmp;
  CheckpointManager manager(tmp.path(), 2);
  for (int64_t s : {500, 1000, 1500, 2000}) manager.save(s, write_files);
  const auto all = manager.list();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].first, 1500);
  EXPECT_EQ(all[1].first, 2000);
  EXPECT_THROW_WITH(CheckpointManager(tmp.path(), 0), "checkpoints_total_limit must be at least 1");
}

TEST(Checkpoints, ResavingAStepAndFailedSavesNeverLoseTheNewestCheckpoint) {
  TempDir tmp;
  CheckpointManager manager(tmp.path(), 2);
  manager.save(100, write_files);
  manager.save(200, write_files);
  manager.save(200, write_files);  // the same step again: still two checkpoints
  EXPECT_EQ(manager.list().size(), 2u);
  CheckpointManager one(tmp.path() / "one", 1);
  one.save(5, write_files);
  EXPECT_THROW(one.save(10, [](const fs::path&) { throw std::runtime_error("disk full (simulated)"); }),
               std::runtime_error);
  ASSERT_TRUE(one.find("latest"));  // rotation happens only after a successful save
  EXPECT_EQ(one.find("latest")->filename(), "checkpoint-5");
}

TEST(Checkpoints, OddFolderNamesAreIgnored) {
  TempDir tmp;
  CheckpointManager manager(tmp.path());
  manager.save(3, write_files);
  for (const char* name : {"checkpoint-99999999999999999999999", "checkpoint-007", "checkpoint-", "checkpoint-1x"}) {
    fs::create_directories(tmp.path() / name);
    write_files(tmp.path() / name);
    io::write_file_atomic(tmp.path() / name / "checkpoint.json", R"({"global_step": 1})");
  }
  EXPECT_EQ(manager.find("latest")->filename(), "checkpoint-3");
}

TEST(Checkpoints, OptimizerStateOfTheOtherKindIsAnError) {
  TempDir tmp;
  torch::nn::Linear a(4, 4);
  train::FusedOptimizer fp32({{"weight", a->weight}}, {});
  a->forward(torch::randn({2, 4})).sum().backward();
  fp32.finish_step();
  train::save_optimizer_state(fp32, tmp.path() / "o.safetensors");
  torch::nn::Linear b(4, 4);
  train::FusedOptimizerOptions o8;
  o8.use_8bit_adam = true;
  train::FusedOptimizer eight({{"weight", b->weight}}, o8);
  EXPECT_THROW_WITH(train::load_optimizer_state(eight, tmp.path() / "o.safetensors"), "holds fp32 AdamW state",
                    "--use_8bit_adam must match");
}

TEST(Checkpoints, ResumeFromANameOrPathLooksInsideOutputDir) {
  TempDir tmp;
  CheckpointManager manager(tmp.path());
  manager.save(300, write_files);
  EXPECT_EQ(*manager.find("checkpoint-300"), tmp.path() / "checkpoint-300");
  EXPECT_EQ(*manager.find("/elsewhere/checkpoint-300"), tmp.path() / "checkpoint-300");
  EXPECT_FALSE(manager.find("checkpoint-301"));
  EXPECT_FALSE(CheckpointManager(tmp.path() / "empty").find("latest"));
}

TEST(Checkpoints, OptimizerStateFromTheWrongModelIsAnError) {
  TempDir tmp;
  auto a = torch::nn::Linear(4, 4);
  train::FusedOptimizer opt({{"weight", a->weight}}, {});
  a->forward(torch::randn({2, 4})).sum().backward();
  opt.finish_step();
  train::save_optimizer_state(opt, tmp.path() / "o.safetensors");
  auto b = torch::nn::Linear(4, 4);
  train::FusedOptimizer other({{"bias", b->bias}}, {});
  EXPECT_THROW_WITH(train::load_optimizer_state(other, tmp.path() / "o.safetensors"), "o.safetensors",
                    "weight/exp_avg", "parameter this optimizer does not have");
}

// training_state.json is checked whole before a resume loads anything (the fuzz target
// fuzz/fuzz_training_state.cpp drives the same function): each field's presence, type and range.
TEST(TrainingState, EveryFieldIsCheckedBeforeAnythingLoads) {
  const nlohmann::json good = {{"format", train::kTrainingStateFormat}, {"global_step", 6}, {"schedule_step", 6},
                               {"micro_batches", 12}, {"method", "lisa"}, {"model", "unet"},
                               {"mixed_precision", "no"}, {"gradient_accumulation_steps", 2},
                               {"world_size", 2}, {"recipe", "text_to_image"},
                               {"lisa", nlohmann::json::object()}, {"parts", nlohmann::json::object()},
                               {"rank_parts", {nlohmann::json::object(), nlohmann::json::object()}}};
  const auto s = train::parse_training_state(good, "ck/training_state.json");
  EXPECT_EQ(s.global_step, 6);
  EXPECT_EQ(s.recipe, "text_to_image");
  EXPECT_EQ(s.world_size, 2);
  const auto with = [&](const char* key, const nlohmann::json& value) {
    auto j = good;
    if (value.is_discarded()) {
      j.erase(key);
    } else {
      j[key] = value;
    }
    return j;
  };
  const auto gone = nlohmann::json(nlohmann::json::value_t::discarded);
  EXPECT_THROW_WITH(train::parse_training_state(nlohmann::json::array(), "ck/t.json"), "ck/t.json", "not a JSON object");
  EXPECT_THROW_WITH(train::parse_training_state(with("global_step", gone), "ck/t.json"), "field 'global_step'", "missing");
  EXPECT_THROW_WITH(train::parse_training_state(with("global_step", "6"), "ck/t.json"), "field 'global_step'",
                    "not an integer");
  EXPECT_THROW_WITH(train::parse_training_state(with("global_step", -1), "ck/t.json"), "field 'global_step'", "outside");
  EXPECT_THROW_WITH(train::parse_training_state(with("global_step", 18446744073709551615ull), "ck/t.json"),
                    "field 'global_step'", "outside");
  EXPECT_THROW_WITH(train::parse_training_state(with("schedule_step", 7), "ck/t.json"), "field 'schedule_step'");
  EXPECT_THROW_WITH(train::parse_training_state(with("format", 1), "ck/t.json"), "older lisadiff");
  EXPECT_THROW_WITH(train::parse_training_state(with("gradient_accumulation_steps", 0), "ck/t.json"),
                    "field 'gradient_accumulation_steps'");
  EXPECT_THROW_WITH(train::parse_training_state(with("lisa", 3), "ck/t.json"), "field 'lisa'", "not an object");
  EXPECT_THROW_WITH(train::parse_training_state(with("parts", gone), "ck/t.json"), "field 'parts'", "missing");
  EXPECT_THROW_WITH(train::parse_training_state(with("rank_parts", {nlohmann::json::object()}), "ck/t.json"),
                    "field 'rank_parts'", "2 objects");
  EXPECT_THROW_WITH(train::parse_training_state(with("recipe", 5), "ck/t.json"), "field 'recipe'", "not a string");
}

}  // namespace
}  // namespace lisadiff
