#include <iostream>
#include <memory>
#include <string>

#include "commands.h"
#include "core/exit_codes.h"
#include "tools/inspect.h"

namespace lisadiff::cli {

CommandRunner add_inspect(CLI::App& app) {
  struct Options {
    std::string path;
    std::string variant;
    bool json = false;
  };
  auto options = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("inspect", "Validate and summarise a pipeline folder or a .safetensors file");
  cmd->add_option("path", options->path, "Pipeline folder (with model_index.json) or .safetensors file")
      ->required();
  cmd->add_option("--variant", options->variant, "Weights variant, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors)");
  cmd->add_flag("--json", options->json, "Print the report as JSON");
  return [cmd, options]() {
    if (!cmd->parsed()) return -1;
    const auto report = tools::inspect(options->path, options->variant);
    std::cout << (options->json ? tools::to_json(report).dump(2) + "\n" : tools::to_text(report));
    return exit_code::kOk;
  };
}

}  // namespace lisadiff::cli
