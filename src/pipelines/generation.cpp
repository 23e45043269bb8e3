#include "pipelines/generation.h"

#include "pipelines/instruct_pix2pix.h"
#include "pipelines/text_to_image.h"

namespace lisadiff::pipelines {

bool is_edit_unet(const Components& c) { return c.unet->config.in_channels == 2 * c.vae->config.latent_channels; }

DecodedImages generate(Components& c, schedulers::Sampler& sampler, const GenerationCall& call) {
  if (call.image.defined()) {
    InstructPix2PixOptions e;
    e.prompts = {call.prompt};
    e.negative_prompts = {call.negative_prompt};
    e.image = call.image;
    e.guidance_scale = call.guidance_scale;
    e.image_guidance_scale = call.image_guidance_scale;
    e.num_images_per_prompt = call.num_images;
    e.num_inference_steps = call.num_inference_steps;
    e.eta = call.eta;
    e.seed = call.seed;
    e.generator = call.generator;
    return instruct_pix2pix(c, sampler, e);
  }
  TextToImageOptions t;
  t.prompts = {call.prompt};
  t.negative_prompts = {call.negative_prompt};
  t.guidance_scale = call.guidance_scale;
  t.num_images_per_prompt = call.num_images;
  t.num_inference_steps = call.num_inference_steps;
  t.height = call.height;
  t.width = call.width;
  t.eta = call.eta;
  t.seed = call.seed;
  t.generator = call.generator;
  return text_to_image(c, sampler, t);
}

}  // namespace lisadiff::pipelines
