// `lisadiff generate`: images from a pipeline folder (text-to-image, LCM, or InstructPix2Pix
// when the UNet takes 8 channels and --image is given), with a trained UNet or LoRA swapped in.
//
// Every image is its own pipeline call with batch 1 and seed `seed + i` (i counts the images
// of the run), so each file can be reproduced alone, also with diffusers:
// pipe(prompt, generator=torch.Generator().manual_seed(seed_i), ...). OUT gets
//   0000.png, 0001.png, ...   each with its generation parameters in PNG text chunks:
//                             "parameters" (one readable block, the way SD front ends write
//                             it) and one chunk per key (prompt, negative_prompt, seed, steps,
//                             scheduler, guidance_scale, image_guidance_scale, width, height,
//                             model, unet, lora, lora_scale, image, software)
//   images.jsonl              one line per image with the same keys and its file name
//   grid.png                  all images captioned with their prompt and seed
// Everything is checked (pipeline, UNet/LoRA fit, prompts, image) before OUT is created.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace lisadiff::tools {

struct GenerateOptions {
  std::filesystem::path pipeline;
  std::filesystem::path unet;  // a trained unet/ folder (a run's output or a checkpoint's)
  std::filesystem::path lora;  // a LoRA file
  double lora_scale = 1.0;
  std::string variant;
  std::string dtype = "fp32";  // fp32, fp16, bf16
  std::string device = "cpu";  // cpu, cuda, cuda:N
  std::vector<std::string> prompts;
  std::filesystem::path prompts_file;  // one prompt per non-empty line
  std::vector<std::string> negative_prompts;  // none, one for all, or one per prompt
  std::filesystem::path image;  // InstructPix2Pix source image
  std::string scheduler;        // short or diffusers name; empty: the pipeline's own
  std::optional<int> steps;     // default: 50, 100 for InstructPix2Pix, 4 for an LCM UNet
  double guidance_scale = 7.5;
  double image_guidance_scale = 1.5;
  int images_per_prompt = 1;
  std::optional<int64_t> height, width;
  double eta = 0.0;
  uint64_t seed = 0;
  std::filesystem::path out;
  bool overwrite = false;
};

struct GenerateSummary {
  int images = 0;
  double seconds = 0;  // generation only (loading excluded)
  std::filesystem::path out;
};

// Throws lisadiff::Error naming the file or option for bad input (nothing written then).
GenerateSummary generate(const GenerateOptions& options);

}  // namespace lisadiff::tools
