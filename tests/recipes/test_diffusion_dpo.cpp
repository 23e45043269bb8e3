// The diffusion_dpo recipe: the loss formulas, the identity at the start (policy =
// reference), the shared draws of a pair, and the executable run as the original README runs
// it (local paths), with its outputs, its resume after SIGKILL and its refusals.
#include <gtest/gtest.h>

#include <cmath>

#include "data/loader.h"
#include "io/safetensors.h"
#include "models/state.h"
#include "recipes/diffusion_dpo.h"
#include "test_util.h"
#include "tools/make_dataset.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using recipes::DpoLossType;
using testing::fixtures_dir;
using testing::TempDir;

fs::path micro_sd() { return fixtures_dir() / "pipelines/micro-sd"; }

TEST(DiffusionDpoLoss, FormulasTiesAndImplicitAccuracy) {
  // B = 4 pairs: model_mse = [w..., l...], ref_mse likewise.
  const auto model = torch::tensor({0.10f, 0.30f, 0.20f, 0.25f, 0.20f, 0.20f, 0.20f, 0.25f});
  const auto ref = torch::tensor({0.20f, 0.20f, 0.20f, 0.20f, 0.20f, 0.20f, 0.20f, 0.20f});
  // logits = (ref_w - ref_l) - (model_w - model_l) = [0.1, -0.1, 0, 0]: one above, one below, two ties.
  const auto logits = torch::tensor({0.1f, -0.1f, 0.0f, 0.0f});
  const double beta = 3;
  auto sig = recipes::dpo_loss(model, ref, DpoLossType::kSigmoid, beta);
  EXPECT_TRUE(testing::close_tensor("logits", sig.logits, logits, 1e-6, 1e-7));
  EXPECT_NEAR(sig.loss.item<double>(), (-std::log(1 / (1 + std::exp(-0.3))) - std::log(1 / (1 + std::exp(0.3))) +
                                        2 * std::log(2.0)) / 4,
              1e-6);
  EXPECT_DOUBLE_EQ(sig.implicit_acc.item<double>(), 0.5);  // (1 + 2 x 0.5) / 4
  const auto hinge = recipes::dpo_loss(model, ref, DpoLossType::kHinge, beta);
  EXPECT_NEAR(hinge.loss.item<double>(), (std::max(0.0, 1 - 0.3) + (1 + 0.3) + 2 * 1.0) / 4, 1e-6);
  const auto ipo = recipes::dpo_loss(model, ref, DpoLossType::kIpo, beta);
  const double c = 1 / (2 * beta);
  EXPECT_NEAR(ipo.loss.item<double>(), (std::pow(0.1 - c, 2) + std::pow(-0.1 - c, 2) + 2 * c * c) / 4, 1e-6);
  // All above: accuracy 1; the gradient of the sigmoid loss pushes model_w down and model_l up.
  const auto better = torch::tensor({0.1f, 0.1f, 0.3f, 0.3f}, torch::requires_grad());
  const auto r = recipes::dpo_loss(better, torch::tensor({0.2f, 0.2f, 0.2f, 0.2f}), DpoLossType::kSigmoid, 1);
  EXPECT_DOUBLE_EQ(r.implicit_acc.item<double>(), 1.0);
  r.loss.backward();
  EXPECT_GT(better.grad()[0].item<float>(), 0);
  EXPECT_LT(better.grad()[2].item<float>(), 0);
  EXPECT_EQ(recipes::dpo_loss_type("hinge"), DpoLossType::kHinge);
  EXPECT_THROW(recipes::dpo_loss_type("cpo"), recipes::UsageError);
}

// The frozen models of a micro-batch on micro-sd, and a Trainer for `method`.
struct MicroRun {
  models::CLIPTokenizer tokenizer = models::CLIPTokenizer::from_folder(micro_sd() / "tokenizer");
  models::CLIPTextModel text_encoder{nullptr};
  models::AutoencoderKL vae{nullptr};
  models::UNet2DConditionModel unet{nullptr}, reference{nullptr};
  schedulers::DDPMNoiseSchedule schedule = schedulers::DDPMNoiseSchedule::from_pretrained(micro_sd() / "scheduler");
  std::unique_ptr<train::Trainer> trainer;
  recipes::DiffusionDpoModels m;

  MicroRun(train::TrainMethod method, const fs::path& out) {
    models::LoadOptions frozen;
    frozen.frozen = true;
    text_encoder = models::load_clip_text(micro_sd() / "text_encoder", frozen);
    vae = models::load_vae(micro_sd() / "vae", frozen);
    text_encoder->eval();  // as the recipe: no dropout draws in the frozen models
    vae->eval();
    if (method != train::TrainMethod::kLora) {
      frozen.map_file = true;
      reference = models::load_unet(micro_sd() / "unet", frozen);
    }
    unet = models::load_unet(micro_sd() / "unet");
    train::TrainerOptions o;
    o.method = method;
    o.lora.init = "gaussian";
    o.output_dir = out;
    o.max_train_steps = 1;
    o.report_to = "none";
    trainer = std::make_unique<train::Trainer>(train::trained_unet(unet), o);
    m.tokenizer = &tokenizer;
    m.text_encoder = text_encoder;
    m.vae = vae;
    m.unet = unet;
    m.schedule = &schedule;
    if (reference) {
      m.reference = [this](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& c) {
        return reference->forward(x, t, c);
      };
    } else {
      m.reference = [this](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& c) {
        trainer->lora()->set_enabled(false);
        auto y = unet->forward(x, t, c);
        trainer->lora()->set_enabled(true);
        return y;
      };
    }
  }
};

data::Batch random_pairs(int64_t batch, int64_t resolution, uint64_t seed) {
  torch::manual_seed(seed);
  data::Batch b;
  b.images = {torch::rand({batch, 3, resolution, resolution}) * 2 - 1,
              torch::rand({batch, 3, resolution, resolution}) * 2 - 1};
  for (int64_t i = 0; i < batch; ++i) b.texts.push_back("a red circle " + std::to_string(i));
  return b;
}

// At the start the policy is the reference, so every logit is 0: loss ln 2 (sigmoid), 1
// (hinge), 1 / (4 beta^2) (ipo), and implicit accuracy 0.5, for every method; exactly (ipo to float32
// rounding), since the two forward passes are the same computation on the same weights.
TEST(DiffusionDpoStep, PolicyEqualsReferenceAtTheStart) {
  for (const auto method : {train::TrainMethod::kLora, train::TrainMethod::kLisa, train::TrainMethod::kFull}) {
    TempDir tmp;
    MicroRun run(method, tmp / "out");
    for (const auto type : {DpoLossType::kSigmoid, DpoLossType::kHinge, DpoLossType::kIpo}) {
      run.m.loss_type = type;
      run.m.beta = 2500;
      const auto r = recipes::diffusion_dpo_step(run.m, random_pairs(3, 16, 5));
      const double expected = type == DpoLossType::kSigmoid ? std::log(2.0)
                              : type == DpoLossType::kHinge ? 1.0
                                                            : 1.0 / (4.0 * 2500 * 2500);
      const auto what = train::method_name(method) + " loss type " + std::to_string(static_cast<int>(type));
      EXPECT_NEAR(r.loss.item<double>(), expected, 1e-6 * expected) << what;  // float32 rounding of 1 / (2 beta)
      EXPECT_EQ(r.logs.at("implicit_acc").get<double>(), 0.5) << what;
      // The same MSEs, averaged as the script averages each: 0.5 (mean_w + mean_l) vs mean.
      EXPECT_NEAR(r.logs.at("raw_model_loss").get<double>(), r.logs.at("ref_loss").get<double>(),
                  1e-6 * r.logs.at("ref_loss").get<double>())
          << what;
    }
  }
}

// The script's draws: timesteps drawn for B pairs and repeated, noise drawn for 2B and its
// first B repeated, so a pair whose two images are equal gets equal noisy latents; and the
// text embedding repeated.
TEST(DiffusionDpoStep, BothImagesOfAPairShareNoiseTimestepsAndText) {
  TempDir tmp;
  MicroRun run(train::TrainMethod::kFull, tmp / "out");
  torch::Tensor seen_x, seen_t, seen_c;
  const auto reference = run.m.reference;
  run.m.reference = [&](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& c) {
    seen_x = x, seen_t = t, seen_c = c;
    return reference(x, t, c);
  };
  auto batch = random_pairs(3, 16, 9);
  batch.images[1] = batch.images[0].clone();  // equal images: equal latents with equal VAE noise
  recipes::DiffusionDpoDraws draws;
  const auto half = torch::randn({3, 4, 8, 8});
  draws.latent_noise = torch::cat({half, half});  // the noise and timesteps are drawn by the step
  torch::manual_seed(1);
  const auto r = recipes::diffusion_dpo_step(run.m, batch, draws);
  ASSERT_EQ(seen_t.size(0), 6);
  EXPECT_TRUE(torch::equal(seen_t.slice(0, 0, 3), seen_t.slice(0, 3, 6)));
  EXPECT_FALSE(torch::equal(seen_t.slice(0, 0, 1), seen_t.slice(0, 1, 2)) &&
               torch::equal(seen_t.slice(0, 1, 2), seen_t.slice(0, 2, 3)));
  EXPECT_TRUE(torch::equal(seen_x.slice(0, 0, 3), seen_x.slice(0, 3, 6)));
  EXPECT_TRUE(torch::equal(seen_c.slice(0, 0, 3), seen_c.slice(0, 3, 6)));
  EXPECT_FALSE(torch::equal(seen_c[0], seen_c[1]));  // different captions
  // Equal images under equal noise: every logit is 0 whatever the model.
  EXPECT_EQ(r.logs.at("implicit_acc").get<double>(), 0.5);
  // The same seed draws the same noise and timesteps again; the noise is the first half of
  // a [2B] draw (the script's randn_like(latents).chunk(2)[0]).
  torch::manual_seed(1);
  const auto noise = torch::randn({6, 4, 8, 8}).chunk(2)[0];
  const auto t = torch::randint(0, 1000, {3}, torch::kLong);
  EXPECT_TRUE(torch::equal(seen_t.slice(0, 0, 3), t));
  const auto expected = run.schedule.add_noise(
      run.vae->encode(batch.images[0]).sample_with(half) * run.vae->config.scaling_factor, noise, t);
  EXPECT_TRUE(testing::close_tensor("noisy latents", seen_x.slice(0, 0, 3), expected, 1e-6, 1e-6));
}

// The pretrained reference read from the mapped weight file is the file's values, costs no
// copy, and a write into it (ref_update_rate) never reaches the file.
TEST(DiffusionDpoStep, MappedReferenceIsTheFileAndWritesStayPrivate) {
  TempDir tmp;
  fs::copy(micro_sd() / "unet", tmp / "unet", fs::copy_options::recursive);
  const auto file = tmp / "unet/diffusion_pytorch_model.safetensors";
  const auto before = testing::read_file(file);
  models::LoadOptions o;
  o.frozen = true;
  o.map_file = true;
  auto mapped = models::load_unet(tmp / "unet", o);
  const auto copied = models::load_unet(tmp / "unet");
  const io::SafetensorsReader reader(file);
  std::size_t n = 0;
  for (const auto& [name, value] : mapped->named_parameters().pairs()) {
    EXPECT_TRUE(testing::same_tensor(value, copied->named_parameters()[name])) << name;
    EXPECT_FALSE(value.requires_grad()) << name;
    ++n;
  }
  EXPECT_EQ(n, reader.size());
  const auto report = models::load_parameters(*models::load_unet(tmp / "unet"), {file}, o);
  EXPECT_EQ(report.mapped, reader.size());
  {
    torch::NoGradGuard no_grad;
    for (auto& p : mapped->parameters()) p.mul_(0.5);
  }
  EXPECT_TRUE(testing::read_file(file) == before);
  const auto again = models::load_unet(tmp / "unet");
  EXPECT_TRUE(testing::same_tensor(again->conv_in->weight, copied->conv_in->weight));
  EXPECT_FALSE(testing::same_tensor(mapped->conv_in->weight, copied->conv_in->weight));
}

std::string app() { return (fs::path(testing::cli_path()).parent_path() / "diffusion_dpo").string(); }

fs::path make_dpo_data(const fs::path& dir, int n = 8, double ties = 0.25) {
  tools::MakeDatasetOptions m;
  m.kind = "dpo";
  m.format = "folder";
  m.n = n;
  m.size = 32;
  m.tie_share = ties;
  m.out = dir;
  tools::make_dataset(m);
  return dir;
}

// The shipped configs are valid for the executable; the command line overrides them.
TEST(DiffusionDpoRecipe, ShippedConfigsParseAndTheTableHasTheScriptsDefaults) {
  const auto table = recipes::diffusion_dpo_flags();
  for (const char* method : {"lora", "lisa", "full"}) {
    const auto file = testing::tests_dir().parent_path() / "configs/diffusion_dpo" / (std::string(method) + ".json");
    const auto parsed = table.parse({"--config", file.string(), "--pretrained_model_name_or_path", "base",
                                     "--dataset_name", "data", "--max_train_steps", "7"});
    EXPECT_EQ(parsed.values.at("method"), method) << file;
    EXPECT_EQ(parsed.values.at("max_train_steps"), 7) << file;
  }
  const auto d = table.defaults_json();
  EXPECT_EQ(d.at("method"), "lora");
  EXPECT_EQ(d.at("output_dir"), "diffusion-dpo-lora");
  EXPECT_EQ(d.at("tracker_name"), "diffusion-dpo-lora");
  EXPECT_EQ(d.at("dataset_split_name"), "validation");
  EXPECT_EQ(d.at("beta_dpo"), 2500);
  EXPECT_EQ(d.at("loss_type"), "sigmoid");
  EXPECT_EQ(d.at("learning_rate"), 5e-4);
  EXPECT_EQ(d.at("train_batch_size"), 4);
  EXPECT_EQ(d.at("num_train_epochs"), 1);
  EXPECT_EQ(d.at("resolution"), 512);
  EXPECT_EQ(d.at("rank"), 4);
  EXPECT_EQ(d.at("lora_init"), "gaussian");
  EXPECT_EQ(d.at("validation_steps"), 200);
  EXPECT_EQ(d.at("vae_encode_batch_size"), 8);
  EXPECT_EQ(d.at("lr_warmup_steps"), 500);
  EXPECT_EQ(table.find("beta_dpo")->type, recipes::FlagType::kInt);  // an integer, as the script parses it
}

// The original README's DPO command, with the model and the dataset as local paths and the
// sizes cut down for a test. It trains LoRA (this executable's default, the script's method)
// and writes the LoRA file; checkpoints hold it too.
TEST(DiffusionDpoApp, TheReadmeCommandRunsAndWritesTheLoraFile) {
  TempDir tmp;
  const auto data = make_dpo_data(tmp / "data");
  const auto out = tmp / "diffusion-dpo";
  const std::string command =
      app() + " --pretrained_model_name_or_path=" + micro_sd().string() + " --output_dir=" + out.string() +
      " --mixed_precision=\"no\" --dataset_name=" + data.string() +
      " --resolution=32 --train_batch_size=2 --gradient_accumulation_steps=2 --gradient_checkpointing --use_8bit_adam"
      " --learning_rate=5e-5 --report_to=\"wandb\" --lr_scheduler=\"constant\" --lr_warmup_steps=0"
      " --max_train_steps=3 --checkpointing_steps=2 --run_validation --validation_steps=2 --seed=\"0\""
      " --report_to=\"wandb\" 2>&1";
  const auto [rc, log] = testing::run_command(command);
  ASSERT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("wandb"), std::string::npos) << log;  // the tracker note
  const io::SafetensorsReader lora(out / "pytorch_lora_weights.safetensors");
  EXPECT_EQ(lora.metadata().at("format"), "pt");
  // diffusers' key names with peft's adapter names, which load_lora_weights reads (the script
  // writes the older lora.down / lora.up spelling of the same tensors).
  EXPECT_TRUE(lora.contains("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"));
  EXPECT_TRUE(fs::exists(out / "checkpoint-2/pytorch_lora_weights.safetensors"));
  EXPECT_FALSE(fs::exists(out / "unet"));
  // Validation every 2 steps, then the final comparison with and without the adapters.
  for (const char* f : {"step-2.png", "step-3-test.png", "step-3-test_without_lora.png"}) {
    EXPECT_TRUE(fs::exists(out / "validation" / f)) << f << "\n" << log;
  }
  // The metrics the script logs, every step.
  const auto lines = testing::read_jsonl(out / "metrics.jsonl");
  int steps = 0;
  for (const auto& l : lines) {
    if (l.contains("event")) continue;
    ++steps;
    for (const char* key : {"loss", "raw_model_loss", "ref_loss", "implicit_acc", "lr"}) {
      EXPECT_TRUE(l.contains(key)) << key << " in " << l.dump();
    }
  }
  EXPECT_EQ(steps, 3);
  EXPECT_NEAR(lines.front().at("loss").get<double>(), std::log(2.0), 1e-6);
  EXPECT_EQ(lines.front().at("implicit_acc").get<double>(), 0.5);
  EXPECT_TRUE(fs::exists(out / "logs/diffusion-dpo-lora"));
  // lisadiff generate takes the LoRA file with the base.
  const auto [grc, glog] = testing::run_command(testing::cli_path() + " generate " + micro_sd().string() + " --lora " +
                                                (out / "pytorch_lora_weights.safetensors").string() +
                                                " --prompt 'a red circle' --steps 2 --out " + (tmp / "gen").string() +
                                                " 2>&1");
  EXPECT_EQ(grc, 0) << glog;
}

// --method lisa and full: the reference is the pretrained UNet; the result is a pipeline folder
// (the fork saves nothing at the end), named as the fork names its output.
TEST(DiffusionDpoApp, LisaAndFullWriteAPipelineFolder) {
  TempDir tmp;
  const auto data = make_dpo_data(tmp / "data", 4);
  for (const char* method : {"lisa", "full"}) {
    const auto [rc, log] = testing::run_command(
        "cd " + tmp.path().string() + " && " + app() + " --pretrained_model_name_or_path " + micro_sd().string() +
        " --dataset_name " + data.string() + " --resolution 32 --train_batch_size 2 --max_train_steps 2 --seed 0" +
        " --method " + method + " --reference_dtype fp32 2>&1");
    ASSERT_EQ(rc, 0) << log;
    const auto out = tmp / (std::string("diffusion-dpo-") + method);
    EXPECT_EQ(testing::read_json(out / "model_index.json").at("_class_name"), "StableDiffusionPipeline") << method;
    EXPECT_TRUE(fs::exists(out / "unet/diffusion_pytorch_model.safetensors")) << method;
    EXPECT_TRUE(fs::exists(out / "vae/diffusion_pytorch_model.safetensors")) << method;
    EXPECT_TRUE(fs::exists(out / (std::string("logs/diffusion-dpo-") + method))) << method;
    const auto [grc, glog] = testing::run_command(testing::cli_path() + " generate " + out.string() +
                                                  " --prompt 'a red circle' --steps 2 --out " + (tmp / ("gen-" + std::string(method))).string() +
                                                  " 2>&1");
    EXPECT_EQ(grc, 0) << glog;
  }
}

// --dataset_split_name picks a split folder (default "validation", the script's); a dataset
// without split folders is read as it is; a split that is not there is named with the others.
TEST(DiffusionDpoApp, DatasetSplitFolders) {
  TempDir tmp;
  make_dpo_data(tmp / "data/train", 6);
  make_dpo_data(tmp / "data/validation", 2);
  const std::string cmd = app() + " --pretrained_model_name_or_path " + micro_sd().string() + " --dataset_name " +
                          (tmp / "data").string() + " --resolution 32 --train_batch_size 2 --seed 0";
  const auto [rc, log] = testing::run_command(cmd + " --output_dir " + (tmp / "v").string() + " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  EXPECT_EQ(testing::read_jsonl(tmp / "v/metrics.jsonl").back().at("step"), 1) << "2 pairs: one step of 2";
  const auto [trc, tlog] = testing::run_command(cmd + " --dataset_split_name train --output_dir " +
                                                (tmp / "t").string() + " 2>&1");
  ASSERT_EQ(trc, 0) << tlog;
  EXPECT_EQ(testing::read_jsonl(tmp / "t/metrics.jsonl").back().at("step"), 3) << "6 pairs: three steps of 2";
  const auto [brc, blog] = testing::run_command(cmd + " --dataset_split_name test --output_dir " +
                                                (tmp / "b").string() + " 2>&1");
  EXPECT_EQ(brc, 2) << blog;
  EXPECT_NE(blog.find("--dataset_split_name test"), std::string::npos) << blog;
  EXPECT_NE(blog.find("train, validation"), std::string::npos) << blog;
}

// A run killed with SIGKILL after a checkpoint and resumed with --resume_from_checkpoint latest
// ends with the straight run's result, bit for bit (CPU): LoRA, and LISA with a moving
// reference (the fork's ref_update_rate), whose reference is part of the checkpoint.
TEST(DiffusionDpoApp, AKilledRunResumesToTheStraightRunsResult) {
  TempDir tmp;
  const auto data = make_dpo_data(tmp / "data", 12);
  for (const std::string method : {"lora", "lisa"}) {
    const auto command = [&](const fs::path& out) {
      return app() + " --pretrained_model_name_or_path " + micro_sd().string() + " --dataset_name " + data.string() +
             " --resolution 32 --train_batch_size 2 --gradient_accumulation_steps 2 --max_train_steps 10"
             " --checkpointing_steps 2 --seed 3 --random_crop --learning_rate 1e-3 --lisa_interval 3"
             " --lr_scheduler cosine --lr_warmup_steps 2 --method " + method +
             (method == "lisa" ? " --ref_update_rate 0.01" : "") + " --output_dir " + out.string();
    };
    const auto [rc, log] = testing::run_command(command(tmp / ("straight-" + method)) + " 2>&1");
    ASSERT_EQ(rc, 0) << log;
    const auto killed = tmp / ("killed-" + method);
    const auto [krc, klog] = testing::run_command(
        "(" + command(killed) + " > " + (tmp / "killed.log").string() + " 2>&1 & pid=$!; while [ ! -d " +
        (killed / "checkpoint-4").string() + " ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done; kill -9 $pid; " +
        "wait $pid; echo \"exit $?\")");
    EXPECT_NE(klog.find("exit 137"), std::string::npos) << klog << testing::read_file(tmp / "killed.log");
    const auto [rrc, rlog] = testing::run_command(command(killed) + " --resume_from_checkpoint latest 2>&1");
    ASSERT_EQ(rrc, 0) << rlog;
    const std::vector<std::string> files =
        method == "lora" ? std::vector<std::string>{"pytorch_lora_weights.safetensors", "checkpoint-10/optimizer.safetensors"}
                         : std::vector<std::string>{"unet/diffusion_pytorch_model.safetensors",
                                                    "checkpoint-10/reference_unet.safetensors",
                                                    "checkpoint-10/optimizer.safetensors"};
    for (const auto& file : files) {
      EXPECT_TRUE(testing::read_file(killed / file) == testing::read_file(tmp / ("straight-" + method) / file))
          << method << ": " << file << " differs from the straight run's";
    }
    if (method == "lisa") {
      // The reference moved towards the policy: it is no longer the pretrained UNet.
      const io::SafetensorsReader moved(killed / "checkpoint-10/reference_unet.safetensors");
      const io::SafetensorsReader base(micro_sd() / "unet/diffusion_pytorch_model.safetensors");
      EXPECT_FALSE(testing::same_tensor(moved.tensor("conv_in.weight"), base.tensor("conv_in.weight")));
    }
    // The metrics of the steps after the resume equal the straight run's.
    const auto last_step = [](const fs::path& file) {
      auto lines = testing::read_jsonl(file);
      while (lines.back().contains("event")) lines.pop_back();
      return lines.back();
    };
    const auto straight = last_step(tmp / ("straight-" + method) / "metrics.jsonl");
    const auto resumed = last_step(killed / "metrics.jsonl");
    EXPECT_EQ(straight.at("loss"), resumed.at("loss")) << method;
    EXPECT_EQ(straight.at("implicit_acc"), resumed.at("implicit_acc")) << method;
  }
}

// Bad input: one line naming the flag or the file, exit 2 (usage) or 1 (input).
TEST(DiffusionDpoApp, BadInputIsOneLineAndExitCode) {
  TempDir tmp;
  const auto data = make_dpo_data(tmp / "data", 4);
  const std::string base = app() + " --pretrained_model_name_or_path " + micro_sd().string() + " --output_dir " +
                           (tmp / "out").string() + " --max_train_steps 1 --resolution 32 --train_batch_size 2 ";
  const auto expect = [&](const std::string& flags, int code, const std::string& text) {
    const auto [rc, log] = testing::run_command(base + flags + " 2>&1");
    EXPECT_EQ(rc, code) << flags << "\n" << log;
    EXPECT_NE(log.find(text), std::string::npos) << flags << "\n" << log;
  };
  const std::string d = " --dataset_name " + data.string();
  expect(d + " --loss_type cpo", 2, "--loss_type: 'cpo' is not one of sigmoid, hinge, ipo");
  expect(d + " --beta_dpo 0", 2, "--beta_dpo must be positive");
  expect(d + " --beta_dpo 0.5", 2, "--beta_dpo: '0.5' is not an integer");
  expect(d + " --rank 8 --lora_rank 4", 2, "--rank 8 and --lora_rank 4");
  expect(d + " --ref_update_rate 0.001", 2, "--ref_update_rate: with --method lora");
  expect(d + " --reference_dtype fp8", 2, "--reference_dtype");
  expect(d + " --push_to_hub", 2, "--push_to_hub: not supported");
  expect(d + " --betadpo 10", 2, "did you mean --beta_dpo?");
  expect("--dataset_name kashif/pickascore", 2, "convert_hf_dataset.py");
  expect(d + " --prior_generation_precision fp16 --max_train_steps 1", 0, "--prior_generation_precision: no effect");
  // A label outside {0, 0.5, 1} in every row: the run stops naming the label and the dataset.
  auto rows = testing::read_file(data / "metadata.jsonl");
  for (std::size_t at = rows.find("\"label_0\":"); at != std::string::npos; at = rows.find("\"label_0\":", at + 1)) {
    const auto end = rows.find_first_of(",}", at);
    rows.replace(at, end - at, "\"label_0\":0.3");
  }
  testing::write_file(data / "metadata.jsonl", rows);
  expect(d, 1, "label column 'label_0' is 0.3, not 0, 0.5 or 1");
  // A missing jpg_1 file is skipped and named; every one missing stops the run.
  const auto good = make_dpo_data(tmp / "good", 30, 0);
  fs::remove(good / "images/000000004_1.png");
  expect(" --dataset_name " + good.string() + " --max_train_steps 15", 0, "000000004_1.png");  // one epoch
  {
    const auto [rc, log] = testing::run_command(app() + " --help");
    EXPECT_EQ(rc, 0);
    EXPECT_NE(log.find("--beta_dpo"), std::string::npos);
    EXPECT_NE(log.find("--ref_update_rate"), std::string::npos);
  }
}

}  // namespace
}  // namespace lisadiff
