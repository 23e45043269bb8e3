// Text-to-image fine-tuning, flag for flag with diffusers' train_text_to_image.py, trained by
// LISA (the default), full fine-tuning (the script's) or LoRA. docs/recipes/text_to_image.md
// says how to run it and where lisadiff differs from the script.
//
// Per micro-batch (the script's order of random draws): latents by the VAE's sample() times the
// scaling factor; noise like the latents, plus --noise_offset times a [B, C, 1, 1] draw; with
// --input_perturbation a second draw perturbs the noise the latents get (the target keeps the
// unperturbed one); timesteps uniform in [0, T); the target by --prediction_type (or the
// scheduler's): the noise or the velocity; with --dream_training the DREAM correction (a
// prediction without gradient moves the noisy latents and the target); the loss is the MSE,
// or with --snr_gamma the min-SNR weighted MSE (min(snr, gamma) / snr for epsilon, / (snr + 1)
// for v-prediction).
#pragma once

#include <optional>
#include <string>

#include <torch/torch.h>

#include "models/clip_text.h"
#include "models/clip_tokenizer.h"
#include "models/unet.h"
#include "models/vae.h"
#include "recipes/options.h"
#include "schedulers/ddpm.h"
#include "train/trainer.h"

namespace lisadiff::data {
struct Batch;
}

namespace lisadiff::recipes {

// Every flag of the script, the shared method flags (default lisa) and --config.
FlagTable text_to_image_flags();

// The models and settings of one micro-batch.
struct TextToImageModels {
  models::CLIPTokenizer* tokenizer = nullptr;
  models::CLIPTextModel text_encoder{nullptr};
  models::AutoencoderKL vae{nullptr};
  models::UNet2DConditionModel unet{nullptr};
  const schedulers::DDPMNoiseSchedule* schedule = nullptr;
  std::string prediction_type;  // "epsilon" or "v_prediction" (--prediction_type or the scheduler's)
  double noise_offset = 0, input_perturbation = 0;
  std::optional<double> snr_gamma;
  bool dream_training = false;
  double dream_detail_preservation = 1.0;
  torch::Device device = torch::kCPU;
  torch::ScalarType weight_dtype = torch::kFloat32;  // the VAE's and text encoder's
};

// The random numbers of one micro-batch, for tests that feed stored ones; undefined ones are
// drawn as the script draws them.
struct TextToImageDraws {
  torch::Tensor latent_noise;  // [B, C, h, w] the VAE's sample() noise
  torch::Tensor noise;         // [B, C, h, w]
  torch::Tensor offset_noise;  // [B, C, 1, 1] (--noise_offset)
  torch::Tensor perturbation;  // [B, C, h, w] (--input_perturbation)
  torch::Tensor timesteps;     // int64 [B]
};

// The per-sample min-SNR weights of `timesteps`: min(snr, gamma) / snr (epsilon) or
// / (snr + 1) (v_prediction), snr = alphas_cumprod / (1 - alphas_cumprod), as diffusers'
// compute_snr.
torch::Tensor min_snr_weights(const schedulers::DDPMNoiseSchedule& schedule, const torch::Tensor& timesteps,
                              double gamma, const std::string& prediction_type);

// One micro-batch's loss.
train::MicroResult text_to_image_step(TextToImageModels& m, const data::Batch& batch, const TextToImageDraws& draws = {});

// The executable: reads the flags, loads the base, trains, writes output_dir. Throws
// UsageError (exit 2) or lisadiff::Error (exit 1).
void run_text_to_image(const ParsedArgs& parsed);

}  // namespace lisadiff::recipes
