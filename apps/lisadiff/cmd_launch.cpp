#include <memory>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "commands.h"
#include "core/exit_codes.h"
#include "tools/launch.h"

namespace lisadiff::cli {

CommandRunner add_launch(CLI::App& app) {
  auto options = std::make_shared<tools::LaunchOptions>();
  auto mixed = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand(
      "launch",
      "Run an app on several processes (accelerate launch / torchrun): lisadiff launch [options] APP [APP ARGS...]. "
      "APP: instruct_pix2pix, diffusion_dpo, lcm_distill, text_to_image, a diffusers script name (train_instruct_pix2pix.py, ...) "
      "or a path. See docs/distributed.md");
  // Everything from APP on is the app's command line.
  cmd->prefix_command();
  cmd->add_option("--num_processes", options->num_processes, "Processes in all, over every machine")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--num_machines", options->num_machines, "Machines taking part")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--machine_rank", options->machine_rank, "This machine's index (0: the one that serves the rendezvous)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--main_process_ip", options->main_process_ip, "Address of machine 0")->capture_default_str();
  cmd->add_option("--main_process_port", options->main_process_port, "Port of the rendezvous on machine 0")
      ->check(CLI::Range(1, 65535))
      ->capture_default_str();
  cmd->add_option("--mixed_precision", *mixed, "no, fp16 or bf16: passed on to the app unless its arguments set it")
      ->check(CLI::IsMember({"no", "fp16", "bf16"}));
  cmd->add_option("--gpu_ids", options->gpu_ids, "GPUs the processes may use, e.g. 0,1 (CUDA_VISIBLE_DEVICES); all: every one");
  return [cmd, options, mixed]() {
    if (!cmd->parsed()) return -1;
    if (!mixed->empty()) options->mixed_precision = *mixed;
    auto rest = cmd->remaining();
    if (rest.empty()) {
      spdlog::error("launch: no app given: lisadiff launch [options] APP [APP ARGS...]");
      return exit_code::kUsage;
    }
    if (rest.front().rfind("-", 0) == 0) {
      // Launcher options come before APP; a dash here is a mistyped one, not an app.
      spdlog::error("launch: unknown option {} (the options are --num_processes, --num_machines, --machine_rank, "
                    "--main_process_ip, --main_process_port, --mixed_precision, --gpu_ids; then APP and its arguments)",
                    rest.front());
      return exit_code::kUsage;
    }
    options->app = rest.front();
    options->args.assign(rest.begin() + 1, rest.end());
    return tools::launch(*options);
  };
}

}  // namespace lisadiff::cli
