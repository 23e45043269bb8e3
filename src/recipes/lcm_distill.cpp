#include "recipes/lcm_distill.h"

#include "recipes/shared_flags.h"

namespace lisadiff::recipes {

namespace {

constexpr const char* kModel = "Model";
constexpr const char* kData = "Data";
constexpr const char* kLcm = "Latent consistency distillation";
constexpr const char* kValidation = "Validation";

}  // namespace

FlagTable lcm_distill_flags() {
  FlagTable t("lcm_distill",
              "Latent consistency distillation of a Stable Diffusion teacher (diffusers' "
              "train_lcm_distill_sd_wds.py), trained by LISA (default), full fine-tuning or LoRA");
  t.add(kModel, "pretrained_teacher_model", FlagType::kString, nullptr,
        "the teacher Stable Diffusion pipeline folder (a local path; a Hub id must be downloaded first)")
      .required = true;
  t.add(kModel, "pretrained_vae_model_name_or_path", FlagType::kString, nullptr, "a VAE the script never loads");
  t.set_handling("pretrained_vae_model_name_or_path", Handling::kNote,
                 "no effect: the script reads the VAE from the teacher folder whatever this says, and so does lisadiff");
  t.add(kModel, "teacher_revision", FlagType::kString, nullptr, "Hub revision of the teacher");
  t.set_handling("teacher_revision", Handling::kNote, "no effect: lisadiff reads the local folder as it is");
  t.add(kModel, "revision", FlagType::kString, nullptr, "Hub revision (the validation pipeline's)");
  t.set_handling("revision", Handling::kNote, "no effect: lisadiff reads the local folder as it is");
  t.add(kModel, "cache_dir", FlagType::kString, nullptr, "Hub/datasets cache");
  t.set_handling("cache_dir", Handling::kNote, "no effect: lisadiff keeps no download cache");

  t.add(kData, "train_shards_path_or_url", FlagType::kString, nullptr,
        "webdataset shards: a brace spec of local .tar files, or pipe: commands");
  t.add(kData, "resolution", FlagType::kInt, 512, "shorter side resized to this, then a random square crop");
  t.add(kData, "interpolation_type", FlagType::kString, "bilinear", "the resize filter").choices = {
      "bilinear", "bicubic", "box", "nearest", "nearest_exact", "hamming", "lanczos"};
  t.add(kData, "center_crop", FlagType::kSwitch, false, "unused by the script (the crop is always random)");
  t.set_handling("center_crop", Handling::kNote, "no effect: the script defines it and always crops at random");
  t.add(kData, "random_flip", FlagType::kSwitch, false, "unused by the script (no flip)");
  t.set_handling("random_flip", Handling::kNote, "no effect: the script defines it and never flips");
  t.add(kData, "max_train_samples", FlagType::kInt, nullptr,
        "the nominal number of samples per epoch (the script divides by it)");
  t.add(kData, "proportion_empty_prompts", FlagType::kFloat, 0, "share of captions replaced by the empty prompt");

  t.add(kLcm, "w_min", FlagType::kFloat, 5.0, "smallest guidance scale w drawn for the teacher");
  t.add(kLcm, "w_max", FlagType::kFloat, 15.0, "largest guidance scale w drawn for the teacher");
  t.add(kLcm, "num_ddim_timesteps", FlagType::kInt, 50, "steps of the DDIM solver's grid");
  t.add(kLcm, "loss_type", FlagType::kString, "l2", "distillation loss: l2 or huber").choices = {"l2", "huber"};
  t.add(kLcm, "huber_c", FlagType::kFloat, 0.001, "huber loss: c");
  t.add(kLcm, "unet_time_cond_proj_dim", FlagType::kInt, 256,
        "the w embedding's size, for a teacher UNet without time_cond_proj_dim");
  t.add(kLcm, "vae_encode_batch_size", FlagType::kInt, 32, "images per VAE encode call");
  t.add(kLcm, "timestep_scaling_factor", FlagType::kFloat, 10.0, "the boundary conditions' timestep scaling");
  t.add(kLcm, "ema_decay", FlagType::kFloat, 0.95, "the target UNet's EMA decay");
  t.add(kLcm, "cast_teacher_unet", FlagType::kSwitch, false, "store the teacher UNet in the weight dtype");

  t.add(kValidation, "validation_steps", FlagType::kInt, 200, "validate every this many optimizer steps");

  add_training_flags(t);
  t.set_default("output_dir", "lcm-xl-distilled");
  t.add("Logging", "tracker_project_name", FlagType::kString, "text2image-fine-tune",
        "TensorBoard subfolder of logging_dir (the script's tracker project)");
  add_method_flags(t, "lisa");
  return t;
}

}  // namespace lisadiff::recipes
