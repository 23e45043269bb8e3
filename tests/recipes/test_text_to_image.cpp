// The text_to_image recipe: min-SNR weights, the step's options, and the executable (a
// README-style command, validation, a SIGKILL mid-run resumed to the straight run's result,
// bad input as one line and an exit code).
#include <gtest/gtest.h>

#include "io/safetensors.h"
#include "recipes/shared_flags.h"
#include "recipes/text_to_image.h"
#include "test_util.h"
#include "tools/make_dataset.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

fs::path micro_sd() { return testing::fixtures_dir() / "pipelines/micro-sd"; }
std::string app() { return (fs::path(testing::cli_path()).parent_path() / "text_to_image").string(); }

fs::path make_data(const fs::path& dir, int n = 12) {
  tools::MakeDatasetOptions m;
  m.kind = "t2i";
  m.format = "folder";
  m.n = n;
  m.size = 40;
  m.out = dir;
  tools::make_dataset(m);
  return dir;
}

// diffusers' compute_snr and the script's weights, by hand for three timesteps.
TEST(TextToImageStep, MinSnrWeights) {
  const auto schedule = schedulers::DDPMNoiseSchedule::from_pretrained(micro_sd() / "scheduler");
  const auto t = torch::tensor({0, 500, 999}, torch::kLong);
  const auto a = schedule.alphas_cumprod().index({t}).to(torch::kFloat64);
  const auto snr = a / (1 - a);
  const auto eps = recipes::min_snr_weights(schedule, t, 5.0, "epsilon").to(torch::kFloat64);
  const auto v = recipes::min_snr_weights(schedule, t, 5.0, "v_prediction").to(torch::kFloat64);
  for (int i = 0; i < 3; ++i) {
    const double s = snr[i].item<double>();
    EXPECT_NEAR(eps[i].item<double>(), std::min(s, 5.0) / s, 1e-5 * std::min(s, 5.0) / s) << i;
    EXPECT_NEAR(v[i].item<double>(), std::min(s, 5.0) / (s + 1), 1e-5) << i;
  }
  EXPECT_LT(eps[0].item<double>(), 1.0);  // t = 0: snr far above gamma
  EXPECT_DOUBLE_EQ(eps[2].item<double>(), 1.0);  // t = 999: snr below gamma
  EXPECT_THROW_WITH(recipes::min_snr_weights(schedule, t, 5.0, "sample"), "prediction_type 'sample'");
}

// diffusers' text-to-image README command with local paths (plus min-SNR, noise offset, input
// perturbation and validation prompts with commas): a pipeline folder with the trained UNet,
// checkpoints, validation grids, metrics.
// The shipped configs are valid for the executable; the command line overrides them.
TEST(TextToImageRecipe, ShippedConfigsParseAndTheCommandLineOverridesThem) {
  const auto table = recipes::text_to_image_flags();
  for (const char* method : {"lisa", "full", "lora"}) {
    const auto file = testing::tests_dir().parent_path() / "configs/text_to_image" / (std::string(method) + ".json");
    const auto parsed = table.parse({"--config", file.string(), "--pretrained_model_name_or_path", "base",
                                     "--train_data_dir", "data", "--max_train_steps", "7"});
    EXPECT_EQ(parsed.values.at("method"), method) << file;
    EXPECT_EQ(parsed.values.at("max_train_steps"), 7) << file;
    EXPECT_EQ(parsed.values.at("resolution"), 512) << file;
  }
  const auto d = table.defaults_json();
  EXPECT_EQ(d.at("method"), "lisa");
  EXPECT_EQ(d.at("output_dir"), "sd-model-finetuned");
  EXPECT_EQ(d.at("learning_rate"), 1e-4);
  EXPECT_EQ(d.at("image_interpolation_mode"), "lanczos");
  // train_text_to_image_lora.py's --rank is --lora_rank.
  const auto parsed = table.parse({"--pretrained_model_name_or_path", "b", "--train_data_dir", "d", "--rank", "8"});
  auto values = recipes::recipe_values(table, parsed);
  recipes::merge_rank_alias(parsed, values);
  EXPECT_EQ(values.at("lora_rank"), 8);
  const auto both = table.parse({"--pretrained_model_name_or_path", "b", "--train_data_dir", "d", "--rank", "8",
                                  "--lora_rank", "16"});
  values = recipes::recipe_values(table, both);
  EXPECT_THROW(recipes::merge_rank_alias(both, values), recipes::UsageError);
}

TEST(TextToImageApp, TheReadmeCommandRunsAndWritesAPipeline) {
  TempDir tmp;
  const auto data = make_data(tmp / "data");
  const auto out = tmp / "out";
  const auto [rc, log] = testing::run_command(
      app() + " --pretrained_model_name_or_path=" + micro_sd().string() + " --dataset_name=" + data.string() +
      " --use_ema --resolution=32 --center_crop --random_flip --train_batch_size=2 --gradient_accumulation_steps=2"
      " --gradient_checkpointing --max_train_steps=6 --learning_rate=1e-05 --max_grad_norm=1 --lr_scheduler=constant"
      " --lr_warmup_steps=0 --snr_gamma 5.0 --noise_offset 0.05 --input_perturbation 0.1 --seed 3"
      " --validation_prompts 'a red circle' 'a blue square, large' --validation_epochs 1 --checkpointing_steps 3"
      " --output_dir=" + out.string() + " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  EXPECT_EQ(testing::read_json(out / "model_index.json").at("_class_name"), "StableDiffusionPipeline");
  for (const char* f : {"unet/diffusion_pytorch_model.safetensors", "unet/config.json", "vae/config.json",
                        "checkpoint-3/unet_ema/diffusion_pytorch_model.safetensors", "checkpoint-6/training_state.json",
                        "validation/step-3.png", "metrics.jsonl"}) {
    EXPECT_TRUE(fs::exists(out / f)) << f << "\n" << log;
  }
  int events = 0;
  for (const auto& line : testing::read_jsonl(out / "metrics.jsonl")) {
    if (line.contains("event") && line.at("event") == "validation") ++events;
  }
  EXPECT_EQ(events, 3) << "two epochs and the final images";
}

// A run killed with SIGKILL and resumed from its last checkpoint ends with the weights of a
// run that was never stopped.
TEST(TextToImageApp, AKilledRunResumesToTheStraightRunsWeights) {
  TempDir tmp;
  const auto data = make_data(tmp / "data", 24);
  const auto command = [&](const fs::path& out) {
    return app() + " --pretrained_model_name_or_path " + micro_sd().string() + " --dataset_name " + data.string() +
           " --resolution 32 --train_batch_size 2 --max_train_steps 30 --checkpointing_steps 5 --seed 4"
           " --learning_rate 1e-3 --noise_offset 0.1 --snr_gamma 5 --lisa_interval 4 --output_dir " + out.string();
  };
  const auto [rc, log] = testing::run_command(command(tmp / "straight") + " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  const auto killed = tmp / "killed";
  const auto [krc, klog] = testing::run_command(
      "(" + command(killed) + " > " + (tmp / "killed.log").string() + " 2>&1 & pid=$!; while [ ! -d " +
      (killed / "checkpoint-10").string() + " ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done; kill -9 $pid; " +
      "wait $pid; echo \"exit $?\")");
  EXPECT_NE(klog.find("exit 137"), std::string::npos) << klog << testing::read_file(tmp / "killed.log");
  const auto [rrc, rlog] = testing::run_command(command(killed) + " --resume_from_checkpoint latest 2>&1");
  ASSERT_EQ(rrc, 0) << rlog;
  EXPECT_TRUE(testing::read_file(killed / "unet/diffusion_pytorch_model.safetensors") ==
              testing::read_file(tmp / "straight/unet/diffusion_pytorch_model.safetensors"));
}

TEST(TextToImageApp, BadInputIsOneLineAndExitCode) {
  TempDir tmp;
  const auto data = make_data(tmp / "data", 4);
  const std::string base = app() + " --pretrained_model_name_or_path " + micro_sd().string() + " --dataset_name " +
                           data.string() + " --resolution 32 --max_train_steps 1 --output_dir " + (tmp / "o").string();
  const std::vector<std::tuple<std::string, int, std::string>> cases = {
      {" --snr_gamma 0", 2, "--snr_gamma must be positive"},
      {" --prediction_type sample", 2, "--prediction_type must be epsilon or v_prediction"},
      {" --image_interpolation_mode cubic", 2, "'cubic' is not one of"},
      {" --resolution 30", 2, "--resolution"},
      {" --validation_prompts", 2, "--validation_prompts: expected one or more values"},
      {" --input_perturbation -1", 2, "--input_perturbation must be at least 0"},
      {" --dataset_name " + (tmp / "missing").string(), 2, "no such local folder"},
  };
  for (const auto& [flags, code, message] : cases) {
    const auto [rc, log] = testing::run_command(base + flags + " 2>&1");
    EXPECT_EQ(rc, code) << flags << "\n" << log;
    EXPECT_NE(log.find(message), std::string::npos) << flags << "\n" << log;
  }
}

}  // namespace
}  // namespace lisadiff
