// Subcommands of the `lisadiff` multi-tool. Each add_* registers its flags on `app` and
// returns the function that runs it once the command line has been parsed.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace lisadiff::cli {

using CommandRunner = std::function<int()>;

CommandRunner add_inspect(CLI::App& app);
CommandRunner add_init_pipeline(CLI::App& app);
CommandRunner add_plot(CLI::App& app);
CommandRunner add_make_dataset(CLI::App& app);
CommandRunner add_generate(CLI::App& app);
CommandRunner add_launch(CLI::App& app);
CommandRunner add_score(CLI::App& app);
CommandRunner add_train_vae(CLI::App& app);
CommandRunner add_eval_loss(CLI::App& app);

}  // namespace lisadiff::cli
