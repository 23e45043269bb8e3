#include "pipelines/text_to_image.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "core/error.h"
#include "schedulers/lcm.h"

namespace lisadiff::pipelines {

bool uses_cfg(const Components& c, double guidance_scale) {
  return guidance_scale > 1.0 && !c.unet->config.time_cond_proj_dim;
}

DecodedImages text_to_image(Components& c, schedulers::Sampler& sampler, const TextToImageOptions& o) {
  const auto& unet_config = c.unet->config;
  const int64_t latent_channels = c.vae->config.latent_channels;
  if (unet_config.in_channels != latent_channels) {
    throw Error(fmt::format("{}: the UNet takes {} input channels, text-to-image gives it {} (an InstructPix2Pix "
                            "UNet needs a source image)",
                            c.folder.string(), unet_config.in_channels, latent_channels));
  }
  if (o.prompts.empty()) throw Error("text-to-image: no prompts");
  if (o.num_images_per_prompt < 1) throw Error("num_images_per_prompt must be at least 1");
  if (o.num_inference_steps < 1) throw Error("num_inference_steps must be at least 1");
  const int vsf = c.vae_scale_factor();
  // unet.config.sample_size * vae_scale_factor (an [h, w] sample_size gives each its own).
  const auto& size = unet_config.sample_size;
  const int64_t height = o.height.value_or(static_cast<int64_t>(size ? size->at(0) : 64) * vsf);
  const int64_t width = o.width.value_or(static_cast<int64_t>(size ? size->at(1) : 64) * vsf);
  check_image_size(height, width);

  torch::NoGradGuard no_grad;
  const bool cfg = uses_cfg(c, o.guidance_scale);
  const int n = o.num_images_per_prompt;
  const int64_t batch = static_cast<int64_t>(o.prompts.size()) * n;
  auto embeds = encode_prompts(c, o.prompts, n);
  if (cfg) {
    const auto negative = encode_prompts(c, negative_prompts_for(o.prompts, o.negative_prompts), n);
    embeds = torch::cat({negative, embeds});
  }
  sampler.set_timesteps(o.num_inference_steps);
  auto generator = o.generator ? *o.generator : at::make_generator<at::CPUGeneratorImpl>(o.seed);
  auto latents = initial_latents(c, generator, batch, latent_channels, height / vsf, width / vsf,
                                 sampler.init_noise_sigma());
  torch::Tensor timestep_cond;
  if (unet_config.time_cond_proj_dim) {
    // torch.tensor(guidance_scale - 1): the difference in double, then float32.
    const auto w = torch::full({batch}, static_cast<float>(o.guidance_scale - 1.0));
    timestep_cond = schedulers::guidance_scale_embedding(w, *unet_config.time_cond_proj_dim).to(c.device, c.dtype);
  }
  schedulers::SamplerStepSettings settings;
  settings.eta = o.eta;
  settings.generator = generator;
  const auto predict = [&](const torch::Tensor& x, const torch::Tensor& t) {
    auto input = sampler.scale_model_input(cfg ? torch::cat({x, x}) : x, t);
    auto noise_pred = c.unet->forward(input, t.to(c.device), embeds, timestep_cond);
    if (!cfg) return noise_pred;
    const auto parts = noise_pred.chunk(2);  // negative, positive
    return parts[0] + o.guidance_scale * (parts[1] - parts[0]);
  };
  latents = denoise(sampler, latents, settings, predict, o.on_step);
  return decode_images(c, latents);
}

}  // namespace lisadiff::pipelines
