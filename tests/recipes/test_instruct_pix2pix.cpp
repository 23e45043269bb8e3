// The instruct_pix2pix recipe: the conv_in surgery, the conditioning-dropout regions, and the
// executable run as the original README runs it (local paths), with its outputs and its
// refusals.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <fstream>

#include "io/safetensors.h"
#include "models/unet.h"
#include "recipes/instruct_pix2pix.h"
#include "test_util.h"
#include "tools/make_dataset.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::fixtures_dir;
using testing::TempDir;

fs::path micro_sd() { return fixtures_dir() / "pipelines/micro-sd"; }

TEST(InstructPix2PixRecipe, WidenedConvInKeepsThePretrainedChannelsAndAFreshBias) {
  auto unet = models::load_unet(micro_sd() / "unet");
  const auto weight = unet->conv_in->weight.detach().clone();
  const auto bias = unet->conv_in->bias.detach().clone();
  torch::manual_seed(42);
  ASSERT_TRUE(recipes::widen_conv_in(unet, 8, /*copy_bias=*/false));
  EXPECT_EQ(unet->config.in_channels, 8);
  EXPECT_EQ(unet->conv_in->weight.size(1), 8);
  EXPECT_TRUE(testing::same_tensor(unet->conv_in->weight.slice(1, 0, 4), weight));
  EXPECT_EQ(unet->conv_in->weight.slice(1, 4, 8).abs().max().item<float>(), 0.0f);
  // The bias is a fresh Conv2d's right after the seed: PyTorch's init, as the script.
  torch::manual_seed(42);
  torch::nn::Conv2d fresh(torch::nn::Conv2dOptions(8, weight.size(0), 3).padding(1));
  EXPECT_TRUE(testing::same_tensor(unet->conv_in->bias, fresh->bias));
  EXPECT_FALSE(testing::same_tensor(unet->conv_in->bias, bias));
  // Still the first tensor in registration order (LISA's "first tensor").
  EXPECT_EQ(unet->named_parameters().pairs().front().first, "conv_in.weight");
  // An 8-channel UNet is left alone; copy_bias keeps the pretrained bias.
  EXPECT_FALSE(recipes::widen_conv_in(unet, 8, false));
  auto other = models::load_unet(micro_sd() / "unet");
  recipes::widen_conv_in(other, 8, /*copy_bias=*/true);
  EXPECT_TRUE(testing::same_tensor(other->conv_in->bias, bias));
  // The widened UNet runs on 8 channels and, with zero image weights, ignores the image.
  torch::NoGradGuard no_grad;
  auto x = torch::randn({1, 4, 8, 8});
  auto ctx = torch::randn({1, 7, static_cast<int64_t>(other->config.cross_attention_dim.at(0))});
  auto t = torch::tensor({10});
  auto reference = models::load_unet(micro_sd() / "unet");
  reference->conv_in->bias.data().copy_(other->conv_in->bias);
  EXPECT_TRUE(testing::close_tensor("8 vs 4 channels", other->forward(torch::cat({x, torch::randn_like(x)}, 1), t, ctx),
                                    reference->forward(x, t, ctx), 1e-6, 1e-5));
}

TEST(InstructPix2PixRecipe, ConditioningDropoutRegions) {
  const double p = 0.05;
  const auto r = torch::tensor({0.0f, 0.049f, 0.05f, 0.099f, 0.1f, 0.149f, 0.15f, 0.9f});
  const auto masks = recipes::conditioning_dropout(r, p);
  // r < p: prompt only; p <= r < 2p: both; 2p <= r < 3p: image only; r >= 3p: nothing.
  EXPECT_EQ(masks.drop_prompt.to(torch::kInt).sum().item<int>(), 4);
  EXPECT_TRUE(torch::equal(masks.drop_prompt, torch::tensor({1, 1, 1, 1, 0, 0, 0, 0}).to(torch::kBool)));
  EXPECT_TRUE(torch::equal(masks.drop_image, torch::tensor({0, 0, 1, 1, 1, 1, 0, 0}).to(torch::kBool)));
  // Over many draws each region has probability p (prompt only, both, image only).
  auto gen = at::make_generator<at::CPUGeneratorImpl>(42);
  const auto many = torch::rand({200000}, gen);
  const auto m = recipes::conditioning_dropout(many, p);
  const auto share = [&](const torch::Tensor& mask) { return mask.to(torch::kDouble).mean().item<double>(); };
  EXPECT_NEAR(share(m.drop_prompt.logical_and(m.drop_image.logical_not())), p, 0.002);
  EXPECT_NEAR(share(m.drop_prompt.logical_and(m.drop_image)), p, 0.002);
  EXPECT_NEAR(share(m.drop_image.logical_and(m.drop_prompt.logical_not())), p, 0.002);
}

// The shipped configs are valid for the executable: every key a flag, every value its type;
// the command line overrides them.
TEST(InstructPix2PixRecipe, ShippedConfigsParseAndTheCommandLineOverridesThem) {
  const auto table = recipes::instruct_pix2pix_flags();
  for (const char* method : {"lisa", "full", "lora"}) {
    const auto file = testing::tests_dir().parent_path() / "configs/instruct_pix2pix" / (std::string(method) + ".json");
    const auto parsed = table.parse({"--config", file.string(), "--pretrained_model_name_or_path", "base",
                                     "--dataset_name", "data", "--max_train_steps", "7"});
    EXPECT_EQ(parsed.values.at("method"), method) << file;
    EXPECT_EQ(parsed.values.at("max_train_steps"), 7) << file;             // the command line wins
    EXPECT_EQ(parsed.values.at("conditioning_dropout_prob"), 0.05) << file;  // the README's recipe
  }
  // Every flag's default is one its reader accepts (the table and the readers agree).
  EXPECT_EQ(table.defaults_json().at("output_dir"), "instruct-pix2pix-model");
  EXPECT_EQ(table.defaults_json().at("resolution"), 256);
  EXPECT_EQ(table.defaults_json().at("lora_modules_to_save"), config::Json::array({"conv_in"}));
}

std::string app() { return (fs::path(testing::cli_path()).parent_path() / "instruct_pix2pix").string(); }

fs::path make_ip2p_data(const fs::path& dir, int n = 6, int size = 32) {
  tools::MakeDatasetOptions m;
  m.kind = "ip2p";
  m.format = "folder";
  m.n = n;
  m.size = size;
  m.out = dir;
  tools::make_dataset(m);
  return dir;
}

// The original README's command, with the model and the dataset as local paths and the sizes
// cut down (resolution, batch, steps, checkpoint interval) for a test.
TEST(InstructPix2PixApp, TheReadmeCommandRunsAndWritesAPipeline) {
  TempDir tmp;
  const auto data = make_ip2p_data(tmp / "data");
  const auto out = tmp / "out";
  const std::string command =
      app() + " --pretrained_model_name_or_path=" + micro_sd().string() + " --dataset_name=" + data.string() +
      " --enable_xformers_memory_efficient_attention --resolution=32 --random_flip --train_batch_size=2"
      " --gradient_accumulation_steps=1 --gradient_checkpointing --max_train_steps=4 --checkpointing_steps=2"
      " --checkpoints_total_limit=1 --learning_rate=5e-05 --max_grad_norm=1 --lr_warmup_steps=0"
      " --conditioning_dropout_prob=0.05 --mixed_precision=no --use_8bit_adam --seed=42 --lisa_interval 2"
      " --output_dir=" + out.string() + " 2>&1";
  const auto [rc, log] = testing::run_command(command);
  ASSERT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("--enable_xformers_memory_efficient_attention: no effect"), std::string::npos) << log;
  // The pipeline folder: model_index.json of the InstructPix2Pix pipeline, an 8-channel UNet,
  // the other components copied from the base.
  const auto index = testing::read_json(out / "model_index.json");
  EXPECT_EQ(index.at("_class_name"), "StableDiffusionInstructPix2PixPipeline");
  EXPECT_EQ(testing::read_json(out / "unet/config.json").at("in_channels"), 8);
  for (const char* part : {"vae/config.json", "text_encoder/config.json", "tokenizer/vocab.json",
                           "scheduler/scheduler_config.json"}) {
    EXPECT_TRUE(fs::exists(out / part)) << part;
  }
  EXPECT_TRUE(testing::read_file(out / "vae/diffusion_pytorch_model.safetensors") ==
              testing::read_file(micro_sd() / "vae/diffusion_pytorch_model.safetensors"));
  // Rotation kept the last checkpoint only; metrics and TensorBoard files are there.
  EXPECT_FALSE(fs::exists(out / "checkpoint-2"));
  EXPECT_TRUE(fs::exists(out / "checkpoint-4/unet/diffusion_pytorch_model.safetensors"));
  EXPECT_TRUE(fs::exists(out / "metrics.jsonl"));
  EXPECT_TRUE(fs::exists(out / "logs/instruct-pix2pix"));
  // The result is an InstructPix2Pix pipeline that lisadiff generate edits with.
  const auto [grc, glog] = testing::run_command(testing::cli_path() + " generate " + out.string() +
                                                " --image " + (fixtures_dir() / "inference/source.png").string() +
                                                " --prompt 'make it blue' --steps 2 --out " + (tmp / "gen").string() +
                                                " 2>&1");
  EXPECT_EQ(grc, 0) << glog;
}

// A base laid out as users download SD1.5: safety_checker/ and feature_extractor/ in
// model_index.json, fp16 variant files beside the fp32 ones. It loads (the fp32 files without
// --variant), and the saved pipeline carries the folders the recipe does not train unchanged.
TEST(InstructPix2PixApp, AnSd15StyleBaseLoadsAndItsOtherFoldersAreCarried) {
  TempDir tmp;
  const auto base = tmp / "sd15-style";
  fs::copy(micro_sd(), base, fs::copy_options::recursive);
  auto index = testing::read_json(base / "model_index.json");
  index["safety_checker"] = {"stable_diffusion", "StableDiffusionSafetyChecker"};
  index["feature_extractor"] = {"transformers", "CLIPImageProcessor"};
  index["requires_safety_checker"] = true;
  testing::write_file(base / "model_index.json", index.dump(2));
  fs::create_directories(base / "safety_checker");
  fs::create_directories(base / "feature_extractor");
  testing::write_file(base / "safety_checker/config.json", R"({"_class_name": "StableDiffusionSafetyChecker"})");
  testing::write_file(base / "safety_checker/model.safetensors", "not read by the recipe");
  testing::write_file(base / "feature_extractor/preprocessor_config.json", R"({"crop_size": 224})");
  for (const char* part : {"unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model"}) {
    const io::SafetensorsReader r(base / (std::string(part) + ".safetensors"));
    io::NamedTensors half;
    for (const auto& e : r.entries()) half.emplace_back(e.name, r.tensor(e.name).to(torch::kHalf));
    io::write_safetensors(base / (std::string(part) + ".fp16.safetensors"), half, {{"format", "pt"}});
  }
  const auto data = make_ip2p_data(tmp / "data", 2);
  const auto out = tmp / "out";
  const auto [rc, log] = testing::run_command(app() + " --pretrained_model_name_or_path " + base.string() +
                                              " --dataset_name " + data.string() + " --resolution 32 --train_batch_size 2"
                                              " --max_train_steps 1 --seed 0 --output_dir " + out.string() + " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  const auto saved = testing::read_json(out / "model_index.json");
  EXPECT_EQ(saved.at("_class_name"), "StableDiffusionInstructPix2PixPipeline");
  EXPECT_EQ(saved.at("safety_checker"), index.at("safety_checker"));
  EXPECT_EQ(saved.at("requires_safety_checker"), true);
  EXPECT_EQ(testing::read_file(out / "safety_checker/model.safetensors"), "not read by the recipe");
  EXPECT_EQ(testing::read_file(out / "feature_extractor/preprocessor_config.json"), R"({"crop_size": 224})");
  // The trained UNet is float32 whatever the base's variants.
  const io::SafetensorsReader unet(out / "unet/diffusion_pytorch_model.safetensors");
  EXPECT_EQ(unet.entry("conv_in.weight").dtype, io::Dtype::F32);
  // With --variant fp16 the VAE and the text encoder come from the fp16 files.
  const auto [vrc, vlog] = testing::run_command(app() + " --pretrained_model_name_or_path " + base.string() +
                                                " --dataset_name " + data.string() + " --resolution 32 --train_batch_size 2"
                                                " --max_train_steps 1 --seed 0 --variant fp16 --output_dir " +
                                                (tmp / "out16").string() + " 2>&1");
  EXPECT_EQ(vrc, 0) << vlog;
}

// --method lora: adapters plus the widened conv_in (lora_modules_to_save's default for this
// recipe); the LoRA file and the modules file, and a pipeline with the merged UNet.
TEST(InstructPix2PixApp, LoraTrainsAdaptersAndConvInAndWritesAMergedPipeline) {
  TempDir tmp;
  const auto data = make_ip2p_data(tmp / "data", 4);
  const auto out = tmp / "out";
  const auto [rc, log] = testing::run_command(app() + " --pretrained_model_name_or_path " + micro_sd().string() +
                                              " --dataset_name " + data.string() + " --resolution 32 --train_batch_size 2"
                                              " --max_train_steps 3 --checkpointing_steps 2 --learning_rate 1e-2 --seed 0"
                                              " --method lora --lora_rank 2 --output_dir " + out.string() + " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  EXPECT_TRUE(fs::exists(out / "pytorch_lora_weights.safetensors"));
  EXPECT_TRUE(fs::exists(out / "checkpoint-2/modules_to_save.safetensors"));
  const io::SafetensorsReader modules(out / "modules_to_save.safetensors");
  // conv_in trained: its image channels left zero.
  EXPECT_GT(modules.tensor("conv_in.weight").slice(1, 4, 8).abs().max().item<float>(), 0.0f);
  const io::SafetensorsReader merged(out / "unet/diffusion_pytorch_model.safetensors");
  EXPECT_TRUE(testing::same_tensor(merged.tensor("conv_in.weight"), modules.tensor("conv_in.weight")));
  EXPECT_EQ(testing::read_json(out / "unet/config.json").at("in_channels"), 8);
  const auto [grc, glog] = testing::run_command(testing::cli_path() + " generate " + out.string() + " --image " +
                                                (fixtures_dir() / "inference/source.png").string() +
                                                " --prompt 'make it blue' --steps 2 --out " + (tmp / "gen").string() +
                                                " 2>&1");
  EXPECT_EQ(grc, 0) << glog;
}

TEST(InstructPix2PixApp, ValidationEditsTheValidationImage) {
  TempDir tmp;
  const auto data = make_ip2p_data(tmp / "data", 4);
  const auto out = tmp / "out";
  const auto [rc, log] = testing::run_command(
      app() + " --pretrained_model_name_or_path " + micro_sd().string() + " --train_data_dir " + data.string() +
      " --resolution 32 --train_batch_size 2 --num_train_epochs 2 --num_validation_images 2 --val_image_url file://" +
      (fixtures_dir() / "inference/source.png").string() + " --validation_prompt 'make it blue' --use_ema --seed 1" +
      " --method full --output_dir " + out.string() + " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  // Two epochs of 2 batches: validation after each epoch, at steps 2 and 4.
  EXPECT_TRUE(fs::exists(out / "validation/step-2.png")) << log;
  EXPECT_TRUE(fs::exists(out / "validation/step-4.png")) << log;
}

// A run killed with SIGKILL after its second checkpoint and resumed with
// --resume_from_checkpoint latest ends with the weights of a run that was never stopped, bit
// for bit (CPU): the optimizer, LISA, EMA, random generators, the data loader's position and
// the dropout generator all come back.
TEST(InstructPix2PixApp, AKilledRunResumesToTheStraightRunsWeights) {
  TempDir tmp;
  const auto data = make_ip2p_data(tmp / "data", 10);
  const auto command = [&](const fs::path& out) {
    return app() + " --pretrained_model_name_or_path " + micro_sd().string() + " --dataset_name " + data.string() +
           " --resolution 32 --train_batch_size 2 --gradient_accumulation_steps 2 --max_train_steps 14"
           " --checkpointing_steps 2 --conditioning_dropout_prob 0.1 --use_ema --random_flip --seed 3"
           " --lisa_interval 3 --lr_scheduler cosine --lr_warmup_steps 2 --val_image_url " +
           (fixtures_dir() / "inference/source.png").string() + " --validation_prompt 'make it blue'" +
           " --num_validation_images 1 --output_dir " + out.string();
  };
  const auto [rc, log] = testing::run_command(command(tmp / "straight") + " > /dev/null 2>&1");
  ASSERT_EQ(rc, 0);
  // Kill the second run as soon as checkpoint-4 is there (its remaining 10 steps take longer
  // than the 10 ms poll), then resume it.
  const auto killed = tmp / "killed";
  const auto [krc, klog] = testing::run_command(
      "(" + command(killed) + " > " + (tmp / "killed.log").string() + " 2>&1 & pid=$!; while [ ! -d " +
      (killed / "checkpoint-4").string() + " ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done; kill -9 $pid; " +
      "wait $pid; echo \"exit $?\")");
  EXPECT_NE(klog.find("exit 137"), std::string::npos) << klog << testing::read_file(tmp / "killed.log");
  ASSERT_FALSE(fs::exists(killed / "model_index.json")) << "the run ended before it was killed";
  const auto [rrc, rlog] = testing::run_command(command(killed) + " --resume_from_checkpoint latest 2>&1");
  ASSERT_EQ(rrc, 0) << rlog;
  EXPECT_NE(rlog.find("checkpoint-"), std::string::npos) << rlog;
  for (const char* file : {"unet/diffusion_pytorch_model.safetensors", "checkpoint-14/unet_ema/diffusion_pytorch_model.safetensors",
                           "checkpoint-14/optimizer.safetensors"}) {
    EXPECT_TRUE(testing::read_file(killed / file) == testing::read_file(tmp / "straight" / file))
        << file << " differs from the straight run's";
  }
}

// A row whose image file is missing is skipped, named and counted (the data layer's rule:
// the run stops only when more than max_bad_share of the samples are bad); a pair whose
// images differ in size trains, each image resized to the resolution as the script does.
TEST(InstructPix2PixApp, AMissingImageIsSkippedAndNamed) {
  TempDir tmp;
  const auto data = make_ip2p_data(tmp / "data", 30);
  fs::remove(data / "images/000000003_edited.png");
  const auto [rc, log] = testing::run_command(app() + " --pretrained_model_name_or_path " + micro_sd().string() +
                                              " --dataset_name " + data.string() + " --resolution 32 --train_batch_size 2"
                                              " --max_train_steps 3 --seed 0 --output_dir " + (tmp / "out").string() +
                                              " 2>&1");
  EXPECT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("skipping bad sample"), std::string::npos) << log;
  EXPECT_NE(log.find("000000003_edited.png"), std::string::npos) << log;
  // Every image missing: the run stops with an error naming the dataset, exit 1.
  for (const auto& e : fs::directory_iterator(data / "images")) fs::remove(e.path());
  const auto [brc, blog] = testing::run_command(app() + " --pretrained_model_name_or_path " + micro_sd().string() +
                                                " --dataset_name " + data.string() + " --resolution 32 --train_batch_size 2"
                                                " --max_train_steps 3 --seed 0 --output_dir " + (tmp / "out2").string() +
                                                " 2>&1");
  EXPECT_EQ(brc, 1) << blog;
  EXPECT_NE(blog.find(data.string()), std::string::npos) << blog;
}

TEST(InstructPix2PixApp, BadInputIsOneLineAndExitCode) {
  TempDir tmp;
  const auto data = make_ip2p_data(tmp / "data", 2);
  const std::string base = app() + " --pretrained_model_name_or_path " + micro_sd().string() + " --output_dir " +
                           (tmp / "out").string() + " --max_train_steps 1 --resolution 32 ";
  const auto expect = [&](const std::string& flags, int code, const std::string& text) {
    const auto [rc, log] = testing::run_command(base + flags + " 2>&1");
    EXPECT_EQ(rc, code) << flags << "\n" << log;
    EXPECT_NE(log.find(text), std::string::npos) << flags << "\n" << log;
  };
  const std::string d = " --dataset_name " + data.string();
  expect(d + " --lerning_rate 1", 2, "did you mean --learning_rate?");
  expect(d + " --train_batch_size two", 2, "--train_batch_size: 'two' is not an integer");
  expect(d + " --push_to_hub", 2, "--push_to_hub: not supported");
  expect("--dataset_name fusing/instructpix2pix-1000-samples", 2, "convert_hf_dataset.py");
  expect("", 2, "no dataset given");
  expect(d + " --val_image_url https://example.com/a.png --validation_prompt x", 2, "does not download");
  expect(d + " --val_image_url " + (tmp / "missing.png").string() + " --validation_prompt x", 2, "no such file");
  expect(d + " --mixed_precision fp8", 2, "is not one of no, fp16, bf16");
  expect(d + " --edit_prompt_column caption", 1, "caption");
  expect(d + " --resolution 30", 2, "--resolution must be a positive multiple of 8");
  {
    const auto [rc, log] = testing::run_command(app() + " --pretrained_model_name_or_path runwayml/stable-diffusion-v1-5" +
                                                d + " 2>&1");
    EXPECT_EQ(rc, 2) << log;
    EXPECT_NE(log.find("runwayml/stable-diffusion-v1-5: no such folder"), std::string::npos) << log;
    EXPECT_EQ(log.find("no --seed"), std::string::npos) << "the error should come first:\n" << log;
  }
  testing::write_file(tmp / "not-an-image.png", "text, not a PNG");
  expect(d + " --val_image_url " + (tmp / "not-an-image.png").string() + " --validation_prompt x", 1, "not-an-image.png");
  const auto [rc, log] = testing::run_command(app() + " --help");
  EXPECT_EQ(rc, 0);
  EXPECT_NE(log.find("--conditioning_dropout_prob"), std::string::npos);
  EXPECT_NE(log.find("Method"), std::string::npos);
}

}  // namespace
}  // namespace lisadiff
