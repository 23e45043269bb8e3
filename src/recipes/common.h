// What the recipes share besides their flags: the data loader's position as a checkpoint
// part, where --dataset_name points, local files for the scripts' URL flags, and the
// pipeline folder a recipe writes at the end.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "config/json_fields.h"
#include "data/loader.h"
#include "models/state.h"
#include "recipes/options.h"
#include "train/trainer.h"

namespace lisadiff::recipes {

// The start every recipe run shares: the base pipeline folder checked first (a Hub id is the
// most common mistake, reported before anything is logged), the parsed values laid over the
// table's defaults (recipe_values), and the dataset flags resolved (resolve_dataset) when the
// table has --dataset_name.
struct RecipeRun {
  config::Json values;          // every flag's value
  std::string source;           // "command line" or "FILE.json + command line", for messages
  std::filesystem::path base;   // the value of `base_flag`
};
RecipeRun start_run(const FlagTable& table, const ParsedArgs& parsed,
                    const std::string& base_flag = "pretrained_model_name_or_path");

// The settings every recipe reads alike: --variant, --seed (recipe_values resolved None) and
// --allow_tf32, and the base flag claimed (start_run read it).
struct CommonSettings {
  std::string variant;  // "" for none
  int seed = 0;
  bool allow_tf32 = false;
};
CommonSettings read_common_settings(config::FieldReader& reader,
                                    const std::string& base_flag = "pretrained_model_name_or_path");

// The scripts' step count and learning rate: max_train_steps from num_train_epochs when it is
// not given (epochs x ceil(batches per epoch / gradient_accumulation_steps)), and --scale_lr
// (lr x accumulation x batch x processes). `reader` (over `values`) is told that
// num_train_epochs and scale_lr are read here. Throws UsageError for an accumulation or epoch
// count below 1, or shards (epoch length unknown) without --max_train_steps.
void derive_step_count(config::Json& values, config::FieldReader& reader, int64_t batches_per_epoch, int world_size);

// --resolution: a positive multiple of 8 (the VAE's latents), else UsageError.
void check_resolution(const config::Json& values);

// The scripts' weight_dtype: float16 / bfloat16 under that mixed precision, else float32.
torch::ScalarType weight_dtype_of(train::MixedPrecision precision);
// How a recipe loads a model that never trains (the VAE, the text encoder, a teacher or a
// reference UNet): frozen, in `dtype` on `device`; on a CPU, where the dtype is the file's, a
// view of the memory-mapped weight file (clean file pages, no copy; models::LoadOptions::map_file),
// as diffusers' safetensors loading leaves frozen weights file-backed.
models::LoadOptions frozen_load_options(torch::ScalarType dtype, torch::Device device);

// The device a recipe trains on: the CUDA device of this process's LOCAL_RANK when there is
// CUDA, else the CPU; with allow_tf32 TF32 matmuls are switched on there.
torch::Device training_device(bool allow_tf32 = false);

// A multi-process run (torchrun's environment, train/distributed.h): the process group
// joined on `device` when WORLD_SIZE > 1, else none, and this rank's share of the data in
// `data` (rank, world_size). Call before the models load, so that a rendezvous that fails
// fails first.
struct DistributedRun {
  train::DistEnv env;
  std::shared_ptr<train::ProcessGroup> group;  // null for one process
};
DistributedRun join_process_group(data::DataOptions& data, torch::Device device);

// The loader's position and counters in training_state.json (part "data_loader"), so that a
// resumed run sees the batches the uninterrupted one would have.
train::StatePart loader_state_part(data::DataLoader& loader);

// --dataset_name (a local image folder with metadata.jsonl, a shard spec, or a folder of
// .tar shards) and --train_data_dir into the keys data::DataOptions reads (train_data_dir,
// train_shards_path_or_url). With a "dataset_split_name" key (DPO's --dataset_split_name) a
// dataset folder that holds split folders (train/, validation/, ...) is read from the named
// one; a folder without split folders is read as it is. A Hub id is refused with how to convert it
// (scripts/convert_hf_dataset.py). Throws UsageError naming the flag.
void resolve_dataset(config::Json& values);

// The LCM distillation script's four validation prompts (VALIDATION_PROMPTS), which the
// Diffusion-DPO script reuses.
const std::vector<std::string>& lcm_validation_prompts();

// A local file for a URL flag (--val_image_url): a path or a file:// URL; http(s) is refused
// with the reason. Throws UsageError naming the flag.
std::filesystem::path local_file(const std::string& url, const std::string& flag);

// Writes a diffusers pipeline folder at `out` from the base folder: the components in
// `written` (already in `out`, e.g. "unet") stay, every other component folder of the base's
// model_index.json (vae, text_encoder, tokenizer, scheduler, safety_checker,
// feature_extractor, ...) is copied unchanged, and model_index.json gets `class_name`.
void complete_pipeline_folder(const std::filesystem::path& base, const std::filesystem::path& out,
                              const std::vector<std::string>& written, const std::string& class_name);

}  // namespace lisadiff::recipes
