// `lisadiff plot`: turns a training run's metrics.jsonl into a PNG with one panel per metric,
// stacked over a shared step axis, with LISA re-draws and checkpoints as vertical markers.
// Several runs (LISA, LoRA and full fine-tuning of the same task) can share one figure: each
// panel then draws one line per run, in the run's colour, with a legend in the header.
//
// metrics.jsonl (the contract training runs follow; README.md, "lisadiff plot"):
//   one JSON object per line, e.g.
//     {"step": 12, "loss": 0.1834, "lr": 9.6e-05, "grad_norm": 1.23, "epoch": 0}
//     {"step": 50, "event": "recall"}
//   - "step" (a number, the optimizer step) is required on every line;
//   - every other key with a numeric value is a metric; null or a missing key means "no value
//     at this step" (a writer stores NaN/inf as null, which nlohmann::json does by itself);
//     values of other types (strings, booleans, objects) are ignored;
//   - "event": "recall" (LISA drew new layers) or "checkpoint" (a checkpoint was written)
//     marks the step; other event names are drawn as grey markers;
//   - a step that appears again (a run resumed from a checkpoint) replaces the earlier value.
// An incomplete last line (a run that is still writing or crashed) and any malformed line are
// skipped with a warning naming the file and line number; a file without any numeric metric is
// an error.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "io/canvas.h"

namespace lisadiff::tools {

// The figure is drawn on an io::Canvas (cairo, DejaVu Sans); its types name pixels here too.
using io::Canvas;
using io::PixelRect;
using io::Point;
using io::Rgb;

// One metric's values, ordered by step (each step at most once).
struct MetricSeries {
  std::string name;
  std::vector<double> steps;
  std::vector<double> values;
};

struct MetricEvent {
  double step = 0;
  std::string kind;  // "recall", "checkpoint", or whatever the line said
};

struct MetricsLog {
  std::filesystem::path file;
  std::vector<MetricSeries> series;   // in order of first appearance in the file
  std::vector<MetricEvent> events;    // in file order
  std::vector<std::string> warnings;  // every skipped line, "<file>: line N: <problem>"
  std::size_t records = 0;            // lines that were read as records

  const MetricSeries* find(std::string_view name) const;  // nullptr when absent
  std::vector<std::string> names() const;
};

// The metrics file of a run: `run_dir_or_file` itself when it is a file, else
// run_dir_or_file / "metrics.jsonl".
std::filesystem::path metrics_file(const std::filesystem::path& run_dir_or_file);

// Parses metrics.jsonl text; `file` is only used in messages. Warnings are logged (spdlog)
// and kept in the result. Throws lisadiff::Error naming the file when there is no numeric
// metric at all (an empty file included).
MetricsLog parse_metrics(std::string_view text, const std::filesystem::path& file);
// Reads and parses a file; a missing or unreadable file is a lisadiff::Error naming it.
MetricsLog read_metrics(const std::filesystem::path& file);

struct PlotOptions {
  std::filesystem::path out;          // empty: metrics.png beside the metrics file
  std::vector<std::string> metrics;   // panels, top to bottom; empty: loss, implicit_acc, raw_model_loss, ref_loss, lr (those present)
  std::vector<std::string> log_y;     // metrics drawn on a log10 y axis (values <= 0 left out)
  // Moving-average window, in records, overlaid on metrics whose name contains "loss" (the raw
  // curve stays, lighter). 0: automatic (about 1/20 of the points), 1: no overlay.
  int smooth = 0;
  int width = 1000;                   // pixels, 320 to 8000
  int height = 0;                     // pixels, 0: automatic (grows with the number of panels)
};

// Tick positions and labels for an axis over [lo, hi] (data units; lo > 0 for a log axis).
// Linear: multiples of one step of 1, 2 or 5 x 10^k, at most about max_ticks of them; labels
// in fixed notation with the decimals the step needs ("0.05", "0.10"), or scientific when
// values are small or large ("2e-5", "1e-4", "1.5e6"). Log: whole decades (every n-th when
// there are many), else 1/2/5 x 10^k, else linear ticks.
struct AxisTick {
  double value;  // data units
  std::string label;
};
std::vector<AxisTick> axis_ticks(double lo, double hi, int max_ticks, bool log_scale);

// Where one panel's data went on the image, for tests and for anyone annotating a figure.
struct PanelLayout {
  std::string metric;
  PixelRect plot;               // the data area inside the axes
  double y_min = 0, y_max = 0;  // y range at the plot's bottom and top edges (data units)
  bool log_y = false;
  int smooth_window = 1;        // 1: no moving-average overlay; several runs: the largest one
  // Each run's moving-average window, in run order (1 where a run has no values here); one
  // entry, smooth_window, for a single run.
  std::vector<int> run_windows;
};

// One run of a figure with several: the name in the legend, the colour of its lines, and
// where the legend's swatch of that colour is (its label follows on the right).
struct RunKey {
  std::string label;
  Rgb color;
  PixelRect swatch;
};

struct Figure {
  Canvas canvas;
  double x_min = 0, x_max = 0;  // step range at the left and right edges of every plot
  std::vector<PanelLayout> panels;
  // Several runs: one per run, in the order given. Empty for a single run, whose lines take
  // each panel's own colour instead.
  std::vector<RunKey> runs;

  // Pixel position (continuous; pixel centres sit at +0.5) of (step, value) in panel i.
  Point to_pixel(std::size_t panel, double step, double value) const;
};

// Draws the figure; throws lisadiff::Error for options that do not fit the log (a metric it
// does not have, a size too small for the panels).
Figure render_metrics(const MetricsLog& log, const PlotOptions& options);

// The most runs one figure takes: the colours of the palette (Okabe-Ito's eight, which stay
// apart for colour-blind readers too).
constexpr std::size_t kMaxPlotRuns = 8;

// Draws several runs in one figure. One log is render_metrics, pixel for pixel (a label, if
// given, replaces the folder's name in the header). With several:
//   - each panel draws one line per run in the run's colour (Figure::runs; the palette in run
//     order), with the run's raw loss lighter under its own moving average (automatic window:
//     about 1/20 of that run's points); a header legend names the runs;
//   - labels: one per log, or none; an empty entry (or no labels) takes the run's own name:
//     its folder's (the file's stem when it is not metrics.jsonl), with as many parent folders
//     as it takes to tell runs with the same name apart ("lisa/run", "lora/run");
//   - panels: options.metrics, each of which must be in at least one run (a run without it
//     has no line there); by default those of render_metrics' default list that at least one
//     run has, else every metric of every run;
//   - the step axis spans every run's plotted steps, each y axis the values of every run;
//   - events (LISA re-draws, checkpoints) are not drawn: one run's markers across the
//     others' lines would say something about them that is not so.
// Throws lisadiff::Error for no logs, more than kMaxPlotRuns, a label count that is neither
// 0 nor logs.size() (the message names --labels), and whatever render_metrics would.
Figure render_runs(const std::vector<MetricsLog>& logs, const std::vector<std::string>& labels,
                   const PlotOptions& options);

// The mistakes in plot_runs' arguments that are the command line's, as one line naming the
// flag (what render_runs and plot_runs throw), or "" when there is none: no runs, more than
// kMaxPlotRuns, a label count that is neither 0 nor `runs`, several runs and no output path.
// The CLI asks first, to exit with 2 as for any other usage error.
std::string plot_runs_problem(std::size_t runs, std::size_t labels, bool has_out);

// read_metrics + render_metrics + an atomic PNG write. Returns the path written.
std::filesystem::path plot_metrics(const std::filesystem::path& run_dir_or_file, const PlotOptions& options);

// read_metrics of every run (in order; the first that cannot be read is the error, naming
// its file) + render_runs + an atomic PNG write. One run: plot_metrics. Several: options.out
// is required (there is no one run folder to write into; the error names --out). Returns the
// path written.
std::filesystem::path plot_runs(const std::vector<std::filesystem::path>& runs, const std::vector<std::string>& labels,
                                const PlotOptions& options);

}  // namespace lisadiff::tools
