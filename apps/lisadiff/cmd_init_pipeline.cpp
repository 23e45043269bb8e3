#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "commands.h"
#include "core/exit_codes.h"
#include "tools/init_pipeline.h"

namespace lisadiff::cli {

CommandRunner add_init_pipeline(CLI::App& app) {
  auto options = std::make_shared<tools::InitPipelineOptions>();
  auto* cmd = app.add_subcommand("init-pipeline",
                                 "Write a Stable Diffusion pipeline folder with random weights (diffusers' initialisation)");
  cmd->add_option("--preset", options->preset, "Architecture preset")
      ->check(CLI::IsMember(tools::preset_names()))
      ->capture_default_str();
  cmd->add_option("--config", options->config_dir,
                  "Folder whose unet/, vae/, text_encoder/ config.json and scheduler/scheduler_config.json "
                  "replace the preset's")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--tokenizer", options->tokenizer_dir,
                  "Folder with vocab.json + merges.txt (default for sd15: the vocabulary scripts/setup.sh converts, " +
                      tools::default_clip_vocab_dir().string() + ")")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--seed", options->seed, "Seed: unet uses seed, vae seed + 1, text encoder seed + 2")
      ->capture_default_str();
  cmd->add_option("--out", options->out, "Output folder")->required();
  cmd->add_flag("--overwrite", options->overwrite, "Replace --out if it exists");
  return [cmd, options]() {
    if (!cmd->parsed()) return -1;
    tools::init_pipeline(*options);
    spdlog::info("wrote {} (preset {}, seed {})", options->out.string(), options->preset, options->seed);
    return exit_code::kOk;
  };
}

}  // namespace lisadiff::cli
