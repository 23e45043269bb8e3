#include "pipelines/instruct_pix2pix.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "core/error.h"

namespace lisadiff::pipelines {

bool uses_three_branch_guidance(double guidance_scale, double image_guidance_scale) {
  return guidance_scale > 1.0 && image_guidance_scale >= 1.0;
}

DecodedImages instruct_pix2pix(Components& c, schedulers::Sampler& sampler, const InstructPix2PixOptions& o) {
  const int64_t latent_channels = c.vae->config.latent_channels;
  const int64_t in_channels = c.unet->config.in_channels;
  if (in_channels != 2 * latent_channels) {
    throw Error(fmt::format("{}: the UNet takes {} input channels; InstructPix2Pix needs {} (latents + source image "
                            "latents): use text-to-image for this UNet",
                            c.folder.string(), in_channels, 2 * latent_channels));
  }
  if (o.prompts.empty()) throw Error("InstructPix2Pix: no prompts");
  if (!o.image.defined() || o.image.dim() != 3 || o.image.size(2) != 3 || o.image.scalar_type() != torch::kUInt8) {
    throw Error("InstructPix2Pix: the source image must be uint8 [H, W, 3]");
  }
  if (o.num_images_per_prompt < 1) throw Error("num_images_per_prompt must be at least 1");
  if (o.num_inference_steps < 1) throw Error("num_inference_steps must be at least 1");
  const int vsf = c.vae_scale_factor();
  const int64_t height = o.image.size(0), width = o.image.size(1);
  if (height % vsf != 0 || width % vsf != 0 || height == 0 || width == 0) {
    throw Error(fmt::format("InstructPix2Pix: the source image is {} x {}; its sides must be multiples of {} (resize "
                            "it first)",
                            width, height, vsf));
  }

  torch::NoGradGuard no_grad;
  const bool cfg = uses_three_branch_guidance(o.guidance_scale, o.image_guidance_scale);
  const int n = o.num_images_per_prompt;
  const int64_t batch = static_cast<int64_t>(o.prompts.size()) * n;
  auto embeds = encode_prompts(c, o.prompts, n);
  if (cfg) {
    const auto negative = encode_prompts(c, negative_prompts_for(o.prompts, o.negative_prompts), n);
    embeds = torch::cat({embeds, negative, negative});  // the pipeline's order: text, image, uncond
  }
  // VaeImageProcessor.preprocess: [0, 255] -> [0, 1] (float32) -> [-1, 1], NCHW.
  const auto pixels = o.image.permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat32) / 255.0f;
  const auto source = (pixels * 2.0f - 1.0f).to(c.device, c.dtype);
  sampler.set_timesteps(o.num_inference_steps);
  auto image_latents = c.vae->encode(source).mode();
  image_latents = torch::cat(std::vector<torch::Tensor>(static_cast<std::size_t>(batch), image_latents));
  if (cfg) image_latents = torch::cat({image_latents, image_latents, torch::zeros_like(image_latents)});

  auto generator = o.generator ? *o.generator : at::make_generator<at::CPUGeneratorImpl>(o.seed);
  auto latents = initial_latents(c, generator, batch, latent_channels, height / vsf, width / vsf,
                                 sampler.init_noise_sigma());
  schedulers::SamplerStepSettings settings;
  settings.eta = o.eta;
  settings.generator = generator;
  const auto predict = [&](const torch::Tensor& x, const torch::Tensor& t) {
    auto input = cfg ? torch::cat({x, x, x}) : x;
    input = torch::cat({sampler.scale_model_input(input, t), image_latents}, /*dim=*/1);
    auto noise_pred = c.unet->forward(input, t.to(c.device), embeds);
    if (!cfg) return noise_pred;
    const auto parts = noise_pred.chunk(3);  // text, image, uncond
    return parts[2] + o.guidance_scale * (parts[0] - parts[1]) + o.image_guidance_scale * (parts[1] - parts[2]);
  };
  latents = denoise(sampler, latents, settings, predict, o.on_step);
  return decode_images(c, latents);
}

}  // namespace lisadiff::pipelines
