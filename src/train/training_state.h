// training_state.json, the state file of a checkpoint folder (src/train/trainer.h lists the
// folder): read and checked as a whole before a resume changes anything, so that a file
// edited by hand, truncated or written by another kind of run is refused with one line
// naming it, and never half-applied.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace lisadiff::train {

// 2: the LISA set of a checkpoint is the one that trained up to its step (format 1 held the
// next one), and the state records what a resume must match.
constexpr int kTrainingStateFormat = 2;

struct SavedTrainingState {
  int format = kTrainingStateFormat;
  std::int64_t global_step = 0;
  std::int64_t schedule_step = 0;  // the lr schedule's step (<= global_step)
  std::int64_t micro_batches = 0;
  std::string method;           // method_name(): "full", "lisa", "lora"
  std::string model;            // "unet", ...
  std::string recipe;           // "text_to_image", ...; empty when not saved (tests, tools)
  std::string mixed_precision;  // precision_name(): "no", "fp16", "bf16"
  int gradient_accumulation_steps = 1;
  int world_size = 1;
  nlohmann::json lisa;        // the LISA state (an object), null when the run had none
  nlohmann::json parts;       // recipe state by part name (an object)
  nlohmann::json rank_parts;  // null, or one `parts` object per process (world_size of them)
};

// Checks every field's presence, type and range. Throws lisadiff::Error "<file>: <problem>".
SavedTrainingState parse_training_state(const nlohmann::json& state, const std::string& file);

}  // namespace lisadiff::train
