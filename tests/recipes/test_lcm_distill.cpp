// The lcm_distill recipe: the loss, the step's pieces (the target at t_end = 0 is x_prev, the
// student's cond_proj, the target copy), and the executable run as the LISA-diffusion README
// runs it (local paths, pipe: shards), with its outputs, validation, LoRA, resume after SIGKILL
// and its refusals.
#include <gtest/gtest.h>

#include <cmath>

#include "io/safetensors.h"
#include "models/state.h"
#include "recipes/lcm_distill.h"
#include "test_util.h"
#include "tools/make_dataset.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::fixtures_dir;
using testing::TempDir;

fs::path micro_sd() { return fixtures_dir() / "pipelines/micro-sd"; }
std::string app() { return (fs::path(testing::cli_path()).parent_path() / "lcm_distill").string(); }

fs::path make_shards(const fs::path& dir, int n = 8) {
  tools::MakeDatasetOptions m;
  m.kind = "t2i";
  m.format = "wds";
  m.n = n;
  m.size = 40;
  m.shard_size = 4;
  m.out = dir;
  tools::make_dataset(m);
  return dir;
}

TEST(LcmDistillLoss, HuberAndL2) {
  const auto a = torch::tensor({0.0f, 0.0f}), b = torch::tensor({1e-3f, 0.1f});
  // recipes.md 6.3: pseudo-Huber with c = 1e-3 is 4.1421356e-4 at |d| = 1e-3 and 0.0990050 at 0.1.
  EXPECT_NEAR(recipes::lcm_loss(a, b, recipes::LcmLossType::kHuber, 1e-3).item<double>(),
              (4.1421356e-4 + 0.09900500) / 2, 1e-8);
  EXPECT_NEAR(recipes::lcm_loss(a, b, recipes::LcmLossType::kL2, 1e-3).item<double>(), (1e-6 + 1e-2) / 2, 1e-9);
  EXPECT_EQ(recipes::lcm_loss_type("huber"), recipes::LcmLossType::kHuber);
  EXPECT_THROW(recipes::lcm_loss_type("l1"), recipes::UsageError);
}

// The student has the teacher's weights plus a cond_proj of the requested width (keeping its
// initialisation), the target is an exact frozen copy.
TEST(LcmDistillModels, StudentAndTarget) {
  const auto teacher = models::load_unet(micro_sd() / "unet");
  torch::manual_seed(1);
  const auto student = recipes::load_lcm_student(micro_sd() / "unet", 12, torch::kCPU);
  ASSERT_EQ(student->config.time_cond_proj_dim.value_or(0), 12);
  const auto params = student->named_parameters();
  EXPECT_EQ(params.size(), teacher->named_parameters().size() + 1);
  const auto& cond = params["time_embedding.cond_proj.weight"];
  EXPECT_EQ(cond.size(1), 12);
  EXPECT_LE(cond.abs().max().item<double>(), 1 / std::sqrt(12.0));  // PyTorch's Linear init bound
  EXPECT_GT(cond.abs().max().item<double>(), 0.5 / std::sqrt(12.0));
  for (const auto& [name, t] : teacher->named_parameters().pairs()) {
    EXPECT_TRUE(testing::same_tensor(params[name], t)) << name;
  }
  const auto target = recipes::copy_unet(student);
  for (const auto& [name, t] : target->named_parameters().pairs()) {
    EXPECT_TRUE(testing::same_tensor(params[name], t)) << name;
    EXPECT_FALSE(t.requires_grad()) << name;
  }
  EXPECT_FALSE(target->is_training());
}

// The shipped configs are valid for the executable; the command line overrides them.
TEST(LcmDistillRecipe, ShippedConfigsParseAndTheTableHasTheScriptsDefaults) {
  const auto table = recipes::lcm_distill_flags();
  for (const char* method : {"lisa", "full", "lora"}) {
    const auto file = testing::tests_dir().parent_path() / "configs/lcm_distill" / (std::string(method) + ".json");
    const auto parsed = table.parse({"--config", file.string(), "--pretrained_teacher_model", "base",
                                     "--train_shards_path_or_url", "data", "--max_train_steps", "7"});
    EXPECT_EQ(parsed.values.at("method"), method) << file;
    EXPECT_EQ(parsed.values.at("max_train_steps"), 7) << file;
  }
  const auto d = table.defaults_json();
  EXPECT_EQ(d.at("method"), "lisa");
  EXPECT_EQ(d.at("output_dir"), "lcm-xl-distilled");
  EXPECT_EQ(d.at("loss_type"), "l2");
  EXPECT_EQ(d.at("ema_decay"), 0.95);
  EXPECT_EQ(d.at("w_min"), 5.0);
  EXPECT_EQ(d.at("w_max"), 15.0);
  EXPECT_EQ(d.at("num_ddim_timesteps"), 50);
  EXPECT_EQ(d.at("unet_time_cond_proj_dim"), 256);
  EXPECT_EQ(d.at("vae_encode_batch_size"), 32);
  EXPECT_EQ(d.at("learning_rate"), 1e-4);
  EXPECT_EQ(d.at("train_batch_size"), 16);
  EXPECT_EQ(d.at("lora_rank"), 64);
  EXPECT_EQ(d.at("lora_alpha"), 64.0);
  EXPECT_EQ(d.at("lora_target_modules"), config::Json(recipes::lcm_lora_target_modules()));
  EXPECT_EQ(d.at("teacher_autocast"), "auto");
}

// The LISA-diffusion README's LCM command, with the teacher and the shards as local paths (a
// pipe: command, as the README streams them) and the sizes cut down for a test. It writes the
// online student and the target as diffusers UNet folders, and checkpoints holding both.
TEST(LcmDistillApp, TheReadmeCommandRunsAndWritesUnetAndTarget) {
  TempDir tmp;
  const auto data = make_shards(tmp / "data");
  const auto out = tmp / "lcm_distill_sd_lisa";
  const std::string command =
      app() + " --pretrained_teacher_model=" + micro_sd().string() + " --output_dir=" + out.string() +
      " --mixed_precision=no --resolution=512"
      " --learning_rate=1e-5 --loss_type=\"huber\" --ema_decay=0.95 --adam_weight_decay=0.0"
      " --max_train_steps=1000 --max_train_samples=4000000 --dataloader_num_workers=8"
      " --train_shards_path_or_url=\"pipe:cat " + data.string() + "/{00000..00001}.tar\""
      " --validation_steps=200 --checkpointing_steps=200 --checkpoints_total_limit=10 --train_batch_size=8"
      " --gradient_checkpointing --enable_xformers_memory_efficient_attention --gradient_accumulation_steps=2"
      " --use_8bit_adam --resume_from_checkpoint=latest --report_to=wandb --seed=453645634"
      // cut down for a test:
      " --resolution=32 --train_batch_size=2 --max_train_steps=2 --checkpointing_steps=1 --checkpoints_total_limit=1";
  const auto [rc, log] = testing::run_command(command + " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("enable_xformers_memory_efficient_attention"), std::string::npos) << log;  // the note
  for (const char* dir : {"unet", "unet_target", "checkpoint-2/unet", "checkpoint-2/unet_target"}) {
    const auto config = nlohmann::json::parse(testing::read_file(out / dir / "config.json"));
    EXPECT_EQ(config.at("time_cond_proj_dim"), 256) << dir;
    EXPECT_TRUE(fs::exists(out / dir / "diffusion_pytorch_model.safetensors")) << dir;
  }
  EXPECT_FALSE(fs::exists(out / "checkpoint-1"));  // rotated away (limit 1)
  // The target moved towards the student by EMA: between the teacher's and the student's values.
  const io::SafetensorsReader student(out / "unet/diffusion_pytorch_model.safetensors");
  const io::SafetensorsReader target(out / "unet_target/diffusion_pytorch_model.safetensors");
  const io::SafetensorsReader teacher(micro_sd() / "unet/diffusion_pytorch_model.safetensors");
  const auto name = std::string("conv_in.weight");
  EXPECT_FALSE(testing::same_tensor(target.tensor(name), teacher.tensor(name)));
  EXPECT_FALSE(testing::same_tensor(target.tensor(name), student.tensor(name)));
  const auto lines = testing::read_jsonl(out / "metrics.jsonl");
  ASSERT_FALSE(lines.empty());
  EXPECT_TRUE(lines.front().contains("loss"));
  EXPECT_EQ(lines.front().at("lr"), 1e-5);
}

// Validation images of the target and the online student (LCM scheduler, 4 steps), and
// --method lora as the LCM-LoRA script: adapters on its targets, written to unet_lora/.
TEST(LcmDistillApp, ValidationAndLora) {
  TempDir tmp;
  const auto data = make_shards(tmp / "data");
  testing::write_file(tmp / "prompts.txt", "a red circle, on blue\n\na green square\n");
  const std::string base = app() + " --pretrained_teacher_model " + micro_sd().string() +
                           " --train_shards_path_or_url " + (data / "00000.tar").string() +
                           " --resolution 32 --train_batch_size 2 --max_train_steps 1 --seed 0 --validation_steps 1"
                           " --validation_prompts_file " + (tmp / "prompts.txt").string();
  {
    const auto out = tmp / "lisa";
    const auto [rc, log] = testing::run_command(base + " --output_dir " + out.string() + " 2>&1");
    ASSERT_EQ(rc, 0) << log;
    EXPECT_TRUE(fs::exists(out / "validation/step-1-target.png")) << log;
    EXPECT_TRUE(fs::exists(out / "validation/step-1-online.png")) << log;
    size_t events = 0;
    for (const auto& line : testing::read_jsonl(out / "metrics.jsonl")) events += line.value("event", "") == "validation";
    EXPECT_EQ(events, 2u);
  }
  {
    const auto out = tmp / "lora";
    const auto [rc, log] = testing::run_command(base + " --method lora --lora_rank 2 --output_dir " + out.string() + " 2>&1");
    ASSERT_EQ(rc, 0) << log;
    EXPECT_TRUE(fs::exists(out / "validation/step-1-online.png")) << log;
    EXPECT_FALSE(fs::exists(out / "validation/step-1-target.png")) << log;
    const io::SafetensorsReader lora(out / "unet_lora/pytorch_lora_weights.safetensors");
    EXPECT_TRUE(lora.contains("unet.down_blocks.0.resnets.0.conv1.lora_A.weight"));
    EXPECT_TRUE(lora.contains("unet.down_blocks.0.downsamplers.0.conv.lora_B.weight"));
    EXPECT_TRUE(lora.contains("unet.down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.lora_A.weight"));
    EXPECT_TRUE(lora.contains("unet.mid_block.resnets.0.time_emb_proj.lora_A.weight"));
    EXPECT_EQ(lora.tensor("unet.down_blocks.0.resnets.0.conv1.lora_A.weight").size(0), 2);
    EXPECT_FALSE(fs::exists(out / "unet_target"));
    // lisadiff generate applies it (convolution adapters included) with the LCM scheduler.
    const auto [grc, glog] = testing::run_command(
        testing::cli_path() + " generate " + micro_sd().string() + " --lora " +
        (out / "unet_lora/pytorch_lora_weights.safetensors").string() +
        " --scheduler LCMScheduler --steps 4 --guidance-scale 1 --prompt 'a red circle' --out " +
        (tmp / "generated.png").string() + " 2>&1");
    EXPECT_EQ(grc, 0) << glog;
    EXPECT_TRUE(fs::exists(tmp / "generated.png")) << glog;
  }
}

// A run killed with SIGKILL after a checkpoint and resumed with --resume_from_checkpoint latest
// ends with the straight run's student, target and optimizer state, bit for bit.
TEST(LcmDistillApp, AKilledRunResumesToTheStraightRunsResult) {
  TempDir tmp;
  const auto data = make_shards(tmp / "data", 12);
  const auto command = [&](const fs::path& out) {
    return app() + " --pretrained_teacher_model " + micro_sd().string() + " --train_shards_path_or_url '" +
           (data / "{00000..00002}.tar").string() + "' --resolution 32 --train_batch_size 2"
           " --gradient_accumulation_steps 2 --max_train_steps 10 --checkpointing_steps 2 --seed 3"
           " --learning_rate 1e-3 --lisa_interval 3 --lr_scheduler cosine --lr_warmup_steps 2 --loss_type huber"
           " --output_dir " + out.string();
  };
  const auto [rc, log] = testing::run_command(command(tmp / "straight") + " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  const auto killed = tmp / "killed";
  const auto [krc, klog] = testing::run_command(
      "(" + command(killed) + " > " + (tmp / "killed.log").string() + " 2>&1 & pid=$!; while [ ! -d " +
      (killed / "checkpoint-4").string() + " ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done; kill -9 $pid; " +
      "wait $pid; echo \"exit $?\")");
  EXPECT_NE(klog.find("exit 137"), std::string::npos) << klog << testing::read_file(tmp / "killed.log");
  const auto [rrc, rlog] = testing::run_command(command(killed) + " --resume_from_checkpoint latest 2>&1");
  ASSERT_EQ(rrc, 0) << rlog;
  for (const char* file : {"unet/diffusion_pytorch_model.safetensors", "unet_target/diffusion_pytorch_model.safetensors",
                           "checkpoint-10/optimizer.safetensors",
                           "checkpoint-10/unet_target/diffusion_pytorch_model.safetensors"}) {
    EXPECT_TRUE(testing::read_file(killed / file) == testing::read_file(tmp / "straight" / file))
        << file << " differs from the straight run's";
  }
  const auto last_loss = [](const fs::path& file) {
    auto lines = testing::read_jsonl(file);
    while (lines.back().contains("event")) lines.pop_back();
    return lines.back().at("loss");
  };
  EXPECT_EQ(last_loss(killed / "metrics.jsonl"), last_loss(tmp / "straight" / "metrics.jsonl"));
}

// bf16 mixed precision on a CPU: the teacher stored in the weight dtype (--cast_teacher_unet)
// or in float32 under the script's autocast or without it, LISA's and LoRA's frozen tensors
// in bf16; the trained weights stay float32 and the losses finite.
TEST(LcmDistillApp, MixedPrecisionRuns) {
  TempDir tmp;
  const auto data = make_shards(tmp / "data", 4);
  int n = 0;
  for (const std::string flags : {"--cast_teacher_unet --frozen_dtype bf16", "--method full --teacher_autocast no",
                                  "--method lora --lora_rank 2 --frozen_dtype bf16"}) {
    const auto out = tmp / std::to_string(n++);
    const auto [rc, log] = testing::run_command(
        app() + " --pretrained_teacher_model " + micro_sd().string() + " --train_shards_path_or_url " +
        (data / "00000.tar").string() + " --resolution 32 --train_batch_size 2 --max_train_steps 2 --seed 0"
        " --mixed_precision bf16 " + flags + " --output_dir " + out.string() + " 2>&1");
    ASSERT_EQ(rc, 0) << flags << "\n" << log;
    for (const auto& line : testing::read_jsonl(out / "metrics.jsonl")) {
      if (line.contains("loss")) EXPECT_TRUE(std::isfinite(line.at("loss").get<double>())) << flags;
    }
    if (flags.find("lora") == std::string::npos) {
      const io::SafetensorsReader unet(out / "unet/diffusion_pytorch_model.safetensors");
      EXPECT_EQ(unet.tensor("conv_in.weight").scalar_type(), torch::kFloat32) << flags;
    }
  }
}

// The config file holds the flags' keys; the command line overrides it.
TEST(LcmDistillApp, ConfigAndCommandLine) {
  TempDir tmp;
  const auto data = make_shards(tmp / "data", 4);
  testing::write_file(tmp / "run.json", R"({"_comment": "test", "learning_rate": 0.001, "loss_type": "huber",
    "resolution": 32, "train_batch_size": 2, "max_train_steps": 1, "method": "full"})");
  const auto out = tmp / "out";
  const auto [rc, log] = testing::run_command(app() + " --config " + (tmp / "run.json").string() +
                                              " --pretrained_teacher_model " + micro_sd().string() +
                                              " --train_shards_path_or_url " + (data / "00000.tar").string() +
                                              " --learning_rate 0.002 --output_dir " + out.string() + " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  EXPECT_EQ(testing::read_jsonl(out / "metrics.jsonl").front().at("lr"), 0.002);
  EXPECT_NE(log.find("full of unet"), std::string::npos) << log;
}

// Bad input: one line naming the flag or the file, exit 2 (usage) or 1 (input).
TEST(LcmDistillApp, BadInputIsOneLineAndExitCode) {
  TempDir tmp;
  const auto data = make_shards(tmp / "data", 4);
  const std::string shards = " --train_shards_path_or_url " + (data / "00000.tar").string();
  const auto expect = [&](const std::string& teacher, const std::string& flags, int code, const std::string& text) {
    const auto [rc, log] = testing::run_command(app() + " --pretrained_teacher_model " + teacher + " --output_dir " +
                                                (tmp / "out").string() + " --max_train_steps 1 --resolution 32"
                                                " --train_batch_size 2 " + flags + " 2>&1");
    EXPECT_EQ(rc, code) << flags << "\n" << log;
    EXPECT_NE(log.find(text), std::string::npos) << flags << "\n" << log;
  };
  const auto teacher = micro_sd().string();
  expect(teacher, "", 2, "--train_shards_path_or_url is required");
  expect(teacher, shards + " --w_min 9 --w_max 3", 2, "--w_min 9 is above --w_max 3");
  expect(teacher, shards + " --huber_c 0", 2, "--huber_c must be positive");
  expect(teacher, shards + " --resolution 36", 2, "--resolution must be a positive multiple of 8");
  expect(teacher, shards + " --loss_type l1", 2, "--loss_type");
  expect(teacher, shards + " --wmin 3", 2, "did you mean --w_min?");
  expect(teacher, shards + " --ema_decay 1.5", 2, "--ema_decay must be in [0, 1]");
  expect(teacher, shards + " --validation_prompts_file /no/such/file", 2, "--validation_prompts_file: cannot read");
  expect(teacher, shards + " --push_to_hub", 2, "--push_to_hub");
  expect(teacher, shards + " --lora_target_modules norm1 --method lora", 1, "'norm1' matches no layer");
  expect((tmp / "missing").string(), shards, 2, "--pretrained_teacher_model");
  {
    const auto [rc, log] = testing::run_command(app() + " --pretrained_teacher_model " + teacher + shards +
                                                " --output_dir " + (tmp / "o").string() + " --resolution 32 2>&1");
    EXPECT_EQ(rc, 2) << log;
    EXPECT_NE(log.find("--max_train_steps or --max_train_samples is required"), std::string::npos) << log;
  }
  // A teacher folder without a scheduler, or whose UNet weights are cut short.
  const auto broken = tmp / "teacher";
  fs::copy(micro_sd(), broken, fs::copy_options::recursive);
  fs::remove_all(broken / "scheduler");
  expect(broken.string(), shards, 1, "scheduler");
  fs::copy(micro_sd() / "scheduler", broken / "scheduler", fs::copy_options::recursive);
  const auto weights = broken / "unet/diffusion_pytorch_model.safetensors";
  const auto bytes = testing::read_file(weights);
  testing::write_file(weights, bytes.substr(0, bytes.size() / 2));
  expect(broken.string(), shards, 1, "diffusion_pytorch_model.safetensors");
  // Shards that hold no usable sample.
  testing::write_file(tmp / "junk.tar", std::string(2048, 'x'));
  expect(teacher, " --train_shards_path_or_url " + (tmp / "junk.tar").string(), 1, "junk.tar");
  {
    const auto [rc, log] = testing::run_command(app() + " --help");
    EXPECT_EQ(rc, 0);
    EXPECT_NE(log.find("--w_min"), std::string::npos);
    EXPECT_NE(log.find("--teacher_autocast"), std::string::npos);
  }
}

}  // namespace
}  // namespace lisadiff
