// `lisadiff eval-loss`: the text-to-image training loss of a pipeline (or a trained UNet or
// LoRA over it) on a held-out dataset, with every random draw fixed by a seed, so that runs
// are compared on the same noise and timesteps.
//
// For each image (resized and center-cropped to the resolution, as text_to_image's data path
// does), `repeats` times: t uniform in [0, num_train_timesteps) and noise ~ N(0, 1) from a CPU
// generator seeded with `seed`, latents = the VAE posterior's mean x scaling_factor (no
// sampling: the VAE adds no noise of its own), and the squared error of the UNet's prediction
// against the scheduler's target (epsilon, v or sample per its prediction_type), averaged over
// every element. Nothing is trained; the draws do not depend on the batch size.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace lisadiff::tools {

struct EvalLossOptions {
  std::filesystem::path pipeline;
  std::filesystem::path unet;  // a trained unet/ folder instead of the pipeline's
  std::filesystem::path lora;  // a LoRA file over it
  std::string train_data_dir;  // image folder with metadata.jsonl (text column "text")
  std::int64_t resolution = 0; // 0: the UNet's sample_size x the VAE's scale factor
  std::int64_t batch_size = 16;
  int repeats = 4;             // noise/timestep draws per image
  std::int64_t max_samples = -1;  // -1: every image
  std::uint64_t seed = 0;
};

struct EvalLossSummary {
  double loss = 0;
  std::int64_t images = 0, draws = 0;
  double seconds = 0;
};

// Throws lisadiff::Error naming the file or flag for bad input.
EvalLossSummary eval_loss(const EvalLossOptions& options);

}  // namespace lisadiff::tools
