// Text-to-image with diffusers' StableDiffusionPipeline semantics (0.42.1), for plain SD UNets
// and LCM-distilled ones:
//   - classifier-free guidance when guidance_scale > 1 and the UNet has no time_cond_proj_dim:
//     the batch runs as [negative; positive] and eps = eps_u + g (eps_text - eps_u);
//   - a UNet with time_cond_proj_dim (LCM) gets no CFG: it is conditioned on the guidance
//     embedding of w = guidance_scale - 1 (diffusers' get_guidance_scale_embedding), which is
//     also what the LCM script's validation does;
//   - initial latents from a CPU generator seeded with `seed`, as
//     torch.Generator().manual_seed(seed), so that the same seed gives diffusers' latents; the
//     same generator feeds the stochastic steps (DDIM eta > 0, LCM's noise injection);
//   - height/width default to the UNet's sample_size times the VAE scale factor.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pipelines/components.h"

namespace lisadiff::pipelines {

struct TextToImageOptions {
  std::vector<std::string> prompts;
  std::vector<std::string> negative_prompts;  // none, one, or one per prompt
  double guidance_scale = 7.5;
  int num_images_per_prompt = 1;
  std::optional<int64_t> height, width;
  int num_inference_steps = 50;
  double eta = 0.0;  // DDIM only
  uint64_t seed = 0;
  // A CPU generator to draw from instead of a new one seeded with `seed`: it goes on from
  // where earlier calls left it, as when a diffusers script passes the same generator to
  // several pipeline calls (the recipes' validation).
  std::optional<at::Generator> generator;
  StepCallback on_step;
};

// Whether the call runs classifier-free guidance (diffusers' do_classifier_free_guidance).
bool uses_cfg(const Components& c, double guidance_scale);

// Runs the pipeline with `sampler` (set_timesteps is called here). Throws lisadiff::Error for
// an 8-channel (InstructPix2Pix) UNet, no prompts, a bad size or step count.
DecodedImages text_to_image(Components& c, schedulers::Sampler& sampler, const TextToImageOptions& options);

}  // namespace lisadiff::pipelines
