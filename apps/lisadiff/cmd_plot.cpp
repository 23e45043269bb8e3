#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "commands.h"
#include "core/exit_codes.h"
#include "tools/plot.h"

namespace lisadiff::cli {

CommandRunner add_plot(CLI::App& app) {
  struct Options {
    std::vector<std::string> runs;
    std::vector<std::string> labels;
    tools::PlotOptions plot;
  };
  auto options = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "plot", "Draw training runs' metrics.jsonl as a PNG (one panel per metric; several runs: one line per run)");
  cmd->add_option("run", options->runs,
                  "Run folders (holding metrics.jsonl) or metrics .jsonl files; several (up to 8) share one figure")
      ->required();
  cmd->add_option("--out,-o", options->plot.out,
                  "PNG to write (default with one run: metrics.png beside metrics.jsonl; required with several)");
  cmd->add_option("--labels", options->labels,
                  "Legend names of the runs, in order, e.g. lisa,lora,full (default: each run's folder name)")
      ->delimiter(',')
      ->allow_extra_args(false);
  cmd->add_option("--metrics", options->plot.metrics,
                  "Metrics to plot, top to bottom, e.g. loss,lr,grad_norm (default: loss, DPO's implicit_acc, raw_model_loss and ref_loss when present, lr)")
      ->delimiter(',')
      ->allow_extra_args(false);
  cmd->add_option("--log-y", options->plot.log_y, "Metrics drawn on a log y axis, e.g. loss (values <= 0 left out)")
      ->delimiter(',')
      ->allow_extra_args(false);
  cmd->add_option("--smooth", options->plot.smooth,
                  "Moving-average window (records) overlaid on loss curves; 0: automatic, 1: none")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--width", options->plot.width, "Image width in pixels")
      ->check(CLI::Range(320, 8000))
      ->capture_default_str();
  cmd->add_option("--height", options->plot.height, "Image height in pixels (0: grows with the number of panels)")
      ->check(CLI::Range(0, 16000))
      ->capture_default_str();
  return [cmd, options]() {
    if (!cmd->parsed()) return -1;
    // The library throws these too, but what it throws exits with 1; a command-line mistake is 2.
    if (const std::string problem =
            tools::plot_runs_problem(options->runs.size(), options->labels.size(), !options->plot.out.empty());
        !problem.empty()) {
      spdlog::error("{}", problem);
      return exit_code::kUsage;
    }
    const std::vector<std::filesystem::path> runs(options->runs.begin(), options->runs.end());
    const auto out = tools::plot_runs(runs, options->labels, options->plot);
    spdlog::info("wrote {}", out.string());
    return exit_code::kOk;
  };
}

}  // namespace lisadiff::cli
