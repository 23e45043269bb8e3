// LCM distillation, flag for flag with diffusers' train_lcm_distill_sd_wds.py
// (../shared/spec/recipes.md section 2), trained by LISA (the default), full fine-tuning, or
// LoRA as diffusers' train_lcm_distill_lora_sd_wds.py (section 5.6).
// docs/recipes/lcm_distill.md says how to run it and lists where lisadiff differs from the
// scripts and from the LISA fork.
//
// Three UNets: the frozen teacher, the trained online student and its target.
//   lisa, full: the student is the teacher's UNet with a guidance-scale embedding
//               (time_cond_proj_dim: the teacher's, or --unet_time_cond_proj_dim), its new
//               cond_proj freshly initialised; the target starts as an exact copy of the
//               student and follows it by EMA after every optimizer step.
//   lora:       the student is the pretrained UNet with LoRA adapters and no w embedding;
//               the target is the same adapted UNet, evaluated without gradient.
//
// Per micro-batch (section 2.5, in the script's order of random draws): latents by the VAE's
// sample() in chunks, times the scaling factor; a DDIM grid index j per sample, t_start =
// grid[j], t_end = max(t_start - k, 0); noise and z = add_noise(z0, noise, t_start); w ~
// U[w_min, w_max] from the CPU generator and its embedding; the student's prediction at t_start
// through the boundary scalings; the teacher's two passes (prompt, empty prompt) combined in
// the LCM form x0 = x0_c + w (x0_c - x0_u), eps likewise, one DDIM step to x_prev; the target's
// prediction at t_end on x_prev; l2 or pseudo-Huber loss between the two.
#pragma once

#include <cstdint>
#include <optional>

#include <torch/torch.h>

#include "models/clip_text.h"
#include "models/clip_tokenizer.h"
#include "models/unet.h"
#include "models/vae.h"
#include "recipes/options.h"
#include "schedulers/ddpm.h"
#include "schedulers/lcm.h"
#include "train/trainer.h"

namespace lisadiff::data {
struct Batch;
}

namespace lisadiff::recipes {

// Every flag of the script (section 2.1), the LCM-LoRA script's LoRA flags, the shared method
// flags (default lisa) and lisadiff's own (--teacher_autocast, --validation_prompts_file).
FlagTable lcm_distill_flags();

// The LCM-LoRA script's default adapter targets: attention, projections, feed-forward, the
// resnets' convolutions and time projections, the down- and upsamplers.
const std::vector<std::string>& lcm_lora_target_modules();

enum class LcmLossType { kL2, kHuber };
// "l2", "huber"; anything else is a UsageError naming --loss_type.
LcmLossType lcm_loss_type(const std::string& name);
// mean((a - b)^2) or mean(sqrt((a - b)^2 + c^2) - c), in float32.
torch::Tensor lcm_loss(const torch::Tensor& prediction, const torch::Tensor& target, LcmLossType type, double huber_c);

// The models and settings of one micro-batch.
struct LcmDistillModels {
  models::CLIPTokenizer* tokenizer = nullptr;
  models::CLIPTextModel text_encoder{nullptr};
  models::AutoencoderKL vae{nullptr};
  models::UNet2DConditionModel teacher{nullptr};
  models::UNet2DConditionModel unet{nullptr};    // the online student
  models::UNet2DConditionModel target{nullptr};  // undefined: the student without gradient (LCM-LoRA)
  const schedulers::DDPMNoiseSchedule* schedule = nullptr;
  const schedulers::LcmDdimSolver* solver = nullptr;  // on `device`
  schedulers::AlphaSigmaSchedules schedules;          // on `device`
  // The text encoder's output for B empty prompts, computed once (the script's
  // uncond_prompt_embeds), in the text encoder's dtype.
  torch::Tensor uncond_embeds;
  double w_min = 5.0, w_max = 15.0;
  LcmLossType loss_type = LcmLossType::kL2;
  double huber_c = 0.001;
  double timestep_scaling = 10.0;
  int64_t vae_encode_batch_size = 32;
  // The student's and the target's w embedding size (their time_cond_proj_dim); 0: none (LCM-LoRA).
  int64_t w_embedding_dim = 0;
  // The teacher's autocast dtype (the script: the device's default, float16 on CUDA and
  // bfloat16 on a CPU); none: no autocast, the teacher runs in its weights' dtype.
  std::optional<torch::ScalarType> teacher_autocast;
  torch::Device device = torch::kCPU;
  torch::ScalarType weight_dtype = torch::kFloat32;
};

// The random numbers of one micro-batch, for tests that feed stored ones (a Python
// reference's); undefined ones are drawn as the script draws them.
struct LcmDistillDraws {
  torch::Tensor latent_noise;  // [B, C, h, w] the VAE's sample() noise
  torch::Tensor index;         // int64 [B] DDIM grid indices
  torch::Tensor noise;         // [B, C, h, w]
  torch::Tensor w;             // float32 [B] guidance scales
};

// One micro-batch's loss.
train::MicroResult lcm_distill_step(LcmDistillModels& m, const data::Batch& batch, const LcmDistillDraws& draws = {});

// The student of lisa and full: the UNet of `teacher_dir` (its config, with time_cond_proj_dim
// set to `cond_dim` when the teacher has none) with the teacher's weights, float32, on
// `device`; a new cond_proj keeps its default initialisation (drawn from the global generator
// as diffusers' constructor draws it). `variant` as load_unet's.
models::UNet2DConditionModel load_lcm_student(const std::filesystem::path& teacher_dir, int64_t cond_dim,
                                              torch::Device device, const std::string& variant = "");
// A frozen copy of `unet` (config and weights), float32, on the same device: the target.
models::UNet2DConditionModel copy_unet(const models::UNet2DConditionModel& unet);

// The executable: reads the flags, loads the teacher, trains, writes output_dir. Throws
// UsageError (exit 2) or lisadiff::Error (exit 1).
void run_lcm_distill(const ParsedArgs& parsed);

}  // namespace lisadiff::recipes
