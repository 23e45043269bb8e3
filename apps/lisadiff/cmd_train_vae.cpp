#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "commands.h"
#include "core/exit_codes.h"
#include "tools/train_vae.h"

namespace lisadiff::cli {

CommandRunner add_train_vae(CLI::App& app) {
  auto o = std::make_shared<tools::TrainVaeOptions>();
  auto* cmd = app.add_subcommand("train-vae",
                                 "Fit a pipeline's VAE to an image dataset (for pipelines made from scratch); "
                                 "writes the pipeline with the trained vae/");
  cmd->add_option("pipeline", o->pipeline, "Pipeline folder whose vae/ is trained")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--train_data_dir", o->train_data_dir, "Image folder with metadata.jsonl (docs/data.md)");
  cmd->add_option("--train_shards", o->train_shards, "Webdataset shards instead of a folder");
  cmd->add_option("--out", o->out, "Output pipeline folder")->required();
  cmd->add_flag("--overwrite", o->overwrite, "Replace --out if it exists");
  cmd->add_option("--resolution", o->resolution, "Training image side (0: the VAE's sample_size)")->capture_default_str();
  cmd->add_option("--train_batch_size", o->batch_size, "Images per step")->capture_default_str();
  cmd->add_option("--max_train_steps", o->max_train_steps, "Optimizer steps")->capture_default_str();
  cmd->add_option("--learning_rate", o->learning_rate, "AdamW learning rate")->capture_default_str();
  cmd->add_option("--kl_weight", o->kl_weight, "Weight of the KL term against N(0, 1)")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the data order and the latent samples")->capture_default_str();
  cmd->add_option("--log_every", o->log_every, "Steps between progress lines")->capture_default_str();
  return [cmd, o]() {
    if (!cmd->parsed()) return -1;
    const auto s = tools::train_vae(*o);
    spdlog::info("train-vae: reconstruction mse {:.5f} -> {:.5f}, scaling_factor {:.5f}, {:.1f} s; wrote {}",
                 s.first_loss, s.last_loss, s.scaling_factor, s.seconds, o->out.string());
    return exit_code::kOk;
  };
}

}  // namespace lisadiff::cli
