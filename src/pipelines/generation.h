// One pipeline call for whichever pipeline a UNet is for: InstructPix2Pix when the call has a
// source image, text-to-image otherwise. What `lisadiff generate` and training validation
// make their images with.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <torch/torch.h>

#include "pipelines/components.h"

namespace lisadiff::pipelines {

struct GenerationCall {
  std::string prompt;
  std::string negative_prompt;
  torch::Tensor image;  // uint8 [H, W, 3]: an InstructPix2Pix edit of this image
  double guidance_scale = 7.5;
  double image_guidance_scale = 1.5;
  int num_images = 1;  // num_images_per_prompt
  int num_inference_steps = 50;
  double eta = 0.0;
  std::optional<int64_t> height, width;  // text-to-image only
  uint64_t seed = 0;
  std::optional<at::Generator> generator;  // instead of a new one seeded with `seed`
};

// Whether the components' UNet is an InstructPix2Pix one (latents + image latents in).
bool is_edit_unet(const Components& c);

DecodedImages generate(Components& c, schedulers::Sampler& sampler, const GenerationCall& call);

}  // namespace lisadiff::pipelines
