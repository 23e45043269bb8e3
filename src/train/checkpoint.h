// Training checkpoints: `output_dir/checkpoint-<global step>/`, the diffusers scripts'
// layout and rotation (recipes.md section 1.5), written so that a crash never leaves a
// half checkpoint that resuming could pick up:
//   - everything is written into `output_dir/.checkpoint-<step>.tmp-<pid>/`, each file itself
//     through a temporary name and fsync;
//   - `checkpoint.json` (step, time, file list) is written last, then the folder is renamed
//     to `checkpoint-<step>`; a folder without checkpoint.json is never a checkpoint;
//   - rotation (checkpoints_total_limit) deletes the oldest complete checkpoints once the new
//     one is in place (diffusers deletes first, which leaves nothing when that save fails),
//     and leftovers of interrupted saves are removed.
// `resume_from_checkpoint`: "latest" (the complete checkpoint with the largest step) or a
// name/path whose basename is looked up inside output_dir (diffusers' rule).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "train/fused_optimizer.h"

namespace lisadiff::train {

class CheckpointManager {
 public:
  CheckpointManager(std::filesystem::path output_dir, std::optional<int> total_limit = std::nullopt);

  // Writes checkpoint-<step>: `write` fills the temporary folder it is given. Returns the
  // final path. If `write` throws, nothing named checkpoint-<step> appears and the
  // temporary folder is removed.
  std::filesystem::path save(int64_t step, const std::function<void(const std::filesystem::path& dir)>& write);

  // Complete checkpoints (those holding checkpoint.json), ascending by step.
  std::vector<std::pair<int64_t, std::filesystem::path>> list() const;
  // "latest" or a checkpoint name/path (its basename, inside output_dir); nullopt when none
  // exists (the caller starts fresh and says so, as diffusers does).
  std::optional<std::filesystem::path> find(const std::string& resume_from) const;
  // The step number of a checkpoint folder (from its checkpoint.json).
  static int64_t step_of(const std::filesystem::path& checkpoint);

  const std::filesystem::path& output_dir() const { return output_dir_; }

 private:
  std::filesystem::path output_dir_;
  std::optional<int> total_limit_;
};

// The optimizer's per-tensor state as one safetensors file ("<param>/exp_avg",
// "<param>/exp_avg_sq", "<param>/step", or the 8-bit state's tensors) and back.
void save_optimizer_state(const FusedOptimizer& optimizer, const std::filesystem::path& file);
void load_optimizer_state(FusedOptimizer& optimizer, const std::filesystem::path& file);

// The default CPU generator's state (and the current CUDA device's, when CUDA is present),
// so that dropout and noise sampling continue as in an uninterrupted run.
void save_rng_states(const std::filesystem::path& file);
void load_rng_states(const std::filesystem::path& file);
// The same states as bytes (generator name and state, for gathering every rank's on rank 0)
// and those bytes written as save_rng_states writes its file.
std::string rng_states_bytes();
void write_rng_states(const std::filesystem::path& file, const std::string& bytes);

}  // namespace lisadiff::train
