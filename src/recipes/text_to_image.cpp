#include "recipes/text_to_image.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "data/dataset.h"
#include "data/loader.h"
#include "pipelines/validation.h"
#include "recipes/common.h"
#include "recipes/shared_flags.h"

namespace lisadiff::recipes {

namespace fs = std::filesystem;
using config::Json;

namespace {

constexpr const char* kTextToImage = "Text to image";

}  // namespace

FlagTable text_to_image_flags() {
  FlagTable t("text_to_image",
              "Text-to-image fine-tuning of a Stable Diffusion UNet (diffusers' train_text_to_image.py), trained by "
              "LISA (default), full fine-tuning or LoRA. docs/recipes/text_to_image.md");
  add_model_flags(t);
  add_folder_dataset_flags(t);
  t.add(flag_group::kData, "image_column", FlagType::kString, "image", "column of the image");
  t.add(flag_group::kData, "caption_column", FlagType::kString, "text", "column of the caption (a list: one drawn per step)");
  t.add(flag_group::kData, "resolution", FlagType::kInt, 512, "the shorter side is resized to this, then cropped square");
  t.add(flag_group::kData, "center_crop", FlagType::kSwitch, false, "center crop (default: random crop)");
  t.add(flag_group::kData, "random_flip", FlagType::kSwitch, false, "random horizontal flip");
  t.add(flag_group::kData, "image_interpolation_mode", FlagType::kString, "lanczos", "the resize filter (Pillow's)")
      .choices = {"bicubic", "bilinear", "box", "hamming", "lanczos", "nearest", "nearest_exact"};

  t.add(flag_group::kValidation, "validation_prompts", FlagType::kStrings, nullptr, "prompts generated at every validation");
  t.add(flag_group::kValidation, "validation_epochs", FlagType::kInt, 5, "validate at the end of every this many epochs");

  add_training_flags(t);
  t.set_default("output_dir", "sd-model-finetuned");
  t.add("Logging", "tracker_project_name", FlagType::kString, "text2image-fine-tune",
        "TensorBoard subfolder of logging_dir (accelerate's tracker project)");
  t.add(kTextToImage, "input_perturbation", FlagType::kFloat, 0.0, "scale of the input perturbation (recommended 0.1)");
  t.add(kTextToImage, "noise_offset", FlagType::kFloat, 0.0, "scale of the noise offset");
  t.add(kTextToImage, "snr_gamma", FlagType::kFloat, nullptr, "min-SNR weighting gamma (recommended 5.0); none: plain MSE");
  t.add(kTextToImage, "prediction_type", FlagType::kString, nullptr,
        "epsilon or v_prediction; none: the scheduler's prediction_type");
  t.add(kTextToImage, "dream_training", FlagType::kSwitch, false, "DREAM (Diffusion Rectification and Estimation-Adaptive Models)");
  t.add(kTextToImage, "dream_detail_preservation", FlagType::kFloat, 1.0, "DREAM's detail preservation p");
  t.add(kTextToImage, "use_ema", FlagType::kSwitch, false, "keep an EMA of the UNet (validation and the result use it)");
  t.add(kTextToImage, "offload_ema", FlagType::kSwitch, false, "keep the EMA on the CPU");
  t.set_handling("offload_ema", Handling::kNote, "no effect: lisadiff keeps the EMA beside the weights it averages");
  t.add(kTextToImage, "foreach_ema", FlagType::kSwitch, false, "foreach EMA update");
  t.set_handling("foreach_ema", Handling::kNote, "no effect: lisadiff's EMA update is its own");
  add_method_flags(t, "lisa");
  add_rank_alias_flag(t);
  return t;
}

torch::Tensor min_snr_weights(const schedulers::DDPMNoiseSchedule& schedule, const torch::Tensor& timesteps,
                              double gamma, const std::string& prediction_type) {
  // diffusers' compute_snr, in float32: (sqrt(a) / sqrt(1 - a))^2.
  const auto a = schedule.alphas_cumprod().to(timesteps.device());
  const auto alpha = a.pow(0.5).index({timesteps}).to(torch::kFloat32);
  const auto sigma = (1.0 - a).pow(0.5).index({timesteps}).to(torch::kFloat32);
  const auto snr = (alpha / sigma).pow(2);
  // The script: stack([snr, gamma * ones_like(timesteps)]).min(dim=1), gamma times an int64
  // tensor being float32.
  const auto capped = torch::stack({snr, torch::full_like(snr, static_cast<float>(gamma))}, 1).amin(1);
  if (prediction_type == "epsilon") return capped / snr;
  if (prediction_type == "v_prediction") return capped / (snr + 1);
  throw Error(fmt::format("text_to_image: prediction_type '{}' is not epsilon or v_prediction", prediction_type));
}

train::MicroResult text_to_image_step(TextToImageModels& m, const data::Batch& batch, const TextToImageDraws& draws) {
  if (batch.images.size() != 1) throw Error("text_to_image: a batch needs one image per example");
  const auto pixels = batch.images[0].to(m.device, m.weight_dtype);
  const int64_t bsz = pixels.size(0);
  torch::Tensor latents, noise, timesteps, noisy, embeds, target;
  {
    torch::NoGradGuard no_grad;
    const auto dist = m.vae->encode(pixels);
    latents = (draws.latent_noise.defined() ? dist.sample_with(draws.latent_noise.to(dist.mean.options()))
                                            : dist.sample()) *
              m.vae->config.scaling_factor;
    noise = draws.noise.defined() ? draws.noise.to(latents.options()) : torch::randn(latents.sizes(), latents.options());
    if (m.noise_offset != 0) {
      const auto offset = draws.offset_noise.defined()
                              ? draws.offset_noise.to(latents.options())
                              : torch::randn({latents.size(0), latents.size(1), 1, 1}, latents.options());
      noise = noise + m.noise_offset * offset;
    }
    torch::Tensor noise_in = noise;
    if (m.input_perturbation != 0) {
      const auto p = draws.perturbation.defined() ? draws.perturbation.to(latents.options())
                                                  : torch::randn(noise.sizes(), noise.options());
      noise_in = noise + m.input_perturbation * p;
    }
    timesteps = draws.timesteps.defined()
                    ? draws.timesteps.to(m.device, torch::kLong)
                    : torch::randint(0, m.schedule->num_train_timesteps(), {bsz},
                                     torch::TensorOptions().dtype(torch::kLong).device(m.device));
    noisy = m.schedule->add_noise(latents, noise_in, timesteps);
    embeds = m.text_encoder->forward(m.tokenizer->tokenize(batch.texts).input_ids.to(m.device)).last_hidden_state;
    if (m.prediction_type == "epsilon") {
      target = noise;
    } else if (m.prediction_type == "v_prediction") {
      target = m.schedule->get_velocity(latents, noise, timesteps);
    } else {
      throw Error(fmt::format("text_to_image: prediction_type '{}' is not epsilon or v_prediction", m.prediction_type));
    }
    if (m.dream_training) {
      // diffusers' compute_dream_and_update_latents: the model's own prediction, without
      // gradient, moves the noisy latents and the target by (1 - a)^(p / 2) of its error.
      if (m.prediction_type != "epsilon") throw Error("text_to_image: --dream_training supports epsilon prediction only");
      const auto a = m.schedule->alphas_cumprod().to(m.device).index({timesteps}).view({bsz, 1, 1, 1});
      const auto sqrt_one_minus = (1.0 - a).pow(0.5);
      const auto lambda = sqrt_one_minus.pow(m.dream_detail_preservation);
      const auto pred = m.unet->forward(noisy, timesteps, embeds);
      const auto delta = (noise - pred).mul(lambda);
      noisy = noisy + sqrt_one_minus * delta;
      target = target + delta;
    }
  }
  const auto pred = m.unet->forward(noisy, timesteps, embeds).to(torch::kFloat32);
  train::MicroResult result;
  if (!m.snr_gamma) {
    result.loss = torch::mse_loss(pred, target.to(torch::kFloat32));
  } else {
    const auto weights = min_snr_weights(*m.schedule, timesteps, *m.snr_gamma, m.prediction_type);
    const auto per_sample = (pred - target.to(torch::kFloat32)).pow(2).mean({1, 2, 3});
    result.loss = (per_sample * weights).mean();
  }
  result.end_of_epoch = batch.end_of_epoch;
  return result;
}

namespace {

struct TextToImageSettings : CommonSettings {
  std::optional<std::vector<std::string>> validation_prompts;
  int validation_epochs = 5;
  double input_perturbation = 0, noise_offset = 0;
  std::optional<double> snr_gamma;
  std::optional<std::string> prediction_type;
  bool dream_training = false;
  double dream_detail_preservation = 1.0;
};

TextToImageSettings read_text_to_image_settings(config::FieldReader& r) {
  TextToImageSettings s;
  static_cast<CommonSettings&>(s) = read_common_settings(r);
  r("validation_prompts", s.validation_prompts);
  r("validation_epochs", s.validation_epochs);
  r("input_perturbation", s.input_perturbation);
  r("noise_offset", s.noise_offset);
  r("snr_gamma", s.snr_gamma);
  r("prediction_type", s.prediction_type);
  r("dream_training", s.dream_training);
  r("dream_detail_preservation", s.dream_detail_preservation);
  if (s.validation_epochs < 1) throw UsageError("--validation_epochs must be at least 1");
  if (s.input_perturbation < 0) throw UsageError("--input_perturbation must be at least 0");
  if (s.snr_gamma && !(*s.snr_gamma > 0)) throw UsageError(fmt::format("--snr_gamma must be positive, got {}", *s.snr_gamma));
  if (s.prediction_type && *s.prediction_type != "epsilon" && *s.prediction_type != "v_prediction") {
    throw UsageError(fmt::format("--prediction_type must be epsilon or v_prediction, got '{}'", *s.prediction_type));
  }
  return s;
}

}  // namespace

void run_text_to_image(const ParsedArgs& parsed) {
  const auto table = text_to_image_flags();
  auto run = start_run(table, parsed);
  auto& values = run.values;
  const auto& source = run.source;
  merge_rank_alias(parsed, values);
  config::FieldReader reader(values, source);
  const auto settings = reading_values([&] { return read_text_to_image_settings(reader); });
  check_resolution(values);
  auto data_options = data::DataOptions::for_text_to_image();
  reading_values([&] { data_options.read(reader); });  // validates too
  const torch::Device device = training_device(settings.allow_tf32);
  const auto dist = join_process_group(data_options, device);
  data::DataLoader loader(data_options);
  derive_step_count(values, reader, loader.batches_per_epoch(), data_options.world_size);
  auto options = reading_values([&] { return train::TrainerOptions::read(reader); });
  options.recipe = "text_to_image";
  options.group = dist.group;
  options.main_process = dist.env.rank == 0;
  finish_reading(table, reader);

  const auto weight_dtype = weight_dtype_of(options.mixed_precision);
  const auto frozen = frozen_load_options(weight_dtype, device);
  auto tokenizer = models::CLIPTokenizer::from_folder(run.base / "tokenizer");
  auto text_encoder = models::load_clip_text(run.base / "text_encoder", frozen, settings.variant);
  auto vae = models::load_vae(run.base / "vae", frozen, settings.variant);
  const auto schedule = schedulers::DDPMNoiseSchedule::from_pretrained(run.base / "scheduler");
  models::LoadOptions trained;
  trained.device = device;
  trained.map_file = options.method == train::TrainMethod::kLora && device.is_cpu();
  auto unet = models::load_unet(run.base / "unet", trained, settings.variant);
  text_encoder->eval();
  vae->eval();

  torch::manual_seed(static_cast<uint64_t>(settings.seed));  // the LoRA adapters' init comes next
  train::Trainer trainer(train::trained_unet(unet), options);
  trainer.add_state(loader_state_part(loader));

  std::optional<pipelines::Validator> validator;
  pipelines::ValidationSpec spec;
  if (settings.validation_prompts && !settings.validation_prompts->empty()) {
    validator.emplace(pipelines::components_for_validation(run.base, tokenizer, text_encoder, vae), trainer);
    spec.prompts = *settings.validation_prompts;
    spec.num_inference_steps = 20;
    spec.guidance_scale = 7.5;
    spec.seed = static_cast<uint64_t>(settings.seed);
    spec.use_ema = options.use_ema;
  }
  trainer.resume();

  TextToImageModels m;
  m.tokenizer = &tokenizer;
  m.text_encoder = text_encoder;
  m.vae = vae;
  m.unet = unet;
  m.schedule = &schedule;
  m.prediction_type = settings.prediction_type.value_or(schedule.config().prediction_type);
  m.noise_offset = settings.noise_offset;
  m.input_perturbation = settings.input_perturbation;
  m.snr_gamma = settings.snr_gamma;
  m.dream_training = settings.dream_training;
  m.dream_detail_preservation = settings.dream_detail_preservation;
  m.device = device;
  m.weight_dtype = weight_dtype;
  int64_t epoch_done = -1;
  trainer.train(
      [&](const train::MicroBatch&) {
        const auto batch = loader.next();
        if (batch.end_of_epoch) epoch_done = batch.epoch;
        return text_to_image_step(m, batch);
      },
      [&](int64_t step) {
        // The script validates at the end of every epoch with epoch % validation_epochs == 0.
        if (!validator || epoch_done < 0) return;
        const int64_t epoch = epoch_done;
        epoch_done = -1;
        if (epoch % settings.validation_epochs == 0) validator->run(step, unet, spec);
      });
  trainer.save_final();
  if (validator) {
    // The script's final images, with the weights it saves (the EMA's, copied in by save_final).
    auto final_spec = spec;
    final_spec.name = "final";
    final_spec.use_ema = false;
    validator->run(trainer.global_step(), unet, final_spec);
  }
  if (!options.main_process) return;
  if (trainer.lora()) {
    auto merged = trainer.lora()->merged(train::named_parameters(*unet));
    for (auto& [name, t] : merged) t = t.detach().to(torch::kFloat32);
    models::save_unet(unet->config, merged, options.output_dir / "unet");
  }
  complete_pipeline_folder(run.base, options.output_dir, {"unet"}, "StableDiffusionPipeline");
  spdlog::info("wrote the text-to-image pipeline to {}", options.output_dir.string());
}

}  // namespace lisadiff::recipes
