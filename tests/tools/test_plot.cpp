// `lisadiff plot`: metrics.jsonl parsing (values, gaps, events, broken lines), axis ticks, where
// known series land in the decoded PNG, and the CLI. The canvas it draws on (lines, text) has
// its own tests, tests/io/test_canvas.cpp.
#include <algorithm>
#include <cmath>

#define STBI_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>

#include "tools/plot.h"
#include "test_util.h"

namespace lisadiff::tools {
namespace {

namespace fs = std::filesystem;
using lisadiff::testing::CapturedLog;
using lisadiff::testing::cli_path;
using lisadiff::testing::run_command;
using lisadiff::testing::TempDir;
using lisadiff::testing::write_file;

constexpr Rgb kWhite{255, 255, 255};

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

TEST(PlotParse, SeriesInOrderOfFirstAppearanceWithTheirSteps) {
  const auto log = parse_metrics(
      "{\"step\": 0, \"loss\": 0.5, \"lr\": 1e-4}\n"
      "{\"step\": 1, \"loss\": 0.25, \"lr\": 9e-5, \"grad_norm\": 1.5}\n"
      "{\"step\": 2, \"loss\": 0.125, \"lr\": 8e-5, \"phase\": \"train\", \"ok\": true}\n",
      "run/metrics.jsonl");
  EXPECT_EQ(log.names(), (std::vector<std::string>{"loss", "lr", "grad_norm"}));  // strings, booleans: not metrics
  EXPECT_EQ(log.records, 3u);
  EXPECT_TRUE(log.warnings.empty());
  EXPECT_EQ(log.find("loss")->steps, (std::vector<double>{0, 1, 2}));
  EXPECT_EQ(log.find("loss")->values, (std::vector<double>{0.5, 0.25, 0.125}));
  EXPECT_EQ(log.find("lr")->values, (std::vector<double>{1e-4, 9e-5, 8e-5}));
  EXPECT_EQ(log.find("grad_norm")->steps, (std::vector<double>{1}));
  EXPECT_EQ(log.find("step"), nullptr);
}

TEST(PlotParse, MissingAndNullKeysLeaveGaps) {
  const auto log = parse_metrics(
      "{\"step\": 10, \"loss\": 1.0, \"lr\": 0.1}\n"
      "{\"step\": 20, \"lr\": 0.2}\n"
      "{\"step\": 30, \"loss\": null, \"lr\": 0.3}\n"
      "{\"step\": 40, \"loss\": 4.0, \"lr\": null}\n",
      "m.jsonl");
  EXPECT_EQ(log.find("loss")->steps, (std::vector<double>{10, 40}));
  EXPECT_EQ(log.find("loss")->values, (std::vector<double>{1.0, 4.0}));
  EXPECT_EQ(log.find("lr")->steps, (std::vector<double>{10, 20, 30}));
  EXPECT_TRUE(log.warnings.empty());
}

TEST(PlotParse, EventsAreKeptWithTheirSteps) {
  const auto log = parse_metrics(
      "{\"step\": 0, \"loss\": 1}\n"
      "{\"step\": 50, \"event\": \"recall\"}\n"
      "{\"step\": 100, \"loss\": 0.5, \"event\": \"checkpoint\"}\n"
      "{\"step\": 150, \"event\": \"something-new\"}\n",
      "m.jsonl");
  ASSERT_EQ(log.events.size(), 3u);
  EXPECT_EQ(log.events[0].step, 50);
  EXPECT_EQ(log.events[0].kind, "recall");
  EXPECT_EQ(log.events[1].step, 100);
  EXPECT_EQ(log.events[1].kind, "checkpoint");
  EXPECT_EQ(log.events[2].kind, "something-new");
  EXPECT_EQ(log.find("loss")->values, (std::vector<double>{1, 0.5}));  // an event line's metrics count
}

TEST(PlotParse, RepeatedStepReplacesTheEarlierValue) {
  // A run resumed from the checkpoint at step 2 writes steps 2 and 3 again.
  const auto log = parse_metrics(
      "{\"step\": 1, \"loss\": 1}\n{\"step\": 2, \"loss\": 2}\n{\"step\": 3, \"loss\": 3}\n"
      "{\"step\": 2, \"loss\": 20}\n{\"step\": 3, \"loss\": 30}\n",
      "m.jsonl");
  EXPECT_EQ(log.find("loss")->steps, (std::vector<double>{1, 2, 3}));
  EXPECT_EQ(log.find("loss")->values, (std::vector<double>{1, 20, 30}));
}

TEST(PlotParse, TruncatedLastLineIsSkippedWithAWarning) {
  CapturedLog captured;
  const auto log = parse_metrics("{\"step\": 1, \"loss\": 0.5}\n\n{\"step\": 2, \"loss\": 0.4}\n{\"step\": 3, \"lo",
                                 "crashed/metrics.jsonl");
  EXPECT_EQ(log.find("loss")->steps, (std::vector<double>{1, 2}));
  ASSERT_EQ(log.warnings.size(), 1u);
  EXPECT_NE(log.warnings[0].find("crashed/metrics.jsonl: line 4: incomplete last line"), std::string::npos)
      << log.warnings[0];
  EXPECT_NE(captured.text().find("warning: crashed/metrics.jsonl: line 4: incomplete last line"), std::string::npos)
      << captured.text();
}

TEST(PlotParse, UnterminatedButCompleteLastLineIsRead) {
  const auto log = parse_metrics("{\"step\": 1, \"loss\": 0.5}\r\n{\"step\": 2, \"loss\": 0.4}", "m.jsonl");
  EXPECT_EQ(log.find("loss")->steps, (std::vector<double>{1, 2}));
  EXPECT_TRUE(log.warnings.empty());
}

TEST(PlotParse, MalformedLinesAreSkippedWithFileAndLineNumber) {
  CapturedLog captured;
  const auto log = parse_metrics(
      "{\"step\": 1, \"loss\": 0.5}\n"
      "{\"step\": 2, \"loss\": NaN}\n"     // Python's json.dumps writes this; it is not JSON
      "[1, 2]\n"
      "{\"loss\": 0.3}\n"
      "{\"step\": \"4\", \"loss\": 0.3}\n"
      "{\"step\": 5, \"loss\": 0.2}\n",
      "run/metrics.jsonl");
  EXPECT_EQ(log.find("loss")->steps, (std::vector<double>{1, 5}));
  ASSERT_EQ(log.warnings.size(), 4u);
  EXPECT_NE(log.warnings[0].find("run/metrics.jsonl: line 2: not valid JSON"), std::string::npos) << log.warnings[0];
  EXPECT_NE(log.warnings[1].find("run/metrics.jsonl: line 3: expected a JSON object, found array"), std::string::npos)
      << log.warnings[1];
  EXPECT_NE(log.warnings[2].find("run/metrics.jsonl: line 4: no numeric 'step'"), std::string::npos)
      << log.warnings[2];
  EXPECT_NE(log.warnings[3].find("line 5: no numeric 'step'"), std::string::npos) << log.warnings[3];
  EXPECT_NE(captured.text().find("run/metrics.jsonl: line 3"), std::string::npos) << captured.text();
}

TEST(PlotParse, NoNumericDataIsAnError) {
  EXPECT_THROW_WITH(parse_metrics("", "run/metrics.jsonl"), "run/metrics.jsonl", "empty");
  EXPECT_THROW_WITH(parse_metrics("\n\n", "run/metrics.jsonl"), "run/metrics.jsonl", "no numeric metrics");
  EXPECT_THROW_WITH(parse_metrics("{\"step\": 1}\n{\"step\": 2, \"event\": \"recall\"}\n", "run/metrics.jsonl"),
                    "run/metrics.jsonl", "no numeric metrics");
  EXPECT_THROW_WITH(parse_metrics("garbage\n{\"step\": 1, \"lo", "a/metrics.jsonl"), "a/metrics.jsonl",
                    "no numeric metrics", "2 lines skipped");
}

TEST(PlotParse, MissingFileIsAnErrorNamingIt) {
  TempDir dir;
  EXPECT_THROW_WITH(read_metrics(metrics_file(dir.path())), (dir.path() / "metrics.jsonl").string(), "no such file");
  write_file(dir / "other.jsonl", "{\"step\": 1, \"loss\": 2}\n");
  EXPECT_EQ(metrics_file(dir / "other.jsonl"), dir / "other.jsonl");
  EXPECT_EQ(read_metrics(dir / "other.jsonl").find("loss")->values, (std::vector<double>{2}));
}

// ---------------------------------------------------------------------------------------------
// Ticks
// ---------------------------------------------------------------------------------------------

std::vector<std::string> labels(const std::vector<AxisTick>& ticks) {
  std::vector<std::string> out;
  for (const auto& t : ticks) out.push_back(t.label);
  return out;
}

TEST(PlotTicks, NiceLinearTicks) {
  EXPECT_EQ(labels(axis_ticks(0.045, 0.36, 7, false)),
            (std::vector<std::string>{"0.05", "0.10", "0.15", "0.20", "0.25", "0.30", "0.35"}));
  EXPECT_EQ(labels(axis_ticks(-3, 1203, 6, false)), (std::vector<std::string>{"0", "500", "1000"}));
  EXPECT_EQ(labels(axis_ticks(-60, 1260, 7, false)),
            (std::vector<std::string>{"0", "200", "400", "600", "800", "1000", "1200"}));
  const auto ticks = axis_ticks(-0.5, 9.5, 5, false);
  EXPECT_EQ(labels(ticks), (std::vector<std::string>{"0", "2", "4", "6", "8"}));
  EXPECT_DOUBLE_EQ(ticks[3].value, 6.0);
}

TEST(PlotTicks, SmallAndLargeValuesUseScientificNotation) {
  EXPECT_EQ(labels(axis_ticks(-5e-6, 1.05e-4, 6, false)),
            (std::vector<std::string>{"0", "2e-5", "4e-5", "6e-5", "8e-5", "1e-4"}));
  EXPECT_EQ(labels(axis_ticks(9.1e-5, 1.09e-4, 4, false)),
            (std::vector<std::string>{"9.5e-5", "1e-4", "1.05e-4"}));
  EXPECT_EQ(labels(axis_ticks(0, 3.1e6, 4, false)), (std::vector<std::string>{"0", "1e6", "2e6", "3e6"}));
}

TEST(PlotTicks, LogTicksAreDecadesOrOneTwoFive) {
  EXPECT_EQ(labels(axis_ticks(8e-4, 2, 6, true)), (std::vector<std::string>{"0.001", "0.01", "0.1", "1"}));
  EXPECT_EQ(labels(axis_ticks(2e-7, 2e-3, 6, true)), (std::vector<std::string>{"1e-6", "1e-5", "1e-4", "1e-3"}));
  EXPECT_EQ(labels(axis_ticks(1e-8, 1e4, 4, true)), (std::vector<std::string>{"1e-8", "1e-4", "1", "1e4"}));
  EXPECT_EQ(labels(axis_ticks(0.04, 0.3, 6, true)), (std::vector<std::string>{"0.05", "0.1", "0.2"}));
  EXPECT_THROW_WITH(axis_ticks(0, 1, 5, true), "not positive");
}

// ---------------------------------------------------------------------------------------------
// Rendering: decoded PNGs
// ---------------------------------------------------------------------------------------------

struct Image {
  int width = 0, height = 0;
  std::vector<Rgb> pixels;
  Rgb at(int x, int y) const { return pixels.at(static_cast<std::size_t>(y) * width + x); }
};

Image decode_png(const fs::path& path) {
  int w = 0, h = 0, channels = 0;
  unsigned char* data = stbi_load(path.c_str(), &w, &h, &channels, /*desired_channels=*/3);
  if (!data) throw std::runtime_error(path.string() + ": stb_image cannot decode it: " + stbi_failure_reason());
  Image image{w, h, {}};
  for (int i = 0; i < w * h; ++i) image.pixels.push_back({data[3 * i], data[3 * i + 1], data[3 * i + 2]});
  stbi_image_free(data);
  return image;
}

// Curve pixels are saturated colours; background, grid, frame and text are greys.
bool is_curve(Rgb p) { return std::max({p.r, p.g, p.b}) - std::min({p.r, p.g, p.b}) > 60; }

// 101 steps: constant loss 0.5 and lr decaying linearly from 1e-4 to 0.
std::string known_metrics(double spike = 0) {
  std::string text;
  for (int s = 0; s <= 100; ++s) {
    const double loss = s == 50 ? 0.5 + spike : 0.5;
    text += fmt::format("{{\"step\": {}, \"loss\": {}, \"lr\": {}}}\n", s, loss, 1e-4 * (100 - s) / 100);
  }
  return text;
}

fs::path write_run(const TempDir& dir, const std::string& name, const std::string& metrics) {
  fs::create_directories(dir / name);
  write_file(dir / name / "metrics.jsonl", metrics);
  return dir / name;
}

TEST(PlotRender, PngHasTheRequestedSizeAndDefaultPath) {
  TempDir dir;
  const auto run = write_run(dir, "run", known_metrics());
  PlotOptions options;
  options.width = 800;
  options.height = 600;
  EXPECT_EQ(plot_metrics(run, options), run / "metrics.png");
  const Image image = decode_png(run / "metrics.png");
  EXPECT_EQ(image.width, 800);
  EXPECT_EQ(image.height, 600);

  options.out = dir / "elsewhere.png";
  options.height = 0;  // automatic: two panels
  EXPECT_EQ(plot_metrics(run / "metrics.jsonl", options), dir / "elsewhere.png");
  EXPECT_EQ(decode_png(dir / "elsewhere.png").width, 800);
  for (const auto& entry : fs::directory_iterator(dir.path())) {  // atomic write: no temporary left
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
  }
}

TEST(PlotRender, KnownSeriesLandWhereExpected) {
  TempDir dir;
  const auto run = write_run(dir, "run", known_metrics());
  PlotOptions options;
  options.width = 900;
  options.height = 700;
  options.smooth = 1;  // raw curves only
  const Figure figure = render_metrics(read_metrics(run / "metrics.jsonl"), options);
  ASSERT_EQ(figure.panels.size(), 2u);
  EXPECT_EQ(figure.panels[0].metric, "loss");
  EXPECT_EQ(figure.panels[1].metric, "lr");
  EXPECT_LT(figure.panels[0].plot.bottom, figure.panels[1].plot.top);  // stacked, loss on top
  figure.canvas.write_png(dir / "known.png");
  const Image image = decode_png(dir / "known.png");
  ASSERT_EQ(image.width, 900);

  // Every data point's pixel is on a curve.
  for (int s = 0; s <= 100; s += 5) {
    const Point loss = figure.to_pixel(0, s, 0.5);
    const Point lr = figure.to_pixel(1, s, 1e-4 * (100 - s) / 100);
    EXPECT_TRUE(is_curve(image.at(static_cast<int>(loss.x), static_cast<int>(loss.y)))) << "loss at step " << s;
    EXPECT_TRUE(is_curve(image.at(static_cast<int>(lr.x), static_cast<int>(lr.y)))) << "lr at step " << s;
  }
  // The constant loss is a horizontal band in the middle of its panel; nothing else is curve.
  const PixelRect& loss_plot = figure.panels[0].plot;
  const double middle = (loss_plot.top + loss_plot.bottom) / 2.0;
  for (int y = loss_plot.top; y < loss_plot.bottom; ++y) {
    for (int x = loss_plot.left; x < loss_plot.right; ++x) {
      if (is_curve(image.at(x, y))) ASSERT_LT(std::fabs(y + 0.5 - middle), 4) << "x " << x << " y " << y;
    }
  }
  // The lr line runs from the top-left to the bottom-right of its panel: curve pixels in the
  // left fifth are in the upper part, those in the right fifth in the lower part.
  const PixelRect& r = figure.panels[1].plot;
  int upper_left = 0, lower_right = 0, elsewhere = 0;
  for (int y = r.top; y < r.bottom; ++y) {
    for (int x = r.left; x < r.right; ++x) {
      if (!is_curve(image.at(x, y))) continue;
      const bool left = x < r.left + r.width() / 5, right = x >= r.right - r.width() / 5;
      const bool upper = y < r.top + r.height() / 3, lower = y >= r.bottom - r.height() / 3;
      upper_left += left && upper;
      lower_right += right && lower;
      elsewhere += (left && !upper) || (right && !lower);
    }
  }
  EXPECT_GT(upper_left, 50);
  EXPECT_GT(lower_right, 50);
  EXPECT_EQ(elsewhere, 0);
  // Far from the line (the top-right corner, the bottom-left corner) is background.
  EXPECT_EQ(image.at(r.right - 20, r.top + 10), kWhite);
  EXPECT_EQ(image.at(r.left + 20, r.bottom - 10), kWhite);
}

TEST(PlotRender, ChangedSeriesChangesTheImage) {
  TempDir dir;
  PlotOptions options;
  options.smooth = 1;
  const auto a = render_metrics(parse_metrics(known_metrics(), "a/metrics.jsonl"), options);
  const auto b = render_metrics(parse_metrics(known_metrics(/*spike=*/0.3), "a/metrics.jsonl"), options);
  EXPECT_NE(a.canvas.rgb(), b.canvas.rgb());
  // The spike shows as curve pixels above the loss band at step 50, only in b.
  const Point peak = b.to_pixel(0, 50, 0.8);
  const int x = static_cast<int>(peak.x), y = static_cast<int>(peak.y);
  EXPECT_TRUE(is_curve(b.canvas.pixel(x, y)));
  EXPECT_FALSE(is_curve(a.canvas.pixel(x, y)));
  // Same input, same image.
  const auto a2 = render_metrics(parse_metrics(known_metrics(), "a/metrics.jsonl"), options);
  EXPECT_EQ(a.canvas.rgb(), a2.canvas.rgb());
}

TEST(PlotRender, EventsDrawVerticalMarkersAcrossPanels) {
  std::string text = known_metrics();
  text += "{\"step\": 30, \"event\": \"recall\"}\n{\"step\": 70, \"event\": \"checkpoint\"}\n";
  PlotOptions options;
  options.smooth = 1;
  const auto with = render_metrics(parse_metrics(text, "m.jsonl"), options);
  const auto without = render_metrics(parse_metrics(known_metrics(), "m.jsonl"), options);
  for (std::size_t panel = 0; panel < 2; ++panel) {
    const PixelRect& r = with.panels[panel].plot;
    for (const double step : {30.0, 70.0}) {
      const int x = static_cast<int>(with.to_pixel(panel, step, 0.5).x);
      int marked = 0;
      for (int y = r.top; y < r.bottom; ++y) marked += with.canvas.pixel(x, y) != without.canvas.pixel(x, y);
      EXPECT_GT(marked, r.height() / 3) << "panel " << panel << " step " << step;  // recall is dashed
    }
  }
}

TEST(PlotRender, SmoothingOverlayAndLogScale) {
  // Loss 1 with a dip to 0.1 every 10 steps; step 0's -1 cannot go on a log axis.
  std::string text;
  for (int s = 0; s < 400; ++s) {
    text += fmt::format("{{\"step\": {}, \"loss\": {}}}\n", s, s == 0 ? -1.0 : (s % 10 ? 1.0 : 0.1));
  }
  PlotOptions options;
  options.metrics = {"loss"};
  options.log_y = {"loss"};
  const auto figure = render_metrics(parse_metrics(text, "m.jsonl"), options);
  ASSERT_EQ(figure.panels.size(), 1u);
  EXPECT_TRUE(figure.panels[0].log_y);
  EXPECT_EQ(figure.panels[0].smooth_window, 19);  // automatic: 399 positive points / 20
  EXPECT_GT(figure.panels[0].y_min, 0);
  EXPECT_LT(figure.panels[0].y_min, 0.1);
  EXPECT_GT(figure.panels[0].y_max, 1.0);
  // Between two dips the 19-record average holds 17 ones and two dips: (17 + 0.2) / 19. The
  // overlay is there, and without it (smooth = 1) nothing is drawn at that height.
  const Point mean = figure.to_pixel(0, 205, 17.2 / 19);
  EXPECT_TRUE(is_curve(figure.canvas.pixel(static_cast<int>(mean.x), static_cast<int>(mean.y))));

  options.smooth = 1;
  const auto raw = render_metrics(parse_metrics(text, "m.jsonl"), options);
  EXPECT_EQ(raw.panels[0].smooth_window, 1);
  const Point same = raw.to_pixel(0, 205, 17.2 / 19);
  EXPECT_FALSE(is_curve(raw.canvas.pixel(static_cast<int>(same.x), static_cast<int>(same.y))));
}

TEST(PlotRender, OptionsThatDoNotFitAreErrors) {
  const auto log = parse_metrics(known_metrics(), "run/metrics.jsonl");
  PlotOptions options;
  options.metrics = {"loss", "grad_norm"};
  EXPECT_THROW_WITH(render_metrics(log, options), "run/metrics.jsonl", "no metric 'grad_norm'", "it has: loss, lr");
  options.metrics = {};
  options.log_y = {"grad_norm"};
  EXPECT_THROW_WITH(render_metrics(log, options), "'grad_norm' is not one of the plotted metrics (loss, lr)");
  options.log_y = {};
  options.height = 150;
  EXPECT_THROW_WITH(render_metrics(log, options), "height 150 is too small for 2 panel(s)");
  options.height = 0;
  options.width = 100;
  EXPECT_THROW_WITH(render_metrics(log, options), "width 100 is out of range");
}

TEST(PlotRender, DefaultsToEveryMetricWithoutLossOrLr) {
  const auto log = parse_metrics("{\"step\": 1, \"a\": 1, \"b\": 2}\n{\"step\": 2, \"a\": 3}\n", "m.jsonl");
  const auto figure = render_metrics(log, PlotOptions{});
  ASSERT_EQ(figure.panels.size(), 2u);
  EXPECT_EQ(figure.panels[0].metric, "a");
  EXPECT_EQ(figure.panels[1].metric, "b");  // one point: drawn as a dot
  const Point dot = figure.to_pixel(1, 1, 2);
  EXPECT_TRUE(is_curve(figure.canvas.pixel(static_cast<int>(dot.x), static_cast<int>(dot.y))));
}

// ---------------------------------------------------------------------------------------------
// The executable
// ---------------------------------------------------------------------------------------------

TEST(PlotCli, WritesMetricsPngIntoTheRunFolder) {
  TempDir dir;
  const auto run = write_run(dir, "run", known_metrics() + "{\"step\": 101, \"lo");
  const auto [rc, output] = run_command(cli_path() + " plot " + run.string());
  EXPECT_EQ(rc, 0) << output;
  EXPECT_NE(output.find("line 102: incomplete last line"), std::string::npos) << output;
  EXPECT_NE(output.find("wrote " + (run / "metrics.png").string()), std::string::npos) << output;
  EXPECT_EQ(decode_png(run / "metrics.png").width, 1000);

  const auto [rc2, output2] = run_command(cli_path() + " plot " + run.string() + " --metrics lr,loss --log-y loss " +
                                          "--smooth 5 --width 640 --height 480 --out " + (dir / "x.png").string());
  EXPECT_EQ(rc2, 0) << output2;
  const Image image = decode_png(dir / "x.png");
  EXPECT_EQ(image.width, 640);
  EXPECT_EQ(image.height, 480);

  // A list option before the run folder takes one argument, not the folder too.
  const auto [rc3, output3] = run_command(cli_path() + " plot --metrics loss --log-y loss " + run.string() +
                                          " --metrics lr -o " + (dir / "y.png").string());
  EXPECT_EQ(rc3, 0) << output3;
  EXPECT_TRUE(fs::exists(dir / "y.png"));
}

TEST(PlotCli, BadInputExitsOneAndNamesTheFile) {
  TempDir dir;
  fs::create_directories(dir / "empty-run");
  const auto [rc, output] = run_command(cli_path() + " plot " + (dir / "empty-run").string());
  EXPECT_EQ(rc, 1) << output;
  EXPECT_NE(output.find("error: " + (dir / "empty-run" / "metrics.jsonl").string() + ": no such file"),
            std::string::npos)
      << output;
  EXPECT_FALSE(fs::exists(dir / "empty-run" / "metrics.png"));

  const auto run = write_run(dir, "run", known_metrics());
  const auto [rc2, output2] = run_command(cli_path() + " plot " + run.string() + " --metrics nope");
  EXPECT_EQ(rc2, 1) << output2;
  EXPECT_NE(output2.find("no metric 'nope'"), std::string::npos) << output2;

  write_file(dir / "blank.jsonl", "");
  const auto [rc3, output3] = run_command(cli_path() + " plot " + (dir / "blank.jsonl").string());
  EXPECT_EQ(rc3, 1) << output3;
  EXPECT_NE(output3.find("blank.jsonl: is empty"), std::string::npos) << output3;
}

TEST(PlotCli, UsageErrorsExitTwo) {
  TempDir dir;
  const auto run = write_run(dir, "run", known_metrics());
  for (const std::string args : {" --no-such-flag", " --width 10", " --smooth -3", " --metrics loss lr", ""}) {
    const auto [rc, output] = run_command(cli_path() + " plot" + (args.empty() ? "" : " " + run.string() + args));
    EXPECT_EQ(rc, 2) << "args:" << args << "\n" << output;
  }
  EXPECT_FALSE(fs::exists(run / "metrics.png"));
}

}  // namespace
}  // namespace lisadiff::tools
