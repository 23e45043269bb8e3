// Validation images during training: what the recipes attach to their Trainer. Every
// `validation_steps` optimizer steps (or whenever the recipe asks: InstructPix2Pix validates at
// epoch ends) the Validator generates a ValidationSpec's images with the UNet as it is at that
// moment, on the main process only:
//   - text-to-image (LCM's 4-step LCMScheduler, DPO's DPM-Solver, any of the five schedulers),
//     or InstructPix2Pix edits of a source image;
//   - from the live weights, or with use_ema from the EMA weights (stored, swapped in and
//     restored bit for bit, as the scripts' ema_unet.store / copy_to / restore);
//   - under autocast at the run's mixed precision (the scripts' weight_dtype + autocast);
//   - one CPU generator seeded with the spec's seed feeds every pipeline call of the run, as
//     the scripts pass the same generator to each call.
// It writes output_dir/validation/step-<N>[-<name>].png (a captioned grid; an edit's source
// image first), a {"event": "validation"} line in metrics.jsonl and, when the run mirrors to
// TensorBoard, the grid as the image "validation[/<name>]".
//
// Training is not disturbed: no gradient is recorded, the UNet's train/eval mode, the global
// random generator, the weights and the autocast state are as before, so a run's losses and
// weights with validation on equal those with it off, bit for bit on CPU
// (tests/pipelines/test_validation.cpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "pipelines/components.h"
#include "train/trainer.h"

namespace lisadiff::pipelines {

struct ValidationSpec {
  std::string name;  // "" or e.g. LCM's "target" / "online": file suffix and image tag
  std::vector<std::string> prompts;
  std::vector<std::string> negative_prompts;  // none, one, or one per prompt
  int images_per_prompt = 1;
  // true: one pipeline call makes a prompt's images (num_images_per_prompt, as LCM's
  // validation); false: one call per image (InstructPix2Pix's and DPO's validation). The
  // generator's draws differ between the two.
  bool one_call_per_prompt = false;
  int num_inference_steps = 25;
  double guidance_scale = 7.5;
  double image_guidance_scale = 1.5;  // InstructPix2Pix
  torch::Tensor source_image;         // uint8 [H, W, 3]: InstructPix2Pix edits of this image
  std::string scheduler;              // "" = the pipeline folder's own (make_sampler names)
  // The generator's seed; none: a random one (the scripts leave the generator unseeded
  // without --seed), written in the event so that the images can be made again.
  std::optional<uint64_t> seed;
  std::optional<int64_t> height, width;  // text-to-image; default from the UNet's sample_size
  bool use_ema = false;  // generate with the Trainer's EMA weights (needs use_ema)
};

struct ValidationResult {
  std::filesystem::path grid;  // the PNG written (empty on other ranks)
  torch::Tensor images;        // uint8 [N, H, W, 3], in generation order
  uint64_t seed = 0;
  double seconds = 0;
};

class Validator {
 public:
  // `base` holds the tokenizer, text encoder, VAE and scheduler config the pipelines use
  // (components_for_validation below, with the recipe's own frozen models); its `unet` is
  // replaced for each run. The trainer gives the output folder, the rank, the mixed
  // precision, the metrics writer and the EMA; it must outlive the Validator.
  // validation_steps: what due() tests (0: never).
  Validator(Components base, train::Trainer& trainer, int64_t validation_steps = 0);

  // Whether `step` (optimizer steps done) is a validation step: a positive multiple of
  // validation_steps, on the main process.
  bool due(int64_t step) const;

  // Generates `spec` with `unet` (the trained model, or another one such as LCM's target)
  // and writes the grid, the event and the TensorBoard image. Returns nothing on ranks other
  // than 0. Throws lisadiff::Error for a bad spec (no prompts, use_ema without EMA, a source
  // image for a 4-channel UNet, ...), before anything is generated.
  ValidationResult run(int64_t step, models::UNet2DConditionModel unet, const ValidationSpec& spec);

  const std::filesystem::path& folder() const { return folder_; }

 private:
  Components base_;
  train::Trainer& trainer_;
  int64_t every_;
  std::filesystem::path folder_;  // output_dir/validation
};

// Components that share a recipe's frozen models (no second copy): the tokenizer, text encoder
// and VAE given, the scheduler config of `folder`/scheduler/, and no UNet yet. The models are
// used in eval mode; dtype and device are the text encoder's.
Components components_for_validation(const std::filesystem::path& folder, const models::CLIPTokenizer& tokenizer,
                                     models::CLIPTextModel text_encoder, models::AutoencoderKL vae);

// The file a run at `step` writes: validation/step-<step>[-<name>].png.
std::string validation_file_name(int64_t step, const std::string& name);

}  // namespace lisadiff::pipelines
