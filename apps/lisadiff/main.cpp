// lisadiff: the multi-tool. Parses the command line, runs one subcommand, and turns its
// outcome into an exit code (see src/core/exit_codes.h).
#include <exception>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "core/exit_codes.h"
#include "core/logging.h"

int main(int argc, char** argv) {
  using namespace lisadiff;
  CLI::App app{"lisadiff: LISA fine-tuning of Stable Diffusion in C++/LibTorch", "lisadiff"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(LISADIFF_VERSION));
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));

  const std::vector<cli::CommandRunner> commands = {cli::add_inspect(app), cli::add_init_pipeline(app),
                                                    cli::add_plot(app), cli::add_make_dataset(app),
                                                    cli::add_generate(app), cli::add_launch(app),
                                                    cli::add_score(app), cli::add_train_vae(app),
                                                    cli::add_eval_loss(app)};
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? exit_code::kOk : exit_code::kUsage;
  }
  try {
    init_logging(log_level);
    for (const auto& run : commands) {
      const int rc = run();
      if (rc >= 0) return rc;
    }
    return exit_code::kUsage;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return exit_code::kError;
  }
}
