#include "recipes/instruct_pix2pix.h"

#include <cmath>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "data/dataset.h"
#include "data/image.h"
#include "data/loader.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "pipelines/validation.h"
#include "recipes/common.h"
#include "recipes/shared_flags.h"

namespace lisadiff::recipes {

namespace fs = std::filesystem;
using config::Json;

namespace {

constexpr const char* kPix2Pix = "InstructPix2Pix";

}  // namespace

FlagTable instruct_pix2pix_flags() {
  FlagTable t("instruct_pix2pix",
              "InstructPix2Pix fine-tuning of a Stable Diffusion UNet (diffusers' train_instruct_pix2pix.py), "
              "trained by LISA (default), full fine-tuning or LoRA. docs/recipes/instruct_pix2pix.md");
  add_model_flags(t);
  add_folder_dataset_flags(t);
  t.add(flag_group::kData, "original_image_column", FlagType::kString, "input_image", "column of the source image");
  t.add(flag_group::kData, "edited_image_column", FlagType::kString, "edited_image", "column of the edited image");
  t.add(flag_group::kData, "edit_prompt_column", FlagType::kString, "edit_prompt", "column of the edit instruction");
  t.add(flag_group::kData, "resolution", FlagType::kInt, 256, "images are resized to resolution x resolution");
  t.add(flag_group::kData, "center_crop", FlagType::kSwitch, false, "center crop (a no-op after the square resize)");
  t.add(flag_group::kData, "random_flip", FlagType::kSwitch, false, "random horizontal flip, the same for both images of a pair");

  t.add(flag_group::kValidation, "val_image_url", FlagType::kString, nullptr, "the source image of validation edits (a local path or file:// URL)");
  t.add(flag_group::kValidation, "validation_prompt", FlagType::kString, nullptr, "the validation edit instruction");
  t.add(flag_group::kValidation, "num_validation_images", FlagType::kInt, 4, "edits per validation");
  t.add(flag_group::kValidation, "validation_epochs", FlagType::kInt, 1, "validate at the end of every this many epochs");

  add_training_flags(t);
  t.set_default("output_dir", "instruct-pix2pix-model");
  t.add(kPix2Pix, "conditioning_dropout_prob", FlagType::kFloat, nullptr,
        "p: the prompt is dropped with probability 2p, the image with 2p, both with p (recommended 0.05)");
  t.add(kPix2Pix, "use_ema", FlagType::kSwitch, false, "keep an EMA of the UNet (validation and the result use it)");
  t.add(kPix2Pix, "copy_conv_in_bias", FlagType::kSwitch, false,
        "lisadiff: copy the pretrained conv_in bias into the widened conv_in (the script leaves a fresh random "
        "bias: huggingface/diffusers#4960)");
  add_method_flags(t, "lisa");
  // LoRA alone cannot learn the image: the widened conv_in's image channels start at zero.
  t.set_default("lora_modules_to_save", Json::array({"conv_in"}));
  return t;
}

bool widen_conv_in(models::UNet2DConditionModel& unet, int64_t in_channels, bool copy_bias) {
  auto& old = unet->conv_in;
  const int64_t have = old->options.in_channels();
  if (have == in_channels) return false;
  if (have > in_channels) {
    throw Error(fmt::format("the UNet takes {} input channels; InstructPix2Pix widens conv_in to {}, not less", have,
                            in_channels));
  }
  torch::NoGradGuard no_grad;
  const auto& was = old->options;
  torch::nn::Conv2dOptions options(in_channels, was.out_channels(), was.kernel_size());
  options.stride(was.stride()).padding(was.padding()).dilation(was.dilation()).groups(was.groups()).bias(was.bias());
  // A fresh Conv2d, initialised as PyTorch's (weight then bias from the global generator).
  torch::nn::Conv2d widened(options);
  widened->to(old->weight.device(), old->weight.scalar_type());
  widened->weight.zero_();
  widened->weight.slice(1, 0, have).copy_(old->weight);
  if (copy_bias) widened->bias.copy_(old->bias);
  widened->weight.set_requires_grad(old->weight.requires_grad());
  widened->bias.set_requires_grad(old->bias.requires_grad());
  unet->replace_module("conv_in", widened);
  unet->conv_in = widened;
  unet->config.in_channels = static_cast<int>(in_channels);
  return true;
}

DropoutMasks conditioning_dropout(const torch::Tensor& r, double p) {
  return {r < 2 * p, (r >= p).logical_and(r < 3 * p)};
}

train::MicroResult instruct_pix2pix_step(InstructPix2PixModels& m, const data::Batch& batch,
                                         at::Generator& dropout_generator, const InstructPix2PixDraws& draws) {
  if (batch.images.size() != 2) throw Error("instruct_pix2pix: a batch needs the original and the edited images");
  const auto original = batch.images[0].to(m.device, m.weight_dtype);
  const auto edited = batch.images[1].to(m.device, m.weight_dtype);
  const int64_t bsz = edited.size(0);
  torch::Tensor latents, noise, timesteps, noisy, embeds, image_embeds;
  {
    torch::NoGradGuard no_grad;
    const auto dist = m.vae->encode(edited);
    latents = (draws.latent_noise.defined() ? dist.sample_with(draws.latent_noise.to(dist.mean.options()))
                                            : dist.sample()) *
              m.vae->config.scaling_factor;
    // NCHW order, as torch.randn_like draws for the script's contiguous latents.
    noise = draws.noise.defined() ? draws.noise.to(latents.options()) : torch::randn(latents.sizes(), latents.options());
    timesteps = draws.timesteps.defined()
                    ? draws.timesteps.to(m.device, torch::kLong)
                    : torch::randint(0, m.schedule->num_train_timesteps(), {bsz},
                                     torch::TensorOptions().dtype(torch::kLong).device(m.device));
    noisy = m.schedule->add_noise(latents, noise, timesteps);
    embeds = m.text_encoder->forward(m.tokenizer->tokenize(batch.texts).input_ids.to(m.device)).last_hidden_state;
    image_embeds = m.vae->encode(original).mode();
  }
  if (m.dropout_prob) {
    const auto r = draws.dropout_r.defined() ? draws.dropout_r.to(torch::kFloat32)
                                             : torch::rand({bsz}, dropout_generator, torch::kFloat32);
    const auto masks = conditioning_dropout(r.to(m.device), *m.dropout_prob);
    embeds = torch::where(masks.drop_prompt.view({bsz, 1, 1}), m.null_embedding.to(embeds.dtype()), embeds);
    const auto keep_image = 1 - masks.drop_image.to(image_embeds.scalar_type());
    image_embeds = keep_image.view({bsz, 1, 1, 1}) * image_embeds;
  }
  const auto input = torch::cat({noisy, image_embeds}, /*dim=*/1);
  const auto& prediction_type = m.schedule->config().prediction_type;
  torch::Tensor target;
  if (prediction_type == "epsilon") {
    target = noise;
  } else if (prediction_type == "v_prediction") {
    target = m.schedule->get_velocity(latents, noise, timesteps);
  } else {
    throw Error(fmt::format("instruct_pix2pix: prediction_type '{}' is not epsilon or v_prediction", prediction_type));
  }
  const auto pred = m.unet->forward(input, timesteps, embeds);
  train::MicroResult result;
  result.loss = torch::mse_loss(pred.to(torch::kFloat32), target.to(torch::kFloat32));
  result.end_of_epoch = batch.end_of_epoch;
  return result;
}

namespace {

// The run's own settings, read from the values (the rest go to TrainerOptions and DataOptions).
struct Pix2PixSettings : CommonSettings {
  std::optional<std::string> val_image_url, validation_prompt;
  int num_validation_images = 4;
  int validation_epochs = 1;
  std::optional<double> conditioning_dropout_prob;
  bool copy_conv_in_bias = false;
};

Pix2PixSettings read_pix2pix_settings(config::FieldReader& r) {
  Pix2PixSettings s;
  static_cast<CommonSettings&>(s) = read_common_settings(r);
  r("val_image_url", s.val_image_url);
  r("validation_prompt", s.validation_prompt);
  r("num_validation_images", s.num_validation_images);
  r("validation_epochs", s.validation_epochs);
  r("conditioning_dropout_prob", s.conditioning_dropout_prob);
  r("copy_conv_in_bias", s.copy_conv_in_bias);
  if (s.num_validation_images < 1) throw UsageError("--num_validation_images must be at least 1");
  if (s.validation_epochs < 1) throw UsageError("--validation_epochs must be at least 1");
  if (s.conditioning_dropout_prob && !(*s.conditioning_dropout_prob >= 0 && *s.conditioning_dropout_prob <= 1.0 / 3)) {
    throw UsageError(fmt::format("--conditioning_dropout_prob must be in [0, 1/3] (r < 3p drops the image), got {}",
                                 *s.conditioning_dropout_prob));
  }
  return s;
}

}  // namespace

void run_instruct_pix2pix(const ParsedArgs& parsed) {
  const auto table = instruct_pix2pix_flags();
  auto run = start_run(table, parsed);
  auto& values = run.values;
  const auto& source = run.source;
  config::FieldReader reader(values, source);
  auto settings = reading_values([&] { return read_pix2pix_settings(reader); });
  // Validation's source image, checked before anything runs.
  torch::Tensor val_image;
  if (settings.val_image_url.has_value() != settings.validation_prompt.has_value()) {
    spdlog::warn("validation needs both --val_image_url and --validation_prompt (as the script): no validation");
  } else if (settings.val_image_url) {
    const auto path = local_file(*settings.val_image_url, "val_image_url");
    val_image = data::decode_image(io::read_file(path), path.string());
  }

  check_resolution(values);
  auto data_options = data::DataOptions::for_recipe(data::ExampleKind::kIp2p);
  reading_values([&] { data_options.read(reader); });  // validates too
  const torch::Device device = training_device(settings.allow_tf32);
  const auto dist = join_process_group(data_options, device);
  data::DataLoader loader(data_options);
  derive_step_count(values, reader, loader.batches_per_epoch(), data_options.world_size);
  auto options = reading_values([&] { return train::TrainerOptions::read(reader); });
  options.recipe = "instruct_pix2pix";
  options.group = dist.group;
  options.main_process = dist.env.rank == 0;
  if (options.method == train::TrainMethod::kLora &&
      std::find(options.lora.modules_to_save.begin(), options.lora.modules_to_save.end(), "conv_in") ==
          options.lora.modules_to_save.end()) {
    spdlog::warn("--method lora without conv_in in --lora_modules_to_save: the image channels of conv_in start at "
                 "zero and stay there, so the UNet cannot learn from the source image");
  }
  options.tracker_project_name = "instruct-pix2pix";  // the script's fixed project name
  finish_reading(table, reader);

  // Models: VAE and text encoder frozen in the weight dtype, the UNet in float32.
  const auto weight_dtype = weight_dtype_of(options.mixed_precision);
  const auto frozen = frozen_load_options(weight_dtype, device);
  auto tokenizer = models::CLIPTokenizer::from_folder(run.base / "tokenizer");
  auto text_encoder = models::load_clip_text(run.base / "text_encoder", frozen, settings.variant);
  auto vae = models::load_vae(run.base / "vae", frozen, settings.variant);
  const auto schedule = schedulers::DDPMNoiseSchedule::from_pretrained(run.base / "scheduler");
  models::LoadOptions trained;
  trained.device = device;
  auto unet = models::load_unet(run.base / "unet", trained);  // the script reads no UNet variant

  // The script seeds everything right before it builds the new conv_in, whose bias is then
  // PyTorch's first draw after the seed.
  torch::manual_seed(static_cast<uint64_t>(settings.seed));
  const int64_t in_channels = 2 * vae->config.latent_channels;
  if (widen_conv_in(unet, in_channels, settings.copy_conv_in_bias)) {
    spdlog::info("conv_in widened to {} input channels (the image latents' weights start at zero{})", in_channels,
                 settings.copy_conv_in_bias ? ", the bias copied" : "");
  }
  text_encoder->eval();
  vae->eval();

  train::Trainer trainer(train::trained_unet(unet), options);
  trainer.add_state(loader_state_part(loader));
  // Each process its own masks (rank 0's are the single-process run's).
  auto dropout_generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(settings.seed + dist.env.rank));
  trainer.add_state(train::generator_state_part("conditioning_dropout_generator", dropout_generator));

  std::optional<pipelines::Validator> validator;
  pipelines::ValidationSpec spec;
  if (val_image.defined()) {
    auto components = pipelines::components_for_validation(run.base, tokenizer, text_encoder, vae);
    const int f = components.vae_scale_factor();
    if (val_image.size(0) % f != 0 || val_image.size(1) % f != 0) {
      throw UsageError(fmt::format("--val_image_url: the image is {} x {}; validation needs sides that are multiples "
                                   "of {} (resize it first)",
                                   val_image.size(1), val_image.size(0), f));
    }
    validator.emplace(std::move(components), trainer);
    spec.prompts = {*settings.validation_prompt};
    spec.images_per_prompt = settings.num_validation_images;
    spec.num_inference_steps = 20;
    spec.guidance_scale = 7;
    spec.image_guidance_scale = 1.5;
    spec.source_image = val_image;
    spec.seed = static_cast<uint64_t>(settings.seed);
    spec.use_ema = options.use_ema;
  }
  trainer.resume();

  InstructPix2PixModels m;
  m.tokenizer = &tokenizer;
  m.text_encoder = text_encoder;
  m.vae = vae;
  m.unet = unet;
  m.schedule = &schedule;
  m.dropout_prob = settings.conditioning_dropout_prob;
  m.device = device;
  m.weight_dtype = weight_dtype;
  {
    torch::NoGradGuard no_grad;
    m.null_embedding = text_encoder->forward(tokenizer.tokenize({""}).input_ids.to(device)).last_hidden_state;
  }
  int64_t epoch_done = -1;  // the last epoch whose final batch was trained
  trainer.train(
      [&](const train::MicroBatch&) {
        const auto batch = loader.next();
        if (batch.end_of_epoch) epoch_done = batch.epoch;
        return instruct_pix2pix_step(m, batch, dropout_generator);
      },
      [&](int64_t step) {
        // The script validates at the end of every epoch (epoch % validation_epochs == 0),
        // and after the epoch in which max_train_steps is reached.
        const bool last = step == trainer.options().max_train_steps;
        if (!validator || (epoch_done < 0 && !last)) return;
        const int64_t epoch = epoch_done >= 0 ? epoch_done : loader.stats().epoch;
        epoch_done = -1;
        if (epoch % settings.validation_epochs == 0) validator->run(step, unet, spec);
      });
  trainer.save_final();
  if (!options.main_process) return;
  if (trainer.lora()) {
    // The LoRA file and the trained modules are written; the pipeline gets the merged UNet
    // (W + scale B A, and the trained conv_in), which diffusers and lisadiff generate load.
    auto merged = trainer.lora()->merged(train::named_parameters(*unet));
    for (auto& [name, t] : merged) t = t.detach().to(torch::kFloat32);  // frozen_dtype may have halved them
    models::save_unet(unet->config, merged, options.output_dir / "unet");
  }
  complete_pipeline_folder(run.base, options.output_dir, {"unet"}, "StableDiffusionInstructPix2PixPipeline");
  spdlog::info("wrote the InstructPix2Pix pipeline to {}", options.output_dir.string());
}

}  // namespace lisadiff::recipes
