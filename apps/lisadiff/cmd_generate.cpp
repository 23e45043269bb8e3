#include <algorithm>
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "commands.h"
#include "core/exit_codes.h"
#include "tools/generate.h"
#include "train/metrics.h"

namespace lisadiff::cli {

CommandRunner add_generate(CLI::App& app) {
  auto o = std::make_shared<tools::GenerateOptions>();
  auto steps = std::make_shared<int>(0);
  auto height = std::make_shared<int64_t>(0), width = std::make_shared<int64_t>(0);
  auto* cmd = app.add_subcommand("generate",
                                 "Generate images from a pipeline folder (text-to-image, LCM, InstructPix2Pix), "
                                 "optionally with a trained unet/ or a LoRA file");
  cmd->add_option("pipeline", o->pipeline, "Pipeline folder (model_index.json, unet/, vae/, ...)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--prompt", o->prompts, "Prompt (repeat for several)");
  cmd->add_option("--prompts", o->prompts_file, "File with one prompt per line")->check(CLI::ExistingFile);
  cmd->add_option("--negative_prompt,--negative-prompt", o->negative_prompts,
                  "Negative prompt: one for all prompts, or one per prompt (repeat)");
  cmd->add_option("--image", o->image, "Source image for an InstructPix2Pix UNet (8 input channels)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", o->out, "Output folder: one PNG per image, images.jsonl")->required();
  cmd->add_flag("--overwrite", o->overwrite, "Replace --out if it exists and is not empty");
  cmd->add_option("--unet", o->unet, "A trained unet/ folder (a run's output or checkpoint) instead of the pipeline's")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--lora", o->lora, "LoRA file (pytorch_lora_weights.safetensors)")->check(CLI::ExistingFile);
  cmd->add_option("--lora_scale,--lora-scale", o->lora_scale, "Strength of the LoRA update")->capture_default_str();
  cmd->add_option("--scheduler", o->scheduler,
                  "ddim, euler, lcm, pndm or dpm (or the diffusers class name); default: the pipeline's own");
  cmd->add_option("--steps,--num_inference_steps", *steps,
                  "Denoising steps (default 50; 100 for InstructPix2Pix; 4 for an LCM UNet)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--guidance_scale,--guidance-scale", o->guidance_scale, "Classifier-free guidance (off at <= 1)")
      ->capture_default_str();
  cmd->add_option("--image_guidance_scale,--image-guidance-scale", o->image_guidance_scale,
                  "InstructPix2Pix: guidance towards the source image")
      ->capture_default_str();
  cmd->add_option("--images_per_prompt,--num_images_per_prompt", o->images_per_prompt, "Images per prompt")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--height", *height, "Image height (multiple of 8; default from the UNet)")->check(CLI::PositiveNumber);
  cmd->add_option("--width", *width, "Image width (multiple of 8; default from the UNet)")->check(CLI::PositiveNumber);
  cmd->add_option("--eta", o->eta, "DDIM's eta (0: deterministic)")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the first image; image i uses seed + i")->capture_default_str();
  cmd->add_option("--variant", o->variant, "Weights variant, e.g. fp16 (*.fp16.safetensors)");
  cmd->add_option("--dtype", o->dtype, "Weights and compute dtype")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->capture_default_str();
  cmd->add_option("--device", o->device, "cpu, cuda or cuda:N")->capture_default_str();
  return [cmd, o, steps, height, width]() {
    if (!cmd->parsed()) return -1;
    if (*steps > 0) o->steps = *steps;
    if (*height > 0) o->height = *height;
    if (*width > 0) o->width = *width;
    const auto summary = tools::generate(*o);
    spdlog::info("[generate] {} images in {:.2f} s ({:.2f} s per image), peak RSS {:.0f} MiB -> {}", summary.images,
                 summary.seconds, summary.seconds / std::max(1, summary.images),
                 static_cast<double>(train::host_peak_rss_bytes()) / (1 << 20), summary.out.string());
    return exit_code::kOk;
  };
}

}  // namespace lisadiff::cli
