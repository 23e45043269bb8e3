#include "pipelines/components.h"

#include <fmt/format.h>

#include "config/pipeline_index.h"
#include "config/scheduler_config.h"
#include "core/error.h"
#include "pipelines/lora.h"

namespace lisadiff::pipelines {

namespace fs = std::filesystem;

int Components::vae_scale_factor() const {
  return 1 << (static_cast<int>(vae->config.block_out_channels.size()) - 1);
}

std::unique_ptr<schedulers::Sampler> Components::sampler(const std::string& name) const {
  return schedulers::make_sampler(name, scheduler_config, scheduler_source.string());
}

Components load_components(const fs::path& folder, const PipelineLoadOptions& options) {
  if (!fs::is_directory(folder)) throw Error(folder.string(), "not a pipeline folder (no such directory)");
  // The index is not needed to load (the component folders are), but a pipeline folder whose
  // model_index.json is broken is one diffusers cannot load either: say so.
  if (fs::exists(folder / "model_index.json")) (void)config::PipelineIndex::from_file(folder / "model_index.json");
  Components c;
  c.folder = folder;
  c.dtype = options.dtype;
  c.device = options.device;
  models::LoadOptions lo;
  lo.dtype = options.dtype;
  lo.device = options.device;
  lo.frozen = true;
  c.tokenizer = std::make_unique<models::CLIPTokenizer>(models::CLIPTokenizer::from_folder(folder / "tokenizer"));
  c.text_encoder = models::load_clip_text(folder / "text_encoder", lo, options.variant);
  c.vae = models::load_vae(folder / "vae", lo, options.variant);
  c.unet = models::load_unet(options.unet.empty() ? folder / "unet" : options.unet, lo,
                             options.unet.empty() ? options.variant : "");
  for (torch::nn::Module* m : {static_cast<torch::nn::Module*>(c.text_encoder.ptr().get()),
                               static_cast<torch::nn::Module*>(c.vae.ptr().get()),
                               static_cast<torch::nn::Module*>(c.unet.ptr().get())}) {
    m->eval();
  }
  c.scheduler_source = folder / "scheduler" / "scheduler_config.json";
  c.scheduler_config = config::read_scheduler_json_file(c.scheduler_source);
  if (!options.lora.empty()) apply_lora(c, options.lora, options.lora_scale);
  return c;
}

std::vector<std::string> negative_prompts_for(const std::vector<std::string>& prompts,
                                              const std::vector<std::string>& negative) {
  if (negative.empty()) return std::vector<std::string>(prompts.size(), "");
  if (negative.size() == prompts.size()) return negative;
  if (negative.size() == 1) return std::vector<std::string>(prompts.size(), negative.front());
  throw Error(fmt::format("{} negative prompts for {} prompts: give none, one, or one per prompt", negative.size(),
                          prompts.size()));
}

torch::Tensor encode_prompts(Components& c, const std::vector<std::string>& prompts, int n) {
  torch::NoGradGuard no_grad;
  const auto tokens = c.tokenizer->tokenize(prompts);
  // SD1.5's text encoder config has no use_attention_mask: diffusers passes no mask.
  auto embeds = c.text_encoder->forward(tokens.input_ids.to(c.device)).last_hidden_state.to(c.dtype);
  // prompt_embeds.repeat(1, n, 1).view(B * n, S, H): each prompt's rows n times in a row.
  return embeds.repeat_interleave(n, /*dim=*/0);
}

torch::Tensor initial_latents(const Components& c, at::Generator& generator, int64_t n, int64_t channels, int64_t h,
                              int64_t w, double init_noise_sigma) {
  // diffusers' randn_tensor with a CPU generator: drawn on the CPU, then moved.
  auto latents = at::randn({n, channels, h, w}, generator, torch::TensorOptions().dtype(c.dtype));
  latents = latents.to(c.device);
  return latents * init_noise_sigma;
}

DecodedImages decode_images(Components& c, const torch::Tensor& latents) {
  torch::NoGradGuard no_grad;
  auto image = c.vae->decode(latents / c.vae->config.scaling_factor);
  // VaeImageProcessor.postprocess: denormalize, then float32 NHWC on the CPU.
  auto values = (image / 2 + 0.5).clamp(0, 1).permute({0, 2, 3, 1}).to(torch::kCPU, torch::kFloat32).contiguous();
  // numpy_to_pil: (images * 255).round().astype("uint8") (round half to even, as numpy).
  auto pixels = (values * 255).round().to(torch::kUInt8);
  return {pixels, values};
}

torch::Tensor denoise(schedulers::Sampler& sampler, torch::Tensor latents, const schedulers::SamplerStepSettings& settings,
                      const Predict& predict, const StepCallback& on_step) {
  torch::NoGradGuard no_grad;
  const auto timesteps = sampler.timesteps();
  const int steps = static_cast<int>(timesteps.size(0));
  for (int i = 0; i < steps; ++i) {
    const auto t = timesteps[i];
    latents = sampler.step(predict(latents, t), t, latents, settings);
    if (on_step) on_step(i, steps, latents);
  }
  return latents;
}

void check_image_size(int64_t height, int64_t width) {
  if (height <= 0 || height % 8 != 0 || width <= 0 || width % 8 != 0) {
    throw Error(fmt::format("height and width must be positive multiples of 8, got {} x {}", height, width));
  }
}

}  // namespace lisadiff::pipelines
