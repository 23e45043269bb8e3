// The flags the recipe executables share, written once: what the three diffusers scripts have
// in common (model, training loop, optimizer, checkpoints, logging, the Python/Hub flags) with
// their common defaults, and lisadiff's own method flags (--method, the LISA and LoRA knobs).
// A recipe adds its own flags and changes the defaults that differ (FlagTable::set_default).
//
// Reading: recipe_values() lays the parsed values over the table's defaults; a FieldReader
// over that object fills train::TrainerOptions (TrainerOptions::read), data::DataOptions
// (DataOptions::read) and the recipe's own options, and finish_reading() fails for a key no
// reader claimed (a table entry that nothing uses is a programming error, caught by the
// recipe's tests).
#pragma once

#include <string>

#include "config/json_fields.h"
#include "recipes/options.h"
#include "train/trainer.h"

namespace lisadiff::recipes {

// Headings of the --help groups that more than one flag table uses.
namespace flag_group {
inline constexpr const char* kModel = "Model";
inline constexpr const char* kData = "Data";
inline constexpr const char* kValidation = "Validation";
}  // namespace flag_group

// --pretrained_model_name_or_path (required), --revision, --variant, --cache_dir.
void add_model_flags(FlagTable& table);
// The dataset flags of the scripts that read `datasets` image folders (InstructPix2Pix,
// text-to-image): --dataset_name, --dataset_config_name (a note), --train_data_dir,
// --max_train_samples; and --non_ema_revision (a note).
void add_folder_dataset_flags(FlagTable& table);

// The training loop, optimizer, precision, checkpoint and logging flags of the scripts, and
// the Python/Hub flags (accepted with a note, or refused: --push_to_hub).
void add_training_flags(FlagTable& table);
// --method and the LISA / LoRA knobs; `default_method` is the recipe's ("lisa", or "lora" for
// DPO, whose original trains LoRA).
void add_method_flags(FlagTable& table, const std::string& default_method);

// The parsed values over the table's defaults, so that every flag has a value, with the
// --rank, the diffusers LoRA scripts' name of --lora_rank (train_diffusion_dpo.py,
// train_text_to_image_lora.py): add_rank_alias_flag adds it to a table; merge_rank_alias makes
// both keys hold one value after recipe_values (a conflict on the command line is a UsageError).
void add_rank_alias_flag(FlagTable& table);
void merge_rank_alias(const ParsedArgs& parsed, config::Json& values);

// None values the readers cannot take resolved: --seed None becomes a random seed (logged),
// --mixed_precision None "no", --lisa_seed None the run's seed. Read train::TrainerOptions
// from it with TrainerOptions::read (the keys of add_training_flags and add_method_flags).
config::Json recipe_values(const FlagTable& table, const ParsedArgs& parsed);

// Claims the flags that lisadiff accepts without using (Handling kNote/kRefuse), then throws
// lisadiff::Error naming any key no reader claimed.
void finish_reading(const FlagTable& table, config::FieldReader& reader);

// Calls `read` (typed options read from the command line and config values, and validated)
// and turns a lisadiff::Error it throws into a UsageError: a bad value of a flag or config
// key is a usage mistake, exit code 2, like an unknown flag.
template <class Read>
auto reading_values(Read&& read) -> decltype(read()) {
  try {
    return read();
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
}

}  // namespace lisadiff::recipes
