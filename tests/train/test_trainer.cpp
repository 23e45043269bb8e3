// The shared training loop: accumulation windows, LISA re-draws by optimizer step, the
// classic and fused steps, the precision switch, metrics, checkpoints and exact resume.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>

#include "io/safetensors.h"
#include "io/tfevent_reader.h"
#include "models/unet.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "train/synthetic_step.h"
#include "test_util.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::fixtures_dir;
using testing::TempDir;
using train::MicroBatch;
using train::MicroResult;
using train::Trainer;
using train::TrainerOptions;
using train::TrainMethod;

models::UNet2DConditionModel micro_unet() { return models::load_unet(fixtures_dir() / "pipelines/micro-sd/unet"); }

MicroResult denoise(models::UNet2DConditionModel unet, const MicroBatch& mb, std::vector<double>* losses) {
  return testing::synthetic_denoise_step(unet, mb, losses);
}

TrainerOptions base_options(const fs::path& out, TrainMethod method) {
  TrainerOptions o;
  o.method = method;
  o.output_dir = out;
  o.max_train_steps = 12;
  o.gradient_accumulation_steps = 2;
  o.checkpointing_steps = 5;
  o.schedule.type = train::LrScheduleType::kCosine;
  o.schedule.base_lr = 1e-3;
  o.schedule.warmup_steps = 3;
  o.max_grad_norm = 0.5;
  o.lisa.n_active = 10;
  o.lisa.interval = 3;
  o.lisa.seed = 7;
  o.lora.rank = 2;
  o.use_ema = true;
  o.ema.decay = 0.9;
  return o;
}

std::vector<torch::Tensor> weights(const Trainer& trainer) {
  std::vector<torch::Tensor> out;
  for (const auto& [name, p] : trainer.trainable()) out.push_back(p.detach().clone());
  return out;
}

std::vector<int64_t> logged_steps(const fs::path& metrics) {
  std::vector<int64_t> steps;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("event")) steps.push_back(j.at("step").get<int64_t>());
  }
  return steps;
}

// One run of the micro UNet, as a fresh process would start it (the global generator seeded
// with `seed`): `prepare` adjusts the Trainer first (a loss scale, a resume), `check` looks at
// it after training. With `crash_at`, the micro-step throws in that step, as a crash after the
// last checkpoint would, and the run must end with that exception.
void run_micro(const TrainerOptions& options, uint64_t seed, std::vector<double>* losses,
               const std::function<void(Trainer&)>& prepare = {}, const std::function<void(Trainer&)>& check = {},
               std::optional<int64_t> crash_at = std::nullopt) {
  torch::manual_seed(seed);
  auto unet = micro_unet();
  Trainer trainer(train::trained_unet(unet), options);
  if (prepare) prepare(trainer);
  const auto step = [&](const MicroBatch& mb) {
    if (crash_at && mb.step == *crash_at) throw std::runtime_error("simulated crash");
    return denoise(unet, mb, losses);
  };
  if (crash_at) {
    EXPECT_THROW(trainer.train(step), std::runtime_error);
  } else {
    trainer.train(step);
  }
  if (check) check(trainer);
}

TrainerOptions resuming(TrainerOptions o) {
  o.resume_from_checkpoint = "latest";
  return o;
}

struct Variant {
  const char* name;
  TrainMethod method;
  bool fused;
  train::MixedPrecision precision;
  std::optional<torch::ScalarType> frozen;
};

void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

class TrainerResume : public ::testing::TestWithParam<Variant> {};

TEST_P(TrainerResume, ACrashAtStep7AndAResumeFromCheckpoint5EqualTheStraightRun) {
  const Variant v = GetParam();
  TempDir tmp;
  const auto options = [&](const fs::path& out) {
    auto o = base_options(out, v.method);
    o.fused_step = v.fused;
    o.mixed_precision = v.precision;
    o.frozen_dtype = v.frozen;
    return o;
  };
  // The straight run.
  std::vector<double> straight_losses;
  std::vector<torch::Tensor> straight_weights, straight_ema;
  run_micro(options(tmp / "straight"), 3, &straight_losses, {}, [&](Trainer& trainer) {
    EXPECT_EQ(trainer.global_step(), 12);
    EXPECT_EQ(trainer.micro_batches(), 24);
    straight_weights = weights(trainer);
    for (const auto& [name, t] : trainer.ema()->shadows()) straight_ema.push_back(t.clone());
  });
  ASSERT_EQ(straight_losses.size(), 24u);
  // A run that crashes in step 7 (after checkpoint-5)...
  run_micro(options(tmp / "crashed"), 3, nullptr, {}, {}, /*crash_at=*/7);
  EXPECT_EQ(logged_steps(tmp / "crashed/metrics.jsonl"), (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7}));
  // ...and its resumption, in a new process state (other seed, fresh model).
  std::vector<double> resumed_losses;
  run_micro(
      resuming(options(tmp / "crashed")), 99, &resumed_losses,
      [&](Trainer& trainer) {
        EXPECT_EQ(trainer.resume(), 5);
        EXPECT_EQ(trainer.micro_batches(), 10);
      },
      [&](Trainer& trainer) {
        ASSERT_EQ(resumed_losses.size(), 14u);
        for (std::size_t i = 0; i < resumed_losses.size(); ++i) {
          EXPECT_EQ(resumed_losses[i], straight_losses[10 + i]) << "micro-batch " << 10 + i;
        }
        const auto w = weights(trainer);
        ASSERT_EQ(w.size(), straight_weights.size());
        for (std::size_t i = 0; i < w.size(); ++i) {
          EXPECT_TRUE(testing::same_tensor(w[i], straight_weights[i])) << trainer.trainable()[i].first;
        }
        // The EMA resumed too.
        const auto& shadows = trainer.ema()->shadows();
        ASSERT_EQ(shadows.size(), straight_ema.size());
        for (std::size_t i = 0; i < shadows.size(); ++i) {
          EXPECT_TRUE(testing::same_tensor(shadows[i].second, straight_ema[i])) << "EMA " << shadows[i].first;
        }
      });
  // Metrics: each step once, the abandoned branch (6, 7) replaced.
  std::vector<int64_t> expected(12);
  std::iota(expected.begin(), expected.end(), 1);
  EXPECT_EQ(logged_steps(tmp / "crashed/metrics.jsonl"), expected);
  EXPECT_TRUE(fs::exists(tmp / "crashed/checkpoint-10/training_state.json"));
  // TensorBoard (report_to's default): the crashed run's file keeps its steps 6 and 7, the
  // resumed run's file starts with a SessionLog START at step 6 that drops them, so what
  // TensorBoard shows equals the straight run, step for step.
  const auto files = testing::event_files(tmp / "crashed/logs");
  ASSERT_EQ(files.size(), 2u);
  std::size_t raw_losses = 0;
  for (const auto& file : files) {
    for (const auto& event : testing::read_events(file)) {
      raw_losses += event.has_summary() && event.summary().value(0).tag() == "loss";
    }
  }
  EXPECT_EQ(raw_losses, 14u);
  const auto straight_tb = testing::tensorboard_scalars(tmp / "straight/logs", "loss");
  ASSERT_EQ(straight_tb.size(), 12u);
  EXPECT_EQ(testing::tensorboard_scalars(tmp / "crashed/logs", "loss"), straight_tb);
}

INSTANTIATE_TEST_SUITE_P(
    Methods, TrainerResume,
    ::testing::Values(Variant{"lisa", TrainMethod::kLisa, true, train::MixedPrecision::kNo, std::nullopt},
                      Variant{"lisa_bf16_frozen", TrainMethod::kLisa, true, train::MixedPrecision::kBf16, torch::kBFloat16},
                      Variant{"full_classic", TrainMethod::kFull, false, train::MixedPrecision::kNo, std::nullopt},
                      Variant{"full_fused", TrainMethod::kFull, true, train::MixedPrecision::kNo, std::nullopt},
                      Variant{"lora_classic", TrainMethod::kLora, false, train::MixedPrecision::kNo, std::nullopt},
                      Variant{"full_fused_fp16", TrainMethod::kFull, true, train::MixedPrecision::kFp16, std::nullopt}),
    [](const auto& info) { return std::string(info.param.name); });

// The fp16 GradScaler state travels in the checkpoint: started far too high, the scale backs
// off on overflowing steps, and a resumed run must continue from the backed-off value.
TEST(Trainer, Fp16LossScaleResumesWithTheRun) {
  TempDir tmp;
  const auto options = [&](const fs::path& out) {
    auto o = base_options(out, TrainMethod::kFull);
    o.mixed_precision = train::MixedPrecision::kFp16;
    o.use_ema = false;
    return o;
  };
  const double too_high = std::ldexp(1.0, 60);
  const auto start_too_high = [&](Trainer& trainer) { trainer.optimizer().set_loss_scale(too_high, 0); };
  std::vector<double> straight_losses;
  double straight_scale = 0;
  run_micro(options(tmp / "straight"), 3, &straight_losses, start_too_high,
            [&](Trainer& trainer) { straight_scale = trainer.optimizer().loss_scale(); });
  ASSERT_LT(straight_scale, too_high);  // it backed off
  run_micro(options(tmp / "crashed"), 3, nullptr, start_too_high, {}, /*crash_at=*/7);
  std::vector<double> resumed_losses;
  run_micro(
      resuming(options(tmp / "crashed")), 99, &resumed_losses,
      [&](Trainer& trainer) { EXPECT_EQ(trainer.resume(), 5); },
      [&](Trainer& trainer) { EXPECT_EQ(trainer.optimizer().loss_scale(), straight_scale); });
  ASSERT_EQ(resumed_losses.size(), 14u);
  for (std::size_t i = 0; i < resumed_losses.size(); ++i) {
    EXPECT_EQ(resumed_losses[i], straight_losses[10 + i]) << "micro-batch " << 10 + i;
  }
}

TEST(Trainer, LisaRedrawsEveryIntervalOptimizerStepsNotMicroBatches) {
  TempDir tmp;
  auto o = base_options(tmp.path(), TrainMethod::kLisa);
  o.gradient_accumulation_steps = 3;
  o.max_train_steps = 6;
  o.checkpointing_steps = 100;
  o.lisa.interval = 2;
  o.use_ema = false;
  torch::manual_seed(0);
  auto unet = micro_unet();
  std::vector<torch::Tensor> before;
  for (const auto& p : unet->parameters()) before.push_back(p.detach().clone());
  Trainer trainer(train::trained_unet(unet), o);
  std::vector<std::vector<std::string>> sets;
  trainer.train([&](const MicroBatch& mb) { return denoise(unet, mb, nullptr); },
                [&](int64_t) { sets.push_back(trainer.lisa()->active_names()); });
  EXPECT_EQ(trainer.micro_batches(), 18);
  // after_step sees the set that trained; the re-draws fall before steps 3 and 5.
  ASSERT_EQ(sets.size(), 6u);
  EXPECT_EQ(sets[0], sets[1]);
  EXPECT_NE(sets[1], sets[2]);
  EXPECT_EQ(sets[2], sets[3]);
  EXPECT_NE(sets[3], sets[4]);
  EXPECT_EQ(sets[4], sets[5]);
  std::vector<int64_t> recalls;
  std::ifstream in(tmp / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.value("event", "") == "recall") recalls.push_back(j.at("step").get<int64_t>());
    if (!j.contains("event")) {
      for (const char* key : {"loss", "lr", "grad_norm", "active_parameters", "step_time", "peak_memory", "pred_std"}) {
        EXPECT_TRUE(j.contains(key)) << key << " missing in " << line;
      }
    }
  }
  EXPECT_EQ(recalls, (std::vector<int64_t>{3, 5}));  // logged at the first step of the new set
  // A tensor that was never active keeps its bytes.
  const auto counts = trainer.lisa()->activation_counts();
  const auto& units = trainer.lisa()->sampler().units();
  int untouched = 0;
  auto params = unet->parameters();
  for (std::size_t u = 0; u < units.size(); ++u) {
    if (counts[u] > 0) continue;
    for (auto i : units[u].params) {
      EXPECT_TRUE(testing::same_tensor(params[i], before[i])) << units[u].name;
      ++untouched;
    }
  }
  EXPECT_GT(untouched, 0);
  trainer.save_final();
  const auto activations = testing::read_json(tmp / "lisa_activations.json");
  EXPECT_EQ(activations.at("units").size(), units.size());
  EXPECT_EQ(activations.at("sets_trained").get<int64_t>(), 3);  // drawn at steps 0, 2 and 4; none after 6
}

TEST(Trainer, AnEndOfEpochClosesTheWindowEarly) {
  TempDir tmp;
  auto o = base_options(tmp.path(), TrainMethod::kFull);
  o.gradient_accumulation_steps = 4;
  o.max_train_steps = 2;
  o.schedule.warmup_steps = 1;
  o.use_ema = false;
  auto unet = micro_unet();
  Trainer trainer(train::trained_unet(unet), o);
  std::vector<int> indices;
  trainer.train([&](const MicroBatch& mb) {
    indices.push_back(mb.index);
    auto r = denoise(unet, mb, nullptr);
    r.end_of_epoch = mb.count == 2;
    return r;
  });
  EXPECT_EQ(indices, (std::vector<int>{0, 1, 2, 0, 1, 2, 3}));
  EXPECT_EQ(trainer.global_step(), 2);
}

// The classic step is the diffusers scripts' one: all gradients, the global norm clipped
// as torch.nn.utils.clip_grad_norm_, then torch AdamW.
TEST(Trainer, ClassicFullStepEqualsGlobalClipAndTorchAdamW) {
  TempDir tmp;
  auto o = base_options(tmp.path(), TrainMethod::kFull);
  o.gradient_accumulation_steps = 1;
  o.max_train_steps = 3;
  o.use_ema = false;
  o.schedule.type = train::LrScheduleType::kConstant;
  o.max_grad_norm = 0.05;  // clips every step
  auto unet = micro_unet();
  auto reference = micro_unet();
  reference->train();
  std::vector<torch::Tensor> ref_params = reference->parameters();
  torch::optim::AdamW adamw(ref_params, torch::optim::AdamWOptions(1e-3).weight_decay(1e-2));
  Trainer trainer(train::trained_unet(unet), o);
  torch::manual_seed(1);
  trainer.train([&](const MicroBatch& mb) { return denoise(unet, mb, nullptr); });
  torch::manual_seed(1);
  for (int64_t step = 0; step < 3; ++step) {
    adamw.zero_grad();
    denoise(reference, MicroBatch{step, 0, step}, nullptr).loss.backward();
    const double norm = torch::nn::utils::clip_grad_norm_(ref_params, 0.05);
    EXPECT_GT(norm, 0.05);
    adamw.step();
  }
  const auto trained = unet->parameters();
  for (std::size_t i = 0; i < trained.size(); ++i) {
    EXPECT_TRUE(testing::close_tensor(trainer.trainable()[i].first, trained[i], ref_params[i], 1e-6, 1e-5));
  }
}

TEST(Trainer, TheBf16PrecisionSwitchKeepsFloat32OnlyForWhatTrains) {
  TempDir tmp;
  auto o = base_options(tmp.path(), TrainMethod::kLisa);
  o.mixed_precision = train::MixedPrecision::kBf16;
  o.frozen_dtype = torch::kBFloat16;
  o.max_train_steps = 4;
  o.use_ema = false;
  auto unet = micro_unet();
  Trainer trainer(train::trained_unet(unet), o);
  int64_t half_bytes = 0, float_bytes = 0;
  for (const auto& [name, p] : trainer.trainable()) {
    if (p.requires_grad() || name.find("norm") != std::string::npos) {
      EXPECT_EQ(p.scalar_type(), torch::kFloat32) << name;
      float_bytes += p.numel() * 4;
    } else {
      EXPECT_EQ(p.scalar_type(), torch::kBFloat16) << name;
      half_bytes += p.numel() * 2;
    }
  }
  EXPECT_GT(half_bytes, 0);
  trainer.train([&](const MicroBatch& mb) { return denoise(unet, mb, nullptr); });
  for (const auto& [name, p] : trainer.trainable()) {
    EXPECT_EQ(p.scalar_type(), p.requires_grad() || name.find("norm") != std::string::npos ? torch::kFloat32 : torch::kBFloat16)
        << name;
  }
  // Outputs hold float32 whatever the storage.
  trainer.save_final();
  io::SafetensorsReader reader(tmp / "unet/diffusion_pytorch_model.safetensors");
  for (const auto& e : reader.entries()) EXPECT_EQ(e.dtype, io::Dtype::F32) << e.name;
  auto reloaded = models::load_unet(tmp / "unet");
  EXPECT_EQ(reloaded->parameters().size(), unet->parameters().size());
}

TEST(Trainer, ANonFiniteLossStopsTheRun) {
  TempDir tmp;
  auto o = base_options(tmp.path(), TrainMethod::kLisa);
  auto unet = micro_unet();
  Trainer trainer(train::trained_unet(unet), o);
  EXPECT_THROW_WITH(trainer.train([&](const MicroBatch& mb) {
    auto r = denoise(unet, mb, nullptr);
    if (mb.count == 3) r.loss = r.loss * std::numeric_limits<double>::quiet_NaN();
    return r;
  }),
                    "step 1 micro-batch 1", "the loss is nan");
  EXPECT_EQ(trainer.global_step(), 1);
}

TEST(Trainer, LoraFinalOutputIsTheAdapterFile) {
  TempDir tmp;
  auto o = base_options(tmp.path(), TrainMethod::kLora);
  o.max_train_steps = 2;
  o.schedule.warmup_steps = 1;
  o.use_ema = false;
  o.fused_step = true;
  auto unet = micro_unet();
  Trainer trainer(train::trained_unet(unet), o);
  trainer.train([&](const MicroBatch& mb) { return denoise(unet, mb, nullptr); });
  trainer.save_final();
  io::SafetensorsReader reader(tmp / "pytorch_lora_weights.safetensors");
  EXPECT_EQ(reader.size(), trainer.trainable().size());
  EXPECT_FALSE(fs::exists(tmp / "unet"));
}

TEST(TrainerOptions, ReadsTheScriptsKeysAndRejectsBadValues) {
  const auto read = [](const config::Json& j) {
    config::FieldReader r(j, "run.json");
    return TrainerOptions::read(r);
  };
  const auto o = read({{"output_dir", "out"}, {"max_train_steps", 100}, {"method", "lora"}, {"rank", 8},
                       {"mixed_precision", "bf16"}, {"frozen_dtype", "bf16"}, {"learning_rate", 5e-6},
                       {"lr_scheduler", "linear"}, {"lr_warmup_steps", 10}, {"optimizer_step", "fused"}});
  EXPECT_EQ(o.method, TrainMethod::kLora);
  EXPECT_EQ(o.lora.rank, 8);
  EXPECT_EQ(o.frozen_dtype, torch::kBFloat16);
  EXPECT_TRUE(o.fused_step);
  EXPECT_EQ(o.schedule.base_lr, 5e-6);
  EXPECT_THROW_WITH(read({{"output_dir", "out"}}), "run.json", "max_train_steps", "required");
  EXPECT_THROW_WITH(read({{"output_dir", "out"}, {"max_train_steps", 10}, {"method", "dora"}}), "run.json",
                    "field 'method'", "dora");
  EXPECT_THROW_WITH(read({{"output_dir", "out"}, {"max_train_steps", 10}, {"frozen_dtype", "bf16"}}), "frozen_dtype",
                    "mixed_precision");
  EXPECT_THROW_WITH(read({{"output_dir", "out"}, {"max_train_steps", 10}, {"gradient_accumulation_steps", 0}}),
                    "gradient_accumulation_steps", ">= 1");
  EXPECT_THROW_WITH(read({{"output_dir", "out"}, {"max_train_steps", 10}, {"optimizer_step", "eager"}}), "optimizer_step");
}

TEST(TrainerOptions, ReportToLoggingDirAndTrackerName) {
  const auto read = [](config::Json j) {
    j["output_dir"] = "out";
    j["max_train_steps"] = 10;
    config::FieldReader r(j, "run.json");
    return TrainerOptions::read(r);
  };
  const auto defaults = read(config::Json::object());
  EXPECT_EQ(defaults.report_to, "tensorboard");  // the diffusers scripts' default
  EXPECT_EQ(defaults.logging_dir, "logs");
  EXPECT_EQ(defaults.tensorboard_dir(), fs::path("out/logs"));
  const auto o = read({{"report_to", "none"}, {"logging_dir", "tb"}, {"tracker_project_name", "text2image-fine-tune"}});
  EXPECT_EQ(o.report_to, "none");
  EXPECT_EQ(o.tensorboard_dir(), fs::path("out/tb/text2image-fine-tune"));
  EXPECT_EQ(o.to_json().at("report_to"), "none");
  EXPECT_EQ(o.to_json().at("logging_dir"), "tb");
  EXPECT_EQ(read({{"tracker_name", "diffusion-dpo-lora"}}).tensorboard_dir(), fs::path("out/logs/diffusion-dpo-lora"));
  EXPECT_EQ(read({{"logging_dir", "/var/tb"}}).tensorboard_dir(), fs::path("/var/tb"));  // as Path(out, "/var/tb")
  for (const char* value : {"tensorboard", "wandb", "comet_ml", "all", "none"}) {
    EXPECT_EQ(read({{"report_to", value}}).report_to, value);
  }
  EXPECT_THROW_WITH(read({{"report_to", "mlflow"}}), "run.json", "field 'report_to'", "'mlflow'",
                    "tensorboard, wandb, comet_ml, all, none");
  EXPECT_THROW_WITH(read({{"logging_dir", ""}}), "run.json", "field 'logging_dir'", "empty");
}

using ChangeOptions = std::function<void(TrainerOptions&)>;

// Trains 5 steps into `out` (which writes checkpoint-5), `change` applied to the options.
void train_five_steps(const fs::path& out, TrainMethod method, const ChangeOptions& change = {}) {
  auto o = base_options(out, method);
  o.max_train_steps = 5;
  o.use_ema = false;
  if (change) change(o);
  auto unet = micro_unet();
  Trainer trainer(train::trained_unet(unet), o);
  trainer.train([&](const MicroBatch& mb) { return denoise(unet, mb, nullptr); });
}

// Resumes `out`/checkpoint-5 into a new Trainer with `change` applied to the options.
void resume_checkpoint_5(const fs::path& out, TrainMethod method, const ChangeOptions& change = {}) {
  auto o = base_options(out, method);
  o.use_ema = false;
  o.resume_from_checkpoint = "checkpoint-5";
  if (change) change(o);
  auto unet = micro_unet();
  Trainer trainer(train::trained_unet(unet), o);
  trainer.resume();
}

// The values of `key` in the step lines (not the events) of a metrics.jsonl.
std::vector<double> metrics_values(const fs::path& metrics, const std::string& key) {
  std::vector<double> values;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("event") && j.contains(key) && j.at(key).is_number()) values.push_back(j.at(key).get<double>());
  }
  return values;
}

TEST(Trainer, ReportToTensorBoardMirrorsTheMetricsLines) {
  TempDir tmp;
  train_five_steps(tmp / "run", TrainMethod::kLisa);
  const auto files = testing::event_files(tmp / "run/logs");
  ASSERT_EQ(files.size(), 1u);
  for (const std::string key : {"loss", "lr", "grad_norm", "active_parameters", "pred_std"}) {
    const auto points = testing::tensorboard_scalars(tmp / "run/logs", key);
    const auto values = metrics_values(tmp / "run/metrics.jsonl", key);
    ASSERT_EQ(points.size(), 5u) << key;
    ASSERT_EQ(values.size(), 5u) << key;
    for (std::size_t i = 0; i < points.size(); ++i) {
      EXPECT_EQ(points[i].first, static_cast<std::int64_t>(i + 1)) << key;
      EXPECT_EQ(points[i].second, static_cast<float>(values[i])) << key << " at step " << i + 1;
    }
  }
  // Events as scalars of 1: LISA's first draw and checkpoint-5.
  EXPECT_EQ(testing::tensorboard_scalars(tmp / "run/logs", "events/checkpoint"),
            (std::vector<std::pair<std::int64_t, float>>{{5, 1.0f}}));
  EXPECT_FALSE(testing::tensorboard_scalars(tmp / "run/logs", "events/recall").empty());
}

TEST(Trainer, ReportToNetworkTrackersWarnOnceAndWriteTensorBoardNoneWritesNothing) {
  for (const std::string tracker : {"wandb", "comet_ml", "all"}) {
    TempDir tmp;
    testing::CapturedLog log;
    train_five_steps(tmp / "run", TrainMethod::kLisa, [&](TrainerOptions& o) {
      o.report_to = tracker;
      o.logging_dir = "tb";
    });
    const std::string text = log.text();
    const std::string warning = "report_to " + tracker + ":";
    const auto first = text.find(warning);
    ASSERT_NE(first, std::string::npos) << text;
    EXPECT_EQ(text.find(warning, first + 1), std::string::npos) << "warned more than once:\n" << text;
    EXPECT_NE(text.find("TensorBoard"), std::string::npos) << text;
    EXPECT_EQ(testing::tensorboard_scalars(tmp / "run/tb", "loss").size(), 5u) << tracker;
  }
  TempDir tmp;
  testing::CapturedLog log;
  train_five_steps(tmp / "run", TrainMethod::kLisa, [](TrainerOptions& o) { o.report_to = "none"; });
  EXPECT_FALSE(fs::exists(tmp / "run/logs"));
  EXPECT_EQ(log.text().find("report_to"), std::string::npos);
  EXPECT_EQ(metrics_values(tmp / "run/metrics.jsonl", "loss").size(), 5u);  // metrics.jsonl as always
}

TEST(Trainer, ResumingIntoAnotherMethodIsAnError) {
  TempDir tmp;
  train_five_steps(tmp.path(), TrainMethod::kFull);
  EXPECT_THROW_WITH(resume_checkpoint_5(tmp.path(), TrainMethod::kLisa), "checkpoint-5", "training_state.json",
                    "full run", "lisa");
}

// The end of a step sees the set that trained: EMA, after_step, metrics and checkpoints come
// before the LISA re-draw, which falls at the start of the next step and never after the last.
TEST(Trainer, EmaAndAfterStepSeeTheLisaSetThatTrained) {
  TempDir tmp;
  auto o = base_options(tmp.path(), TrainMethod::kLisa);
  o.gradient_accumulation_steps = 1;
  o.max_train_steps = 2;
  o.lisa.interval = 2;
  o.use_ema = true;
  o.ema.decay = 0.9999;  // diffusers' rule: decay 0 at step 1, 2/11 at step 2
  o.schedule.warmup_steps = 0;
  auto unet = micro_unet();
  Trainer trainer(train::trained_unet(unet), o);
  const auto first_set = trainer.lisa()->active_names();
  const auto drawn = trainer.lisa()->active_units().front();
  const auto index = trainer.lisa()->sampler().units()[drawn].params.front();
  const std::string name = trainer.trainable()[index].first;
  const torch::Tensor param = trainer.trainable()[index].second;
  std::vector<torch::Tensor> values;  // the drawn tensor after steps 1 and 2
  std::vector<std::vector<std::string>> sets;
  trainer.train([&](const MicroBatch& mb) { return denoise(unet, mb, nullptr); },
                [&](int64_t) {
                  values.push_back(param.detach().clone());
                  sets.push_back(trainer.lisa()->active_names());
                });
  ASSERT_EQ(values.size(), 2u);
  EXPECT_EQ(sets[0], first_set);
  EXPECT_EQ(sets[1], first_set) << "after_step of the last step saw a new draw";
  EXPECT_TRUE(param.requires_grad());
  // shadow_1 = theta_1 (decay 0), shadow_2 = shadow_1 - (1 - 2/11) (shadow_1 - theta_2)
  const auto expected = values[0] - (1.0 - 2.0 / 11.0) * (values[0] - values[1]);
  const auto& shadow = trainer.ema()->shadow(name);
  EXPECT_TRUE(testing::close_tensor(name, shadow, expected, 1e-7, 1e-6));
  EXPECT_FALSE(torch::allclose(shadow, values[1], 0, 1e-7)) << name << ": the EMA is the live weight";
  // No re-draw after the last step: no recall event, one set trained.
  std::ifstream in(tmp / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) EXPECT_EQ(line.find("\"recall\""), std::string::npos) << line;
  trainer.save_final();
  const auto activations = testing::read_json(tmp / "lisa_activations.json");
  EXPECT_EQ(activations.at("sets_trained").get<int64_t>(), 1);
  int64_t counted = 0;
  for (const auto& u : activations.at("units")) {
    EXPECT_LE(u.at("activations").get<int64_t>(), 1) << u.dump();
    counted += u.at("activations").get<int64_t>();
  }
  EXPECT_EQ(counted, static_cast<int64_t>(trainer.lisa()->active_units().size()) + 2);  // the drawn + first and last
}

// With the precision switch the set that trained in the last step stays float32 up to
// save_final: its trained values are saved as they are, not rounded to bf16.
TEST(Trainer, Bf16FrozenFinalWeightsOfTheLastSetAreNotRounded) {
  TempDir tmp;
  auto o = base_options(tmp.path(), TrainMethod::kLisa);
  o.mixed_precision = train::MixedPrecision::kBf16;
  o.frozen_dtype = torch::kBFloat16;
  o.gradient_accumulation_steps = 1;
  o.max_train_steps = 4;
  o.lisa.interval = 2;
  o.use_ema = false;
  auto unet = micro_unet();
  Trainer trainer(train::trained_unet(unet), o);
  trainer.train([&](const MicroBatch& mb) { return denoise(unet, mb, nullptr); });
  trainer.save_final();
  io::SafetensorsReader reader(tmp / "unet/diffusion_pytorch_model.safetensors");
  int64_t checked = 0;
  for (const auto u : trainer.lisa()->active_units()) {
    for (const auto i : trainer.lisa()->sampler().units()[u].params) {
      const auto& [name, p] = trainer.trainable()[i];
      ASSERT_EQ(p.scalar_type(), torch::kFloat32) << name;
      const auto saved = reader.tensor(name);
      EXPECT_TRUE(testing::same_tensor(saved, p.detach())) << name;
      EXPECT_FALSE(torch::equal(saved, saved.to(torch::kBFloat16).to(torch::kFloat32))) << name << " was rounded to bf16";
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

// A checkpoint's mixed precision must be the run's: an fp16 loss scale restored into a run
// that does not scale would multiply every later loss by 2^16, and a bf16 checkpoint has no
// scale for an fp16 run.
TEST(Trainer, ResumingIntoAnotherMixedPrecisionIsRefused) {
  const auto with = [](train::MixedPrecision precision) {
    return [precision](TrainerOptions& o) {
      o.fused_step = true;
      o.mixed_precision = precision;
    };
  };
  const auto run = [&](const fs::path& out, train::MixedPrecision precision) {
    train_five_steps(out, TrainMethod::kFull, with(precision));
  };
  const auto resume = [&](const fs::path& out, train::MixedPrecision precision) {
    resume_checkpoint_5(out, TrainMethod::kFull, with(precision));
  };
  TempDir tmp;
  run(tmp / "fp16", train::MixedPrecision::kFp16);
  EXPECT_THROW_WITH(resume(tmp / "fp16", train::MixedPrecision::kBf16), "training_state.json",
                    "mixed_precision fp16", "this run has bf16");
  EXPECT_THROW_WITH(resume(tmp / "fp16", train::MixedPrecision::kNo), "mixed_precision fp16", "this run has no");
  run(tmp / "bf16", train::MixedPrecision::kBf16);
  EXPECT_THROW_WITH(resume(tmp / "bf16", train::MixedPrecision::kFp16), "mixed_precision bf16", "this run has fp16");
  EXPECT_NO_THROW(resume(tmp / "fp16", train::MixedPrecision::kFp16));
}

// accelerate skips the lr scheduler's step when GradScaler skipped the optimizer step. An
// overflow at step 0 of a classic fp16 run: the next update still uses lr(0), and a resume
// keeps the schedule one step behind the global step.
TEST(Trainer, ClassicFp16OverflowAtStep0LeavesTheScheduleAtLr0) {
  const auto options = [](const fs::path& out) {
    auto o = base_options(out, TrainMethod::kFull);
    o.mixed_precision = train::MixedPrecision::kFp16;
    o.schedule.type = train::LrScheduleType::kLinear;
    o.schedule.warmup_steps = 2;  // lr(0) = 0, lr(1) = lr / 2
    o.gradient_accumulation_steps = 1;
    o.max_train_steps = 4;
    o.checkpointing_steps = 2;
    o.use_ema = false;
    return o;
  };
  TempDir tmp;
  auto unet = micro_unet();
  std::vector<torch::Tensor> initial;
  for (const auto& p : unet->parameters()) initial.push_back(p.detach().clone());
  Trainer trainer(train::trained_unet(unet), options(tmp.path()));
  trainer.train(
      [&](const MicroBatch& mb) {
        auto r = denoise(unet, mb, nullptr);
        if (mb.step == 0) r.loss = r.loss * std::numeric_limits<double>::infinity();
        return r;
      },
      {}, 2);
  EXPECT_EQ(trainer.global_step(), 2);
  EXPECT_EQ(trainer.optimizer().schedule_step(), 1);
  // Step 1 updated with lr(0) = 0: AdamW with lr 0 leaves every weight as it was.
  const auto params = unet->parameters();
  for (std::size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(testing::same_tensor(params[i], initial[i])) << i;
  const auto state = testing::read_json(tmp / "checkpoint-2/training_state.json");
  EXPECT_EQ(state.at("schedule_step").get<int64_t>(), 1);
  std::ifstream in(tmp / "metrics.jsonl");
  std::vector<double> lrs;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("event")) lrs.push_back(j.at("lr").get<double>());
  }
  const train::LrSchedule& s = trainer.options().schedule;
  ASSERT_EQ(lrs.size(), 2u);
  EXPECT_EQ(lrs[0], 0.0);  // the lr of the next update: still lr(0)
  EXPECT_EQ(lrs[1], s.base_lr / 2);
  // A resume continues one schedule step behind.
  auto o = options(tmp.path());
  o.resume_from_checkpoint = "latest";
  auto unet2 = micro_unet();
  Trainer resumed(train::trained_unet(unet2), o);
  EXPECT_EQ(resumed.resume(), 2);
  EXPECT_EQ(resumed.optimizer().schedule_step(), 1);
  EXPECT_EQ(resumed.current_lr(), s.base_lr / 2);
}

// Parameters replaced after the Trainer was built (InstructPix2Pix's conv_in) would keep no
// hook and be saved as the old tensor: train() and every save refuse such a model.
TEST(Trainer, AModelChangedAfterTheTrainerWasBuiltIsRefused) {
  TempDir tmp;
  auto o = base_options(tmp.path(), TrainMethod::kLisa);
  o.use_ema = false;
  auto unet = micro_unet();
  Trainer trainer(train::trained_unet(unet), o);
  // InstructPix2Pix's surgery: a conv_in with 8 input channels replaces the old one.
  const auto out_channels = unet->conv_in->weight.size(0);
  unet->conv_in = unet->replace_module("conv_in", torch::nn::Conv2d(torch::nn::Conv2dOptions(8, out_channels, 3).padding(1)));
  const auto step = [&](const MicroBatch& mb) { return denoise(unet, mb, nullptr); };
  EXPECT_THROW_WITH(trainer.train(step), "conv_in.weight", "is a new tensor of shape [", "build the Trainer after");
  EXPECT_THROW_WITH(trainer.save_checkpoint(), "save_checkpoint", "conv_in.weight");
  EXPECT_THROW_WITH(trainer.save_final(), "save_final", "conv_in.weight");
}

// The config written with a checkpoint is the model's config at the time of the save.
TEST(Trainer, CheckpointsWriteTheModelsCurrentConfig) {
  TempDir tmp;
  auto o = base_options(tmp.path(), TrainMethod::kFull);
  o.use_ema = false;
  o.max_train_steps = 1;
  o.checkpointing_steps = 1;
  o.schedule.warmup_steps = 0;
  auto unet = micro_unet();
  Trainer trainer(train::trained_unet(unet), o);
  unet->config.sample_size = config::ScalarOrList<int>(24);
  trainer.train([&](const MicroBatch& mb) { return denoise(unet, mb, nullptr); });
  EXPECT_EQ(testing::read_json(tmp / "checkpoint-1/unet/config.json").at("sample_size").get<int>(), 24);
}

// A second model in the forward pass whose weights require grad (a teacher or reference UNet
// loaded for training) would collect gradients nobody frees: refused before the backward.
// Loaded frozen, it takes part without a gradient.
TEST(Trainer, ASecondModelThatRequiresGradIsRefusedAFrozenOneWorks) {
  TempDir tmp;
  auto o = base_options(tmp.path(), TrainMethod::kLisa);
  o.use_ema = false;
  o.max_train_steps = 2;
  o.schedule.warmup_steps = 0;
  auto unet = micro_unet();
  const auto step_with = [&](models::UNet2DConditionModel teacher) {
    return [&, teacher](const MicroBatch& mb) mutable {
      auto r = denoise(unet, mb, nullptr);
      auto gen = at::make_generator<at::CPUGeneratorImpl>(7 + mb.count);
      auto x = at::randn({1, 4, 8, 8}, gen);
      auto context = at::randn({1, 7, static_cast<int64_t>(unet->config.cross_attention_dim.at(0))}, gen);
      auto t = torch::full({1}, 10, torch::kLong);
      r.loss = r.loss + 0.1 * torch::mse_loss(unet->forward(x, t, context), teacher->forward(x, t, context));
      return r;
    };
  };
  {
    auto teacher = micro_unet();  // requires grad
    Trainer trainer(train::trained_unet(unet), o);
    EXPECT_THROW_WITH(trainer.train(step_with(teacher)), "step 0 micro-batch 0", "require grad but are not trained",
                      "LoadOptions::frozen");
    for (const auto& p : teacher->parameters()) EXPECT_FALSE(p.grad().defined());
  }
  models::LoadOptions frozen;
  frozen.frozen = true;
  auto teacher = models::load_unet(fixtures_dir() / "pipelines/micro-sd/unet", frozen);
  for (const auto& p : teacher->parameters()) EXPECT_FALSE(p.requires_grad());
  auto o2 = o;
  o2.output_dir = tmp / "frozen";
  Trainer trainer(train::trained_unet(unet), o2);
  trainer.train(step_with(teacher));
  EXPECT_EQ(trainer.global_step(), 2);
  for (const auto& p : teacher->parameters()) EXPECT_FALSE(p.grad().defined());
}

struct Mismatch {
  const char* name;
  ChangeOptions change;
  std::vector<std::string> message;
};

void PrintTo(const Mismatch& m, std::ostream* os) { *os << m.name; }

class ResumeMismatch : public ::testing::TestWithParam<Mismatch> {};

// A checkpoint resumes only into a run with the settings that decide its sequence of sets,
// micro-batches and loss scaling; the error names the setting and both values.
TEST_P(ResumeMismatch, IsRefusedNamingTheSetting) {
  TempDir tmp;
  train_five_steps(tmp.path(), TrainMethod::kLisa);
  const auto& m = GetParam().message;
  try {
    resume_checkpoint_5(tmp.path(), TrainMethod::kLisa, GetParam().change);
    ADD_FAILURE() << "resumed despite " << GetParam().name;
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("checkpoint-5"), std::string::npos) << what;
    for (const auto& s : m) EXPECT_NE(what.find(s), std::string::npos) << "no \"" << s << "\" in: " << what;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Settings, ResumeMismatch,
    ::testing::Values(
        Mismatch{"interval", [](TrainerOptions& o) { o.lisa.interval = 4; }, {"lisa_interval 3", "this run has 4"}},
        Mismatch{"sampling", [](TrainerOptions& o) { o.lisa.sampling = train::LisaSampling::kWeighted; },
                 {"lisa_sampling uniform", "this run has weighted"}},
        Mismatch{"always_on", [](TrainerOptions& o) { o.lisa.always_on = {"conv_in", "conv_out"}; },
                 {"lisa_always_on", "first and last tensor", "conv_out"}},
        Mismatch{"keep_state", [](TrainerOptions& o) { o.lisa.keep_state = true; },
                 {"lisa_keep_state false", "this run has true"}},
        Mismatch{"accumulation", [](TrainerOptions& o) { o.gradient_accumulation_steps = 3; },
                 {"gradient_accumulation_steps 2", "this run has 3"}},
        Mismatch{"precision",
                 [](TrainerOptions& o) {
                   o.mixed_precision = train::MixedPrecision::kBf16;
                 },
                 {"mixed_precision no", "this run has bf16"}}),
    [](const auto& info) { return std::string(info.param.name); });

// load_checkpoint into a Trainer that already trained past the checkpoint (train 7 steps,
// load checkpoint-5, continue) equals a fresh resume from checkpoint-5.
// Interval 3: a tensor of the set of steps 4-6 last stepped in step 6, and steps 6 again
// after the load. Interval 5: the checkpoint falls on a re-draw boundary: it holds the set
// that trained up to step 5, and the re-draw comes after the load, at the start of step 6.
class LoadIntoATrainerThatTrained : public ::testing::TestWithParam<int> {};

TEST_P(LoadIntoATrainerThatTrained, EqualsAFreshResume) {
  TempDir tmp;
  const auto options = [](const fs::path& out) {
    auto o = base_options(out, TrainMethod::kLisa);
    o.lisa.interval = GetParam();
    return o;
  };
  std::vector<torch::Tensor> straight;
  {
    torch::manual_seed(3);
    auto unet = micro_unet();
    Trainer trainer(train::trained_unet(unet), options(tmp / "straight"));
    trainer.train([&](const MicroBatch& mb) { return denoise(unet, mb, nullptr); });
    straight = weights(trainer);
  }
  torch::manual_seed(3);
  auto unet = micro_unet();
  Trainer trainer(train::trained_unet(unet), options(tmp / "again"));
  trainer.train([&](const MicroBatch& mb) { return denoise(unet, mb, nullptr); }, {}, 7);
  ASSERT_EQ(trainer.global_step(), 7);
  trainer.load_checkpoint(tmp / "again/checkpoint-5");
  EXPECT_EQ(trainer.global_step(), 5);
  trainer.train([&](const MicroBatch& mb) { return denoise(unet, mb, nullptr); });
  const auto w = weights(trainer);
  ASSERT_EQ(w.size(), straight.size());
  for (std::size_t i = 0; i < w.size(); ++i) {
    EXPECT_TRUE(testing::same_tensor(w[i], straight[i])) << trainer.trainable()[i].first;
  }
}

INSTANTIATE_TEST_SUITE_P(LisaInterval, LoadIntoATrainerThatTrained, ::testing::Values(3, 5));

}  // namespace
}  // namespace lisadiff
