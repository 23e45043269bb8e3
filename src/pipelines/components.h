// The parts of a Stable Diffusion pipeline folder that inference needs, loaded once and
// shared by the pipelines (text_to_image.h, instruct_pix2pix.h), plus the steps they have in
// common, each as diffusers' pipelines do it:
//   encode_prompts   tokenizer (padding to max_length, truncation) + CLIP text encoder's
//                    last hidden state, repeated num_images_per_prompt times per prompt
//   initial_latents  standard normal from a CPU generator seeded like
//                    torch.Generator().manual_seed(seed), times the scheduler's init_noise_sigma
//   decode_images    VAE decode of latents / scaling_factor, then (x / 2 + 0.5).clamp(0, 1)
//                    and round(x * 255) to uint8 [N, H, W, 3] (output_type "pil")
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "config/json_fields.h"
#include "models/clip_text.h"
#include "models/clip_tokenizer.h"
#include "models/unet.h"
#include "models/vae.h"
#include "schedulers/sampling.h"
#include "train/lora.h"

namespace lisadiff::pipelines {

struct PipelineLoadOptions {
  torch::ScalarType dtype = torch::kFloat32;  // the weights' dtype (fp16/bf16 on GPUs)
  torch::Device device = torch::kCPU;
  std::string variant;                  // "fp16": *.fp16.safetensors
  std::filesystem::path unet;           // a trained unet/ folder instead of the pipeline's own
  std::filesystem::path lora;           // a LoRA file (pipelines/lora.h), applied at lora_scale
  double lora_scale = 1.0;
};

struct Components {
  std::filesystem::path folder;
  std::unique_ptr<models::CLIPTokenizer> tokenizer;
  models::CLIPTextModel text_encoder{nullptr};
  models::AutoencoderKL vae{nullptr};
  models::UNet2DConditionModel unet{nullptr};
  config::Json scheduler_config;  // scheduler/scheduler_config.json as read
  std::filesystem::path scheduler_source;
  torch::ScalarType dtype = torch::kFloat32;
  torch::Device device = torch::kCPU;
  std::unique_ptr<train::Lora> lora;  // the adapters of apply_lora (pipelines/lora.h)

  // 2 ^ (number of VAE blocks - 1): 8 for SD1.5.
  int vae_scale_factor() const;
  // The scheduler named `name` (short or diffusers name; empty: the folder's own), built from
  // the folder's scheduler config as from_config does.
  std::unique_ptr<schedulers::Sampler> sampler(const std::string& name = "") const;
};

// Loads tokenizer/, text_encoder/, vae/, unet/ (or options.unet) and scheduler/ of a pipeline
// folder, every model frozen and in eval mode. Errors name the folder and the file.
Components load_components(const std::filesystem::path& folder, const PipelineLoadOptions& options = {});

// [B * n, S, H] text embeddings for `prompts`, each repeated n times in a row (diffusers'
// order: p0, p0, p1, p1 for n = 2).
torch::Tensor encode_prompts(Components& c, const std::vector<std::string>& prompts, int num_images_per_prompt);

// The negative prompts of diffusers' encode_prompt: empty -> "" for every prompt; one per
// prompt otherwise (a single one is used for every prompt). Throws for other counts.
std::vector<std::string> negative_prompts_for(const std::vector<std::string>& prompts,
                                              const std::vector<std::string>& negative);

// Standard normal latents [n, channels, h, w] from `generator` (CPU), in the components'
// dtype on their device, times `init_noise_sigma`.
torch::Tensor initial_latents(const Components& c, at::Generator& generator, int64_t n, int64_t channels, int64_t h,
                              int64_t w, double init_noise_sigma);

struct DecodedImages {
  torch::Tensor pixels;  // uint8 [N, H, W, 3], CPU
  torch::Tensor values;  // float32 [N, H, W, 3] in [0, 1], CPU (output_type "np")
};
DecodedImages decode_images(Components& c, const torch::Tensor& latents);

// Called after every denoising step with the step index (0-based), the step count and the
// latents after the step (diffusers' callback_on_step_end).
using StepCallback = std::function<void(int step, int steps, const torch::Tensor& latents)>;

// The denoising loop both pipelines run: for each of the sampler's timesteps (set_timesteps
// done), `predict(latents, t)` returns the guided noise prediction, the sampler steps with
// `settings`, and `on_step` (if set) sees the new latents. Returns the final latents.
using Predict = std::function<torch::Tensor(const torch::Tensor& latents, const torch::Tensor& timestep)>;
torch::Tensor denoise(schedulers::Sampler& sampler, torch::Tensor latents, const schedulers::SamplerStepSettings& settings,
                      const Predict& predict, const StepCallback& on_step);

// Checks height/width for a pipeline: positive multiples of 8 (diffusers' rule). Throws
// lisadiff::Error naming the value.
void check_image_size(int64_t height, int64_t width);

}  // namespace lisadiff::pipelines
