// `lisadiff launch`: accelerate launch / torchrun for lisadiff's apps. Starts the processes of
// one machine with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT, GROUP_RANK), prefixes each line they print with its rank, forwards
// SIGINT/SIGTERM to them, and when one fails stops the others (SIGTERM, then SIGKILL after a
// grace period) and exits non-zero, as torchrun does. docs/distributed.md.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace lisadiff::tools {

struct LaunchOptions {
  int num_processes = 1;  // in all, over every machine (accelerate's meaning)
  int num_machines = 1;
  int machine_rank = 0;
  std::string main_process_ip = "127.0.0.1";
  int main_process_port = 29500;
  std::optional<std::string> mixed_precision;  // passed on as --mixed_precision unless the app's args have it
  std::string gpu_ids;                         // CUDA_VISIBLE_DEVICES of the processes ("" or "all": unchanged)
  double grace_seconds = 10;                   // SIGTERM to SIGKILL when stopping the others
  std::string app;                             // an app name, a diffusers script name or a path
  std::vector<std::string> args;
};

// The executable for `app`: a path as it is; an app name (instruct_pix2pix, diffusion_dpo,
// lcm_distill) or the diffusers script it follows (train_instruct_pix2pix.py, ...) beside the
// running lisadiff executable, else on PATH. Extra arguments a script name implies (the LoRA
// scripts' --method lora) are appended to `args`. Throws lisadiff::Error for an unknown app.
std::string resolve_app(const std::string& app, std::vector<std::string>& args);

// Runs the processes of this machine until they end. Returns 0 when all of them succeeded,
// else the exit code of the first that failed (128 + signal for one that was killed).
// Throws lisadiff::Error for inconsistent options (a usage error: exit code 2).
int launch(const LaunchOptions& options);

}  // namespace lisadiff::tools
