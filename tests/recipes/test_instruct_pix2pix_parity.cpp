// The instruct_pix2pix recipe against a Python reference of the script's training loop
// (scripts/ip2p_reference.py: diffusers components, torch AdamW, clip_grad_norm_,
// get_scheduler, EMAModel), fed the same stored random draws: 10 optimizer steps of the full
// (classic) method, and of LISA with the sets lisadiff drew (re-draws every 3 steps), on the
// micro pipeline with the conv_in surgery, gradient accumulation 2,
// conditioning dropout on (every region hit) and EMA: the loss of every micro-batch, the final
// weights and the EMA shadows. Label python (it runs the venv's Python).
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include "data/loader.h"
#include "io/safetensors.h"
#include "recipes/instruct_pix2pix.h"
#include "recipes/recipe_parity.h"
#include "test_util.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;
using testing::fixtures_dir;

class InstructPix2PixMethodParity : public ::testing::TestWithParam<train::TrainMethod> {};

TEST_P(InstructPix2PixMethodParity, TenStepsEqualThePythonReference) {
  const auto method = GetParam();
  testing::TempDir tmp;
  const auto base = fixtures_dir() / "pipelines/micro-sd";
  const testing::ParityLoop loop;
  const int steps = loop.steps, accumulation = loop.accumulation, batch = 2, resolution = 32;
  const int seed = 7;
  const double p = 0.25;
  const std::vector<std::string> prompts = {"make it blue", "turn the circle into a square", "add a red border",
                                            "make the background green", ""};

  // The stored draws: images, VAE sample noise, noise, timesteps, dropout uniforms.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  io::NamedTensors inputs;
  std::vector<data::Batch> batches;
  std::vector<recipes::InstructPix2PixDraws> draws;
  nlohmann::json texts = nlohmann::json::array();
  const int64_t latent = resolution / 2;  // micro-sd's VAE halves the size
  for (int i = 0; i < steps * accumulation; ++i) {
    data::Batch b;
    b.images = {at::rand({batch, 3, resolution, resolution}, gen) * 2 - 1,
                at::rand({batch, 3, resolution, resolution}, gen) * 2 - 1};
    nlohmann::json t = nlohmann::json::array();
    for (int k = 0; k < batch; ++k) {
      b.texts.push_back(prompts[(i * batch + k) % prompts.size()]);
      t.push_back(b.texts.back());
    }
    texts.push_back(t);
    recipes::InstructPix2PixDraws d;
    d.latent_noise = at::randn({batch, 4, latent, latent}, gen);
    d.noise = at::randn({batch, 4, latent, latent}, gen);
    d.timesteps = at::randint(0, 1000, {batch}, gen);
    d.dropout_r = at::rand({batch}, gen) * 0.9;  // every region of r for p = 0.25, and none
    const auto n = std::to_string(i);
    inputs.emplace_back("original." + n, b.images[0]);
    inputs.emplace_back("edited." + n, b.images[1]);
    inputs.emplace_back("latent_noise." + n, d.latent_noise);
    inputs.emplace_back("noise." + n, d.noise);
    inputs.emplace_back("timesteps." + n, d.timesteps);
    inputs.emplace_back("dropout_r." + n, d.dropout_r);
    batches.push_back(std::move(b));
    draws.push_back(d);
  }
  fs::create_directories(tmp / "inputs");
  io::write_safetensors(tmp / "inputs/inputs.safetensors", inputs);
  auto settings = testing::parity_settings(loop);
  settings.update({{"dropout_prob", p}, {"use_ema", true}, {"seed", seed}, {"texts", texts}});

  // lisadiff: the recipe's models and step, the Trainer's full classic step.
  auto parts = testing::load_frozen_parts(base);
  auto unet = models::load_unet(base / "unet");
  torch::manual_seed(seed);
  ASSERT_TRUE(recipes::widen_conv_in(unet, 8, false));
  auto o = testing::parity_trainer_options(method, loop, tmp / "run");
  o.use_ema = true;
  train::Trainer trainer(train::trained_unet(unet), o);
  recipes::InstructPix2PixModels m;
  m.tokenizer = &parts.tokenizer;
  m.text_encoder = parts.text_encoder;
  m.vae = parts.vae;
  m.unet = unet;
  m.schedule = &parts.schedule;
  m.dropout_prob = p;
  {
    torch::NoGradGuard no_grad;
    m.null_embedding = parts.text_encoder->forward(parts.tokenizer.tokenize({""}).input_ids).last_hidden_state;
  }
  auto unused = at::make_generator<at::CPUGeneratorImpl>(0);
  std::vector<double> losses;
  nlohmann::json sets = nlohmann::json::array();  // LISA: the active names of every step
  trainer.train([&](const train::MicroBatch& mb) {
    if (trainer.lisa() && mb.index == 0) sets.push_back(trainer.lisa()->active_names());
    auto r = recipes::instruct_pix2pix_step(m, batches.at(mb.count), unused, draws.at(mb.count));
    losses.push_back(r.loss.item<double>());
    return r;
  });

  // The Python reference, told the method and (LISA) the sets that trained.
  const auto ref = testing::run_parity_reference("ip2p_reference.py", base, tmp / "inputs", settings, method, sets);

  // Losses: the forward passes agree to float32 rounding (the UNet and VAE equal diffusers to
  // ~1e-6 relative); later steps inherit the weights' differences.
  testing::expect_per_micro_batch("loss", losses, ref.tensor("losses"), 1e-5, 1e-6);
  // Weights and EMA shadows: AdamW divides by sqrt(v), so a gradient that differs in the
  // 7th digit moves a weight by up to lr times that relative difference per step; 10 steps
  // at lr <= 1e-3 stay far below 1e-5.
  testing::expect_trained_equal(trainer, ref, "unet.", 1e-5, 1e-4);
  for (const auto& [name, shadow] : trainer.ema()->shadows()) {
    EXPECT_TRUE(testing::close_tensor("ema." + name, shadow, ref.tensor("ema." + name), 1e-5, 1e-4));
  }
  // The run really trained: the last tensor (always on under LISA) moved.
  const auto start = models::load_unet(base / "unet");
  EXPECT_FALSE(testing::same_tensor(trainer.trainable().back().second, start->named_parameters().pairs().back().second));
  if (method == train::TrainMethod::kLisa) {
    EXPECT_NE(sets.front(), sets.back());  // re-draws happened
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, InstructPix2PixMethodParity,
                         ::testing::Values(train::TrainMethod::kFull, train::TrainMethod::kLisa),
                         [](const auto& info) { return train::method_name(info.param); });

// What the executable writes is a pipeline diffusers' StableDiffusionInstructPix2PixPipeline
// loads and runs, with the 8-channel UNet lisadiff trained.
TEST(InstructPix2PixParity, DiffusersLoadsAndRunsTheSavedPipeline) {
  testing::TempDir tmp;
  const auto app = fs::path(testing::cli_path()).parent_path() / "instruct_pix2pix";
  const auto data = tmp / "data";
  ASSERT_EQ(testing::run_command(testing::cli_path() + " make-dataset --kind ip2p --format folder --n 4 --size 32 --out " +
                                 data.string() + " 2>&1").first,
            0);
  const auto out = tmp / "out";
  const auto [rc, log] = testing::run_command(app.string() + " --pretrained_model_name_or_path " +
                                              (fixtures_dir() / "pipelines/micro-sd").string() + " --dataset_name " +
                                              data.string() + " --resolution 32 --train_batch_size 2 --max_train_steps 2"
                                              " --seed 0 --output_dir " + out.string() + " 2>&1");
  ASSERT_EQ(rc, 0) << log;
  const std::string script =
      "import sys, torch, numpy as np\n"
      "from PIL import Image\n"
      "from diffusers import StableDiffusionInstructPix2PixPipeline\n"
      "pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(sys.argv[1], safety_checker=None)\n"
      "assert pipe.unet.config.in_channels == 8, pipe.unet.config.in_channels\n"
      "img = Image.open(sys.argv[2]).convert('RGB')\n"
      "out = pipe('make it blue', image=img, num_inference_steps=2, generator=torch.Generator().manual_seed(0), "
      "output_type='np').images\n"
      "assert out.shape == (1, img.height, img.width, 3) and np.isfinite(out).all(), out.shape\n"
      "print('ok', out.shape)\n";
  testing::write_file(tmp / "load.py", script);
  const auto [prc, plog] = testing::run_command(testing::test_python() + " " + (tmp / "load.py").string() + " " +
                                                out.string() + " " + (fixtures_dir() / "inference/source.png").string() +
                                                " 2>&1");
  EXPECT_EQ(prc, 0) << plog;
  EXPECT_NE(plog.find("ok (1,"), std::string::npos) << plog;
}

}  // namespace
}  // namespace lisadiff
