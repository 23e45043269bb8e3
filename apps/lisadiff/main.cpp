// lisadiff: the multi-tool. Parses the command line, runs one subcommand, and turns its
// outcome into an exit code (see src/core/exit_codes.h).
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "core/exit_codes.h"
#include "core/usage_error.h"
#include "core/logging.h"

namespace {

// " <name>" of the subcommand the command line chose (for the --help hint), or "".
std::string subcommand_of(const CLI::App& app) {
  for (const auto* sub : app.get_subcommands()) return " " + sub->get_name();
  return "";
}

}  // namespace

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
  // A first word that is neither an option nor a command: CLI11 would only say that a
  // subcommand is required, without naming the word.
  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    std::string names;
    for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
      known = known || sub->check_name(argv[1]);
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::fprintf(stderr, "error: unknown command '%s' (commands: %s; see lisadiff --help)\n", argv[1], names.c_str());
      return exit_code::kUsage;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version print and succeed; a usage mistake is one line naming it.
    if (e.get_exit_code() == 0) return app.exit(e) == 0 ? exit_code::kOk : exit_code::kUsage;
    std::fprintf(stderr, "error: %s (see lisadiff%s --help)\n", e.what(), subcommand_of(app).c_str());
    return exit_code::kUsage;
  }
  try {
    init_logging(log_level);
    for (const auto& run : commands) {
      const int rc = run();
      if (rc >= 0) return rc;
    }
    return exit_code::kUsage;
  } catch (const UsageError& e) {  // a flag's value: exit 2, as CLI11's own checks
    spdlog::error("{}", e.what());
    return exit_code::kUsage;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return exit_code::kError;
  }
}
