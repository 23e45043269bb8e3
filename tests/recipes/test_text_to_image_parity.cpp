// The text_to_image recipe against a Python reference of the script's training loop
// (scripts/t2i_reference.py: diffusers components, compute_snr, torch AdamW, clip_grad_norm_,
// get_scheduler, EMAModel, peft LoRA), fed the same stored random draws: 10 optimizer steps
// with gradient accumulation 2 on the micro pipeline with noise offset, input perturbation and
// min-SNR weighting, for full (the script's classic step, with EMA), LISA (the sets lisadiff
// drew) and LoRA: the loss of every micro-batch, the trained tensors and the EMA. Label python.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include "data/loader.h"
#include "io/safetensors.h"
#include "recipes/recipe_parity.h"
#include "recipes/text_to_image.h"
#include "test_util.h"

namespace lisadiff {
namespace {

namespace fs = std::filesystem;

class TextToImageParity : public ::testing::TestWithParam<train::TrainMethod> {};

TEST_P(TextToImageParity, TenStepsEqualThePythonReference) {
  const auto method = GetParam();
  const bool lora = method == train::TrainMethod::kLora;
  testing::TempDir tmp;
  const auto base = testing::fixtures_dir() / "pipelines/micro-sd";
  const int batch = 2, resolution = 32, seed = 7, rank = 4;
  testing::ParityLoop loop;
  loop.lr = lora ? 5e-3 : 1e-3;
  const int steps = loop.steps, accumulation = loop.accumulation;
  const double noise_offset = 0.05, perturbation = 0.1, snr_gamma = 5.0;
  const std::vector<std::string> prompts = {"a red circle", "a blue square on a green background", "a cat", ""};

  auto gen = at::make_generator<at::CPUGeneratorImpl>(2468);
  io::NamedTensors inputs;
  std::vector<data::Batch> batches;
  std::vector<recipes::TextToImageDraws> draws;
  nlohmann::json texts = nlohmann::json::array();
  const int64_t latent = resolution / 2;  // micro-sd's VAE halves the size
  for (int i = 0; i < steps * accumulation; ++i) {
    data::Batch b;
    b.images = {at::rand({batch, 3, resolution, resolution}, gen) * 2 - 1};
    nlohmann::json t = nlohmann::json::array();
    for (int k = 0; k < batch; ++k) {
      b.keys.push_back(std::to_string(i * batch + k));
      b.texts.push_back(prompts[(i * batch + k) % prompts.size()]);
      t.push_back(b.texts.back());
    }
    texts.push_back(t);
    recipes::TextToImageDraws d;
    d.latent_noise = at::randn({batch, 4, latent, latent}, gen);
    d.noise = at::randn({batch, 4, latent, latent}, gen);
    d.offset_noise = at::randn({batch, 4, 1, 1}, gen);
    d.perturbation = at::randn({batch, 4, latent, latent}, gen);
    // Both ends of the schedule (min-SNR caps the low timesteps' weight) and random ones.
    d.timesteps = i == 0 ? torch::tensor({0, 999}, torch::kLong) : at::randint(0, 1000, {batch}, gen);
    const auto n = std::to_string(i);
    inputs.emplace_back("images." + n, b.images[0]);
    inputs.emplace_back("latent_noise." + n, d.latent_noise);
    inputs.emplace_back("noise." + n, d.noise);
    inputs.emplace_back("offset_noise." + n, d.offset_noise);
    inputs.emplace_back("perturbation." + n, d.perturbation);
    inputs.emplace_back("timesteps." + n, d.timesteps);
    batches.push_back(std::move(b));
    draws.push_back(d);
  }
  auto settings = testing::parity_settings(loop);
  settings.update({{"noise_offset", noise_offset}, {"input_perturbation", perturbation}, {"snr_gamma", snr_gamma},
                   {"use_ema", !lora}, {"lora_rank", rank}, {"texts", texts}});

  auto parts = testing::load_frozen_parts(base);
  auto unet = models::load_unet(base / "unet");
  torch::manual_seed(seed);
  auto o = testing::parity_trainer_options(method, loop, tmp / "run");
  o.lora.rank = rank;
  o.lora.alpha = rank;
  o.lora.init = "gaussian";
  o.use_ema = !lora;
  train::Trainer trainer(train::trained_unet(unet), o);
  if (lora) {
    for (const auto& [name, t] : trainer.trainable()) inputs.emplace_back("init." + name, t.detach().clone());
  }
  fs::create_directories(tmp / "inputs");
  io::write_safetensors(tmp / "inputs/inputs.safetensors", inputs);

  recipes::TextToImageModels m;
  m.tokenizer = &parts.tokenizer;
  m.text_encoder = parts.text_encoder;
  m.vae = parts.vae;
  m.unet = unet;
  m.schedule = &parts.schedule;
  m.prediction_type = parts.schedule.config().prediction_type;
  m.noise_offset = noise_offset;
  m.input_perturbation = perturbation;
  m.snr_gamma = snr_gamma;
  std::vector<double> losses;
  nlohmann::json sets = nlohmann::json::array();
  trainer.train([&](const train::MicroBatch& mb) {
    if (trainer.lisa() && mb.index == 0) sets.push_back(trainer.lisa()->active_names());
    auto r = recipes::text_to_image_step(m, batches.at(mb.count), draws.at(mb.count));
    losses.push_back(r.loss.item<double>());
    return r;
  });

  const auto ref = testing::run_parity_reference("t2i_reference.py", base, tmp / "inputs", settings, method, sets);

  // Losses: the forward passes agree to float32 rounding; later steps inherit the weights'
  // differences.
  testing::expect_per_micro_batch("loss", losses, ref.tensor("losses"), 1e-5, 1e-6);
  // Trained tensors: AdamW divides by sqrt(v), so a gradient that differs in the 7th digit
  // moves a weight by up to lr times that relative difference per step (LoRA's lr is 5x).
  const std::string prefix = lora ? "lora." : "unet.";
  testing::expect_trained_equal(trainer, ref, prefix, lora ? 5e-5 : 1e-5, 1e-4);
  if (!lora) {
    for (const auto& [name, shadow] : trainer.ema()->shadows()) {
      EXPECT_TRUE(testing::close_tensor("ema." + name, shadow, ref.tensor("ema." + name), 1e-5, 1e-4));
    }
  }
  if (method == train::TrainMethod::kLisa) EXPECT_NE(sets.front(), sets.back());
}

INSTANTIATE_TEST_SUITE_P(Methods, TextToImageParity,
                         ::testing::Values(train::TrainMethod::kFull, train::TrainMethod::kLisa,
                                           train::TrainMethod::kLora),
                         [](const auto& info) { return train::method_name(info.param); });

}  // namespace
}  // namespace lisadiff
