#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "commands.h"
#include "core/exit_codes.h"
#include "tools/plot.h"

namespace lisadiff::cli {

CommandRunner add_plot(CLI::App& app) {
  struct Options {
    std::string run;
    tools::PlotOptions plot;
  };
  auto options = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("plot", "Draw a training run's metrics.jsonl as a PNG (one panel per metric)");
  cmd->add_option("run", options->run, "Run folder (holding metrics.jsonl) or a metrics .jsonl file")->required();
  cmd->add_option("--out,-o", options->plot.out, "PNG to write (default: metrics.png beside metrics.jsonl)");
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
    const auto out = tools::plot_metrics(options->run, options->plot);
    spdlog::info("wrote {}", out.string());
    return exit_code::kOk;
  };
}

}  // namespace lisadiff::cli
