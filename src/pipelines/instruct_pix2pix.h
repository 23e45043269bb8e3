// InstructPix2Pix editing with diffusers' StableDiffusionInstructPix2PixPipeline semantics
// (0.42.1): the source image's VAE latents (the distribution's mode, unscaled) are
// concatenated to the noisy latents as 4 more input channels (8 in all), and guidance has
// three branches, run as one batch [text + image; negative + image; negative + zero image]:
//   eps = eps_uncond + g (eps_text - eps_image) + g_image (eps_image - eps_uncond),
// on when guidance_scale > 1 and image_guidance_scale >= 1. The output has the source
// image's size, which must be a multiple of the VAE scale factor (diffusers resizes other
// sizes down to one with PIL's Lanczos filter; lisadiff refuses them instead of resampling
// differently).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pipelines/components.h"

namespace lisadiff::pipelines {

struct InstructPix2PixOptions {
  std::vector<std::string> prompts;  // edit instructions
  std::vector<std::string> negative_prompts;
  torch::Tensor image;  // the source: uint8 [H, W, 3] (one image for every prompt)
  double guidance_scale = 7.5;
  double image_guidance_scale = 1.5;
  int num_images_per_prompt = 1;
  int num_inference_steps = 100;  // the pipeline's default
  double eta = 0.0;
  uint64_t seed = 0;
  // A CPU generator to draw from instead of a new one seeded with `seed`: it goes on from
  // where earlier calls left it, as when a diffusers script passes the same generator to
  // several pipeline calls (the recipes' validation).
  std::optional<at::Generator> generator;
  StepCallback on_step;
};

bool uses_three_branch_guidance(double guidance_scale, double image_guidance_scale);

// Throws lisadiff::Error for a UNet whose input channels are not latents + image latents
// (e.g. a text-to-image UNet), a missing or malformed image, a size that is not a multiple
// of the VAE scale factor, no prompts.
DecodedImages instruct_pix2pix(Components& c, schedulers::Sampler& sampler, const InstructPix2PixOptions& options);

}  // namespace lisadiff::pipelines
