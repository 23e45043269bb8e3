#include <cstdio>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/exit_codes.h"
#include "io/atomic_file.h"
#include "tools/eval_loss.h"

namespace lisadiff::cli {

CommandRunner add_eval_loss(CLI::App& app) {
  struct Options {
    tools::EvalLossOptions eval;
    std::string json;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("eval-loss",
                                 "The text-to-image loss of a pipeline (or a trained UNet / LoRA) on held-out images, "
                                 "with seeded noise and timesteps");
  cmd->add_option("pipeline", o->eval.pipeline, "Pipeline folder")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--train_data_dir,--data", o->eval.train_data_dir, "Held-out image folder with metadata.jsonl")->required();
  cmd->add_option("--unet", o->eval.unet, "A trained unet/ folder instead of the pipeline's")->check(CLI::ExistingDirectory);
  cmd->add_option("--lora", o->eval.lora, "A LoRA file over the UNet")->check(CLI::ExistingFile);
  cmd->add_option("--resolution", o->eval.resolution, "Image side (0: the UNet's sample size)")->capture_default_str();
  cmd->add_option("--batch_size", o->eval.batch_size, "Images per forward pass")->capture_default_str();
  cmd->add_option("--repeats", o->eval.repeats, "Noise and timestep draws per image")->capture_default_str();
  cmd->add_option("--max_samples", o->eval.max_samples, "Images used (-1: all)")->capture_default_str();
  cmd->add_option("--seed", o->eval.seed, "Seed of the draws")->capture_default_str();
  cmd->add_option("--json", o->json, "Also write the result as JSON to this file");
  return [cmd, o]() {
    if (!cmd->parsed()) return -1;
    const auto s = tools::eval_loss(o->eval);
    std::printf("%s\n", fmt::format("eval-loss: {:.6f} ({} images x {} draws, {:.1f} s)", s.loss, s.images,
                                    o->eval.repeats, s.seconds)
                            .c_str());
    if (!o->json.empty()) {
      io::write_file_atomic(o->json, nlohmann::json{{"loss", s.loss}, {"images", s.images}, {"draws", s.draws},
                                                    {"seed", o->eval.seed}}
                                             .dump() +
                                         "\n");
    }
    return exit_code::kOk;
  };
}

}  // namespace lisadiff::cli
