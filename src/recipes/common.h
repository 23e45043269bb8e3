// What the recipes share besides their flags: the data loader's position as a checkpoint
// part, where --dataset_name points, local files for the scripts' URL flags, and the
// pipeline folder a recipe writes at the end.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "config/json_fields.h"
#include "data/loader.h"
#include "train/trainer.h"

namespace lisadiff::recipes {

// The loader's position and counters in training_state.json (part "data_loader"), so that a
// resumed run sees the batches the uninterrupted one would have.
train::StatePart loader_state_part(data::DataLoader& loader);

// --dataset_name (a local image folder with metadata.jsonl, a shard spec, or a folder of
// .tar shards) and --train_data_dir into the keys data::DataOptions reads (train_data_dir,
// train_shards_path_or_url). A Hub id is refused with how to convert it
// (scripts/convert_hf_dataset.py). Throws UsageError naming the flag.
void resolve_dataset(config::Json& values);

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
