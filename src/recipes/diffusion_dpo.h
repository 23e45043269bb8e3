// Diffusion-DPO, flag for flag with diffusers' train_diffusion_dpo.py (../shared/spec/recipes.md
// section 4), trained by LoRA (the script's method, the default), LISA (the LMFlow fork's) or
// full fine-tuning. docs/recipes/diffusion_dpo.md says how to run it and lists where lisadiff
// differs from the script and from the fork.
//
// Per micro-batch of B preference pairs (section 4.3, in the script's order of random draws):
// the 2B images stacked preferred-first ([all preferred, all rejected]) are VAE-encoded in
// chunks of --vae_encode_batch_size with sample(), times the scaling factor; noise is drawn
// for 2B latents and its first B repeated, so both images of a pair share noise; B timesteps
// repeated twice; the caption's text embedding repeated twice. The policy's and the
// reference's per-sample float32 MSE against the noise (or the velocity) give
// model_diff = mse_w - mse_l and ref_diff likewise; logits = ref_diff - model_diff and
//   sigmoid: mean(-log sigmoid(beta logits)),  hinge: mean(relu(1 - beta logits)),
//   ipo:     mean((logits - 1 / (2 beta))^2)   (the script means this and reads a missing
//                                               args.beta; lisadiff uses --beta_dpo),
// implicit_acc = (#(logits > 0) + #(logits == 0) / 2) / B.
#pragma once

#include <cstdint>
#include <functional>
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

// Every flag of the script (section 4.1) plus the shared method flags and lisadiff's own
// (--reference_dtype, --ref_update_rate).
FlagTable diffusion_dpo_flags();

enum class DpoLossType { kSigmoid, kHinge, kIpo };
// "sigmoid", "hinge", "ipo"; anything else is a UsageError naming --loss_type.
DpoLossType dpo_loss_type(const std::string& name);

// The loss of a batch from the policy's and the reference's per-sample MSE ([2B] each,
// preferred first).
struct DpoTerms {
  torch::Tensor loss;          // scalar
  torch::Tensor logits;        // [B] ref_diff - model_diff
  torch::Tensor implicit_acc;  // scalar
};
DpoTerms dpo_loss(const torch::Tensor& model_mse, const torch::Tensor& ref_mse, DpoLossType type, double beta);

// The reference model's prediction for (noisy latents, timesteps, text embedding), float32,
// recorded without gradient: the UNet with its LoRA adapters switched off (method lora), or
// the frozen pretrained UNet (lisa, full).
using ReferenceFn = std::function<torch::Tensor(const torch::Tensor& noisy, const torch::Tensor& timesteps,
                                                const torch::Tensor& embeds)>;

// The frozen models and settings of one micro-batch.
struct DiffusionDpoModels {
  models::CLIPTokenizer* tokenizer = nullptr;
  models::CLIPTextModel text_encoder{nullptr};
  models::AutoencoderKL vae{nullptr};
  models::UNet2DConditionModel unet{nullptr};  // the policy
  ReferenceFn reference;
  const schedulers::DDPMNoiseSchedule* schedule = nullptr;
  DpoLossType loss_type = DpoLossType::kSigmoid;
  double beta = 2500;
  int64_t vae_encode_batch_size = 8;
  torch::Device device = torch::kCPU;
  torch::ScalarType weight_dtype = torch::kFloat32;  // the VAE's and text encoder's
};

// The random numbers of one micro-batch, for tests that feed stored ones (a Python
// reference's); undefined ones are drawn as the script does.
struct DiffusionDpoDraws {
  torch::Tensor latent_noise;  // [2B, C, h, w] VAE sample() noise, preferred first
  torch::Tensor noise;         // [B, C, h, w] the noise both images of a pair share
  torch::Tensor timesteps;     // int64 [B]
};

// One micro-batch's loss, with raw_model_loss, ref_loss and implicit_acc in its logs.
train::MicroResult diffusion_dpo_step(DiffusionDpoModels& m, const data::Batch& batch,
                                      const DiffusionDpoDraws& draws = {});

// The executable: reads the flags, loads the base, trains, writes output_dir. Throws
// UsageError (exit 2) or lisadiff::Error (exit 1).
void run_diffusion_dpo(const ParsedArgs& parsed);

}  // namespace lisadiff::recipes
