// InstructPix2Pix fine-tuning, flag for flag with diffusers' train_instruct_pix2pix.py
// (../shared/spec/recipes.md section 3), trained by LISA (the LMFlow fork's method), full
// fine-tuning (the script's) or LoRA. docs/recipes/instruct_pix2pix.md says how to run it and
// lists where lisadiff differs from the script and from the fork.
//
// Per micro-batch (section 3.4, in the script's order of random draws): the edited image's
// VAE latents by sample() times the scaling factor, noise, timesteps, the noisy latents; the
// instruction's text embedding; the original image's latents by mode(), unscaled; with
// --conditioning_dropout_prob p a uniform r per sample from its own generator seeded with
// --seed: the prompt is replaced by the empty prompt's embedding when r < 2p, the image
// latents are zeroed when p <= r < 3p; the UNet sees [noisy latents, image latents] (8
// channels); the loss is the float32 MSE against the noise (or the velocity).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>

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

// Every flag of the script (section 3.1) plus the shared method flags and lisadiff's own.
FlagTable instruct_pix2pix_flags();

// The model surgery of section 3.3: a UNet with 4 input channels gets a new conv_in with
// `in_channels` inputs whose weight is zero except for the first 4 input channels (the
// pretrained weight), in conv_in's registration slot, and config.in_channels updated. The
// bias is a fresh Conv2d's (PyTorch's default init, drawn from the global generator, as the
// script leaves it: huggingface/diffusers#4960), or the pretrained bias with copy_bias.
// A UNet that already has `in_channels` inputs is left as it is (a resumed run, or a base
// that is already an InstructPix2Pix UNet). Returns whether it changed the UNet.
bool widen_conv_in(models::UNet2DConditionModel& unet, int64_t in_channels, bool copy_bias);

// The conditioning-dropout masks of section 3.4 for uniforms r and probability p:
// prompt dropped when r < 2p, image dropped when p <= r < 3p. Both [B] bool.
struct DropoutMasks {
  torch::Tensor drop_prompt, drop_image;
};
DropoutMasks conditioning_dropout(const torch::Tensor& r, double p);

// The frozen models and settings of one micro-batch.
struct InstructPix2PixModels {
  models::CLIPTokenizer* tokenizer = nullptr;
  models::CLIPTextModel text_encoder{nullptr};
  models::AutoencoderKL vae{nullptr};
  models::UNet2DConditionModel unet{nullptr};
  const schedulers::DDPMNoiseSchedule* schedule = nullptr;
  torch::Tensor null_embedding;  // the empty prompt's text embedding [1, S, H]
  std::optional<double> dropout_prob;
  torch::Device device = torch::kCPU;
  torch::ScalarType weight_dtype = torch::kFloat32;  // the VAE's and text encoder's
};

// The random numbers of one micro-batch, for tests that feed stored ones (a Python
// reference's); undefined ones are drawn as the script does.
struct InstructPix2PixDraws {
  torch::Tensor latent_noise;  // VAE sample() noise, like the edited image's latents
  torch::Tensor noise;         // the diffusion noise
  torch::Tensor timesteps;     // int64 [B]
  torch::Tensor dropout_r;     // float32 [B]
};

// One micro-batch's loss (section 3.4). `dropout_generator` draws r when dropout is on.
train::MicroResult instruct_pix2pix_step(InstructPix2PixModels& m, const data::Batch& batch,
                                         at::Generator& dropout_generator, const InstructPix2PixDraws& draws = {});

// The executable: reads the flags, loads the base, trains, writes output_dir. Throws
// UsageError (exit 2) or lisadiff::Error (exit 1).
void run_instruct_pix2pix(const ParsedArgs& parsed);

}  // namespace lisadiff::recipes
