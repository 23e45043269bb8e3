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
  const int steps = 10, accumulation = 2, batch = 2, resolution = 32, seed = 7, rank = 4;
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
  const double lr = lora ? 5e-3 : 1e-3;
  nlohmann::json settings = {{"steps", steps}, {"accumulation", accumulation}, {"learning_rate", lr},
                             {"lr_scheduler", "cosine"}, {"lr_warmup_steps", 2}, {"max_grad_norm", 0.05},
                             {"adam_beta1", 0.9}, {"adam_beta2", 0.999}, {"adam_weight_decay", 1e-2},
                             {"adam_epsilon", 1e-8}, {"noise_offset", noise_offset},
                             {"input_perturbation", perturbation}, {"snr_gamma", snr_gamma},
                             {"use_ema", !lora}, {"lora_rank", rank}, {"texts", texts}};

  models::LoadOptions frozen;
  frozen.frozen = true;
  auto tokenizer = models::CLIPTokenizer::from_folder(base / "tokenizer");
  auto text_encoder = models::load_clip_text(base / "text_encoder", frozen);
  auto vae = models::load_vae(base / "vae", frozen);
  const auto schedule = schedulers::DDPMNoiseSchedule::from_pretrained(base / "scheduler");
  auto unet = models::load_unet(base / "unet");
  torch::manual_seed(seed);
  train::TrainerOptions o;
  o.method = method;
  o.lisa.n_active = 6;
  o.lisa.interval = 3;
  o.lisa.seed = 11;
  o.lora.rank = rank;
  o.lora.alpha = rank;
  o.lora.init = "gaussian";
  o.output_dir = tmp / "run";
  o.max_train_steps = steps;
  o.gradient_accumulation_steps = accumulation;
  o.schedule.type = train::LrScheduleType::kCosine;
  o.schedule.base_lr = lr;
  o.schedule.warmup_steps = 2;
  o.max_grad_norm = 0.05;
  o.use_ema = !lora;
  o.checkpointing_steps = 1000;
  o.report_to = "none";
  train::Trainer trainer(train::trained_unet(unet), o);
  if (lora) {
    for (const auto& [name, t] : trainer.trainable()) inputs.emplace_back("init." + name, t.detach().clone());
  }
  fs::create_directories(tmp / "inputs");
  io::write_safetensors(tmp / "inputs/inputs.safetensors", inputs);

  recipes::TextToImageModels m;
  m.tokenizer = &tokenizer;
  m.text_encoder = text_encoder;
  m.vae = vae;
  m.unet = unet;
  m.schedule = &schedule;
  m.prediction_type = schedule.config().prediction_type;
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

  settings["method"] = train::method_name(method);
  settings["sets"] = sets;
  testing::write_file(tmp / "inputs/settings.json", settings.dump());
  const auto [rc, log] = testing::run_reference("t2i_reference.py", base, tmp / "inputs", tmp / "ref.safetensors");
  ASSERT_EQ(rc, 0) << log;
  const io::SafetensorsReader ref(tmp / "ref.safetensors");

  // Losses: the forward passes agree to float32 rounding; later steps inherit the weights'
  // differences.
  const auto ref_losses = ref.tensor("losses");
  ASSERT_EQ(static_cast<int64_t>(losses.size()), ref_losses.size(0));
  for (std::size_t i = 0; i < losses.size(); ++i) {
    EXPECT_NEAR(losses[i], ref_losses[i].item<double>(), 1e-5 * std::abs(losses[i]) + 1e-6) << "micro-batch " << i;
  }
  // Trained tensors: AdamW divides by sqrt(v), so a gradient that differs in the 7th digit
  // moves a weight by up to lr times that relative difference per step (LoRA's lr is 5x).
  const std::string prefix = lora ? "lora." : "unet.";
  const double atol = lora ? 5e-5 : 1e-5;
  for (const auto& [name, value] : trainer.trainable()) {
    EXPECT_TRUE(testing::close_tensor(prefix + name, value, ref.tensor(prefix + name), atol, 1e-4));
  }
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
