// `lisadiff plot`: metrics.jsonl parsing (values, gaps, events, broken lines), axis ticks, where
// known series land in the decoded PNG, several runs in one figure, and the CLI. The canvas it
// draws on (lines, text) has its own tests, tests/io/test_canvas.cpp.
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

// Found by fuzz/fuzz_metrics.cpp: a number beyond double's range made the JSON parser throw
// out_of_range, which escaped `lisadiff plot` as a message naming no file.
TEST(PlotParse, ANumberBeyondDoubleIsASkippedLine) {
  CapturedLog captured;
  const auto log = parse_metrics("{\"step\": 1, \"loss\": 0.5}\n{\"step\": 2, \"lr\": 1E111111}\n", "run/metrics.jsonl");
  EXPECT_EQ(log.find("loss")->steps, (std::vector<double>{1}));
  ASSERT_EQ(log.warnings.size(), 1u);
  EXPECT_NE(log.warnings[0].find("run/metrics.jsonl: line 2: not valid JSON"), std::string::npos) << log.warnings[0];
}

// Found by fuzz/fuzz_metrics.cpp (UBSan): a record at step 3.3e92 left the step axis without
// width (its +-1 margin is below that number's rounding), and the tick step derived from the
// zero span reached log10(0) = -inf, cast to int. Steps beyond 1e15 and values beyond 1e300
// are now skipped with a warning naming the line.
TEST(PlotParse, StepsAndValuesBeyondWhatAPlotCanScaleAreSkipped) {
  CapturedLog captured;
  const auto log = parse_metrics(
      "{\"step\": 1, \"loss\": 1.0}\n"
      "{\"step\": 3333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333"
      "5, \"loss\": 0.2, \"event\": \"checkpoint\"}\n"
      "{\"step\": 2, \"loss\": -1e301, \"lr\": 0.5}\n"
      "{\"step\": -1e16, \"lr\": 0.5}\n"
      "{\"step\": 1000000000000000, \"loss\": 1e300}\n",
      "run/metrics.jsonl");
  EXPECT_EQ(log.find("loss")->steps, (std::vector<double>{1, 1e15}));
  EXPECT_EQ(log.find("loss")->values, (std::vector<double>{1.0, 1e300}));
  EXPECT_EQ(log.find("lr")->steps, (std::vector<double>{2}));
  EXPECT_TRUE(log.events.empty());
  ASSERT_EQ(log.warnings.size(), 3u);
  EXPECT_NE(log.warnings[0].find("line 2: 'step' 3.3333333333333335e+100 is not a step count (beyond 1e15), skipped"),
            std::string::npos)
      << log.warnings[0];
  EXPECT_NE(log.warnings[1].find("line 3: 'loss' = -1e+301 is beyond what a plot can scale"), std::string::npos)
      << log.warnings[1];
  EXPECT_NE(log.warnings[2].find("line 4: 'step' -1e+16 is not a step count"), std::string::npos)
      << log.warnings[2];
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

// The extremes the readers let through still give finite ticks in a few steps: a span of a
// few units at 1e20 (below 1e-12 of it, ticks would count past 2^53 and never end), the widest
// span of values, a span of denormals.
TEST(PlotTicks, ExtremeRangesGiveFewTicksAndEnd) {
  const auto narrow = axis_ticks(1e20, 1e20 + 65536, 5, false);
  EXPECT_LE(narrow.size(), 2u);
  const auto wide = axis_ticks(-1.05e300, 1.05e300, 5, false);
  EXPECT_EQ(labels(wide), (std::vector<std::string>{"-1e300", "-5e299", "0", "5e299", "1e300"}));
  const auto tiny = axis_ticks(1e-320, 5e-320, 4, false);
  EXPECT_GE(tiny.size(), 2u) << ::testing::PrintToString(labels(tiny));
  for (const auto& t : tiny) EXPECT_TRUE(std::isfinite(t.value) && t.value > 0) << t.label;
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

// What fuzz/fuzz_metrics.cpp found, drawn: one record at the largest step and the largest
// values the reader keeps (a constant, and the widest span), beside an ordinary one.
TEST(PlotRender, TheLargestStepsAndValuesStillDraw) {
  PlotOptions options;
  options.width = 400;
  options.height = 300;
  for (const std::string text : {"{\"step\": 1000000000000000, \"loss\": 1e300}\n",
                                 "{\"step\": 0, \"loss\": -1e300}\n{\"step\": 1000000000000000, \"loss\": 1e300}\n",
                                 "{\"step\": 999999999999999, \"loss\": 1e-320, \"lr\": 1e300}\n"
                                 "{\"step\": 1000000000000000, \"loss\": 2e-320, \"lr\": 1e300}\n"}) {
    options.log_y = {};
    const Figure figure = render_metrics(parse_metrics(text, "run/metrics.jsonl"), options);
    EXPECT_EQ(figure.canvas.width(), 400) << text;
    EXPECT_LT(figure.x_min, figure.x_max) << text;
    options.log_y = {"loss"};
    EXPECT_NO_THROW(render_metrics(parse_metrics(text, "run/metrics.jsonl"), options)) << text;
  }
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

// ---------------------------------------------------------------------------------------------
// Several runs in one figure
// ---------------------------------------------------------------------------------------------

// Steps first..last: a constant loss and a constant lr, plus `extra` (a JSON fragment such as
// ", \"grad_norm\": 2") on every line.
std::string constant_run(int first, int last, double loss, const std::string& extra = "") {
  std::string text;
  for (int s = first; s <= last; ++s) text += fmt::format("{{\"step\": {}, \"loss\": {}, \"lr\": 1e-4{}}}\n", s, loss, extra);
  return text;
}

// Anti-aliased edges blend into the background; a stroke's middle is its colour.
bool near(Rgb a, Rgb b, int tolerance = 12) {
  return std::abs(a.r - b.r) <= tolerance && std::abs(a.g - b.g) <= tolerance && std::abs(a.b - b.b) <= tolerance;
}

int count_near(const Image& image, const PixelRect& r, Rgb color) {
  int count = 0;
  for (int y = r.top; y < r.bottom; ++y) {
    for (int x = r.left; x < r.right; ++x) count += near(image.at(x, y), color);
  }
  return count;
}

TEST(PlotRuns, EachRunIsALineInItsOwnColourOverTheUnionOfSteps) {
  TempDir dir;
  // Three runs of different lengths and losses: a over 0..100, b over 50..200, c over 0..150.
  const std::vector<MetricsLog> logs = {parse_metrics(constant_run(0, 100, 0.2), "a/metrics.jsonl"),
                                        parse_metrics(constant_run(50, 200, 0.5), "b/metrics.jsonl"),
                                        parse_metrics(constant_run(0, 150, 0.8), "c/metrics.jsonl")};
  const std::vector<double> loss = {0.2, 0.5, 0.8};
  const std::vector<std::pair<int, int>> span = {{0, 100}, {50, 200}, {0, 150}};
  PlotOptions options;
  options.smooth = 1;  // raw lines only: each one in its run's colour
  const Figure figure = render_runs(logs, {}, options);
  ASSERT_EQ(figure.runs.size(), 3u);
  EXPECT_EQ(figure.runs[0].label, "a");
  EXPECT_EQ(figure.runs[1].label, "b");
  EXPECT_EQ(figure.runs[2].label, "c");
  EXPECT_NE(figure.runs[0].color, figure.runs[1].color);
  EXPECT_NE(figure.runs[1].color, figure.runs[2].color);
  EXPECT_NE(figure.runs[0].color, figure.runs[2].color);
  ASSERT_EQ(figure.panels.size(), 2u);  // loss and lr, as for one run
  EXPECT_EQ(figure.panels[0].metric, "loss");
  // The step axis spans all three runs (2% margins), the loss axis all three values.
  EXPECT_DOUBLE_EQ(figure.x_min, -4);
  EXPECT_DOUBLE_EQ(figure.x_max, 204);
  EXPECT_LT(figure.panels[0].y_min, 0.2);
  EXPECT_GT(figure.panels[0].y_max, 0.8);

  figure.canvas.write_png(dir / "runs.png");
  const Image image = decode_png(dir / "runs.png");
  for (std::size_t run = 0; run < 3; ++run) {
    const Rgb color = figure.runs[run].color;
    for (int s = 0; s <= 200; s += 10) {
      const Point p = figure.to_pixel(0, s, loss[run]);
      const Rgb pixel = image.at(static_cast<int>(p.x), static_cast<int>(p.y));
      // Inside the run's steps its line is there in its colour; well past its ends (round caps
      // reach a pixel beyond them) it is not. The end points themselves are only half covered.
      if (s > span[run].first && s < span[run].second) {
        EXPECT_TRUE(near(pixel, color)) << "run " << run << " step " << s;
      } else if (s < span[run].first - 5 || s > span[run].second + 5) {
        EXPECT_FALSE(near(pixel, color)) << "run " << run << " step " << s;
      }
    }
  }
  // Each run's colour is on its own line only, and nothing else is drawn in the loss panel: a
  // curve pixel is within a stroke's width of one of the three lines.
  const PixelRect& r = figure.panels[0].plot;
  std::vector<int> on_line(3, 0);
  for (int y = r.top; y < r.bottom; ++y) {
    for (int x = r.left; x < r.right; ++x) {
      const Rgb pixel = image.at(x, y);
      bool near_a_line = false;
      for (std::size_t run = 0; run < 3; ++run) {
        const double distance = std::fabs(y + 0.5 - figure.to_pixel(0, 0, loss[run]).y);
        near_a_line = near_a_line || distance < 3;
        if (near(pixel, figure.runs[run].color)) {
          ASSERT_LT(distance, 2) << "run " << run << " x " << x << " y " << y;
          ++on_line[run];
        }
      }
      if (is_curve(pixel)) {
        ASSERT_TRUE(near_a_line) << "x " << x << " y " << y;
      }
    }
  }
  for (std::size_t run = 0; run < 3; ++run) {
    const double length = figure.to_pixel(0, span[run].second, 0).x - figure.to_pixel(0, span[run].first, 0).x;
    EXPECT_GT(on_line[run], 0.9 * length) << "run " << run;  // at least one full-colour pixel per column
  }
}

TEST(PlotRuns, LegendHasASwatchAndALabelPerRun) {
  const std::vector<MetricsLog> logs = {parse_metrics(constant_run(0, 100, 0.2), "x/metrics.jsonl"),
                                        parse_metrics(constant_run(0, 100, 0.5), "y/metrics.jsonl")};
  PlotOptions options;
  options.smooth = 1;
  const Figure lisa = render_runs(logs, {"lisa", "lora"}, options);
  ASSERT_EQ(lisa.runs.size(), 2u);
  EXPECT_EQ(lisa.runs[0].label, "lisa");
  EXPECT_EQ(lisa.runs[1].label, "lora");
  for (const auto& run : lisa.runs) {
    const PixelRect& s = run.swatch;
    ASSERT_GT(s.width(), 0);
    ASSERT_GT(s.height(), 0);
    EXPECT_LT(s.bottom, lisa.panels[0].plot.top) << run.label;  // in the header
    for (int y = s.top; y < s.bottom; ++y) {
      for (int x = s.left; x < s.right; ++x) EXPECT_EQ(lisa.canvas.pixel(x, y), run.color) << run.label;
    }
    // The label's ink follows the swatch on its right.
    int ink = 0;
    for (int y = s.top - 10; y < s.bottom + 10; ++y) {
      for (int x = s.right; x < s.right + 30; ++x) ink += lisa.canvas.pixel(x, y) != kWhite;
    }
    EXPECT_GT(ink, 10) << run.label;
  }
  EXPECT_LT(lisa.runs[0].swatch.right, lisa.runs[1].swatch.left);  // side by side, in run order

  // Other labels: another legend, the same plots.
  const Figure full = render_runs(logs, {"full", "lora"}, options);
  EXPECT_NE(lisa.canvas.rgb(), full.canvas.rgb());
  ASSERT_EQ(full.panels[0].plot.top, lisa.panels[0].plot.top);
  const PixelRect& r = lisa.panels[0].plot;
  for (int y = r.top; y < r.bottom; ++y) {
    for (int x = r.left; x < r.right; ++x) ASSERT_EQ(lisa.canvas.pixel(x, y), full.canvas.pixel(x, y));
  }
}

TEST(PlotRuns, LabelsAreFolderNamesWithParentsWhereTheyCollide) {
  PlotOptions options;
  const auto labels_of = [&options](const std::vector<std::string>& files, const std::vector<std::string>& given) {
    std::vector<MetricsLog> logs;
    for (const auto& file : files) logs.push_back(parse_metrics(constant_run(0, 10, 0.5), file));
    std::vector<std::string> out;
    for (const auto& run : render_runs(logs, given, options).runs) out.push_back(run.label);
    return out;
  };
  EXPECT_EQ(labels_of({"exp/lisa/metrics.jsonl", "exp/lora/metrics.jsonl"}, {}),
            (std::vector<std::string>{"lisa", "lora"}));
  EXPECT_EQ(labels_of({"x/run/metrics.jsonl", "y/run/metrics.jsonl", "z/full.jsonl"}, {}),
            (std::vector<std::string>{"x/run", "y/run", "full"}));
  EXPECT_EQ(labels_of({"a/run/metrics.jsonl", "b/run/metrics.jsonl"}, {"", "mine"}),
            (std::vector<std::string>{"run", "mine"}));  // an empty entry: the run's own name
  const auto twice = labels_of({"same/metrics.jsonl", "same/metrics.jsonl"}, {});
  ASSERT_EQ(twice.size(), 2u);
  EXPECT_EQ(twice[1], twice[0] + " (2)");
}

TEST(PlotRuns, MetricInOneRunOnlyHasOneLine) {
  const std::vector<MetricsLog> logs = {
      parse_metrics(constant_run(0, 100, 0.2, ", \"grad_norm\": 3"), "a/metrics.jsonl"),
      parse_metrics(constant_run(0, 100, 0.5), "b/metrics.jsonl"),
      parse_metrics(constant_run(0, 100, 0.8, ", \"implicit_acc\": 0.75"), "c/metrics.jsonl")};
  PlotOptions options;
  options.smooth = 1;
  // The default list: what any run has (c's implicit_acc), in the list's order.
  const Figure defaults = render_runs(logs, {}, options);
  ASSERT_EQ(defaults.panels.size(), 3u);
  EXPECT_EQ(defaults.panels[0].metric, "loss");
  EXPECT_EQ(defaults.panels[1].metric, "implicit_acc");
  EXPECT_EQ(defaults.panels[2].metric, "lr");

  options.metrics = {"grad_norm", "loss"};
  const Figure figure = render_runs(logs, {}, options);
  ASSERT_EQ(figure.panels.size(), 2u);
  const PixelRect& r = figure.panels[0].plot;
  int own = 0, others = 0;
  for (int y = r.top; y < r.bottom; ++y) {
    for (int x = r.left; x < r.right; ++x) {
      own += near(figure.canvas.pixel(x, y), figure.runs[0].color);
      others += near(figure.canvas.pixel(x, y), figure.runs[1].color, 60) ||
                near(figure.canvas.pixel(x, y), figure.runs[2].color, 60);
    }
  }
  EXPECT_GT(own, 100);
  EXPECT_EQ(others, 0);
  const Point p = figure.to_pixel(0, 50, 3);
  EXPECT_TRUE(near(figure.canvas.pixel(static_cast<int>(p.x), static_cast<int>(p.y)), figure.runs[0].color));
}

TEST(PlotRuns, SmoothingIsPerRunAndEventsAreLeftOut) {
  std::string a, b;
  for (int s = 0; s < 400; ++s) a += fmt::format("{{\"step\": {}, \"loss\": {}}}\n", s, s % 10 ? 1.0 : 0.1);
  for (int s = 0; s < 100; ++s) b += fmt::format("{{\"step\": {}, \"loss\": {}}}\n", s, s % 2 ? 1.0 : 0.5);
  const std::string events = "{\"step\": 30, \"event\": \"recall\"}\n{\"step\": 70, \"event\": \"checkpoint\"}\n";
  PlotOptions options;
  const Figure figure = render_runs({parse_metrics(a, "a/metrics.jsonl"), parse_metrics(b, "b/metrics.jsonl")}, {},
                                    options);
  ASSERT_EQ(figure.panels.size(), 1u);
  EXPECT_EQ(figure.panels[0].run_windows, (std::vector<int>{20, 5}));  // about 1/20 of each run's points
  EXPECT_EQ(figure.panels[0].smooth_window, 20);
  // Between two of a's dips its 20-record average holds 18 ones and two dips (19 of them, as
  // the window is centred: 17 ones and two dips); its overlay is there, in a's colour.
  const Point mean = figure.to_pixel(0, 205, 17.2 / 19);
  EXPECT_TRUE(near(figure.canvas.pixel(static_cast<int>(mean.x), static_cast<int>(mean.y)), figure.runs[0].color, 40));

  // With several runs, one run's events are not drawn: the figure is the same without them.
  const Figure with_events = render_runs(
      {parse_metrics(a + events, "a/metrics.jsonl"), parse_metrics(b, "b/metrics.jsonl")}, {}, options);
  EXPECT_EQ(with_events.canvas.rgb(), figure.canvas.rgb());
}

TEST(PlotRuns, OneRunIsTheSingleRunFigure) {
  std::string text = known_metrics() + "{\"step\": 30, \"event\": \"recall\"}\n";
  const auto log = parse_metrics(text, "run/metrics.jsonl");
  PlotOptions options;
  const Figure single = render_metrics(log, options);
  const Figure runs = render_runs({log}, {}, options);
  EXPECT_TRUE(runs.runs.empty());
  EXPECT_EQ(single.canvas.rgb(), runs.canvas.rgb());
  EXPECT_EQ(single.panels[0].run_windows, (std::vector<int>{single.panels[0].smooth_window}));
  // A label replaces the folder's name in the header, nothing else.
  const Figure labelled = render_runs({log}, {"lisa"}, options);
  EXPECT_NE(single.canvas.rgb(), labelled.canvas.rgb());
  const PixelRect& r = single.panels[0].plot;
  for (int y = r.top; y < r.bottom; ++y) {
    for (int x = r.left; x < r.right; ++x) ASSERT_EQ(single.canvas.pixel(x, y), labelled.canvas.pixel(x, y));
  }
}

TEST(PlotRuns, MistakesAreErrorsNamingTheFlagOrFile) {
  const std::vector<MetricsLog> logs = {parse_metrics(constant_run(0, 10, 0.2), "a/metrics.jsonl"),
                                        parse_metrics(constant_run(0, 10, 0.5, ", \"grad_norm\": 1"), "b/metrics.jsonl")};
  PlotOptions options;
  EXPECT_THROW_WITH(render_runs(logs, {"one", "two", "three"}, options), "--labels: 3 labels for 2 runs");
  EXPECT_THROW_WITH(render_runs(logs, {"one"}, options), "--labels: 1 label for 2 runs");
  EXPECT_THROW_WITH(render_runs({}, {}, options), "no runs to plot");
  EXPECT_THROW_WITH(render_runs(std::vector<MetricsLog>(9, logs[0]), {}, options), "9 runs, at most 8");
  options.metrics = {"loss", "nope"};
  EXPECT_THROW_WITH(render_runs(logs, {}, options), "no metric 'nope' in any of the 2 runs", "a: loss, lr",
                    "b: grad_norm, loss, lr");
  options.metrics = {"grad_norm"};  // in b only: fine
  EXPECT_EQ(render_runs(logs, {}, options).panels.size(), 1u);
  options.metrics = {};
  options.log_y = {"grad_norm"};
  EXPECT_THROW_WITH(render_runs(logs, {}, options), "'grad_norm' is not one of the plotted metrics (loss, lr)");

  TempDir dir;
  const auto a = write_run(dir, "a", constant_run(0, 10, 0.2));
  const auto b = write_run(dir, "b", constant_run(0, 10, 0.5));
  EXPECT_THROW_WITH(plot_runs({a, b}, {}, PlotOptions{}), "--out: required when plotting several runs");
  PlotOptions out;
  out.out = dir / "both.png";
  EXPECT_THROW_WITH(plot_runs({a, dir / "missing"}, {}, out), (dir / "missing").string() + ": no such file");
  fs::create_directories(dir / "no-metrics");
  EXPECT_THROW_WITH(plot_runs({dir / "no-metrics", b}, {}, out), (dir / "no-metrics" / "metrics.jsonl").string(),
                    "no such file");
  EXPECT_FALSE(fs::exists(dir / "both.png"));
  EXPECT_EQ(plot_runs({a, b}, {}, out), dir / "both.png");
  EXPECT_EQ(decode_png(dir / "both.png").width, 1000);
  EXPECT_FALSE(fs::exists(a / "metrics.png"));
}

TEST(PlotCli, SeveralRunsShareOneFigure) {
  TempDir dir;
  const auto a = write_run(dir, "lisa", constant_run(0, 100, 0.2));
  const auto b = write_run(dir, "lora", constant_run(0, 150, 0.5));
  const auto c = write_run(dir, "full", constant_run(20, 80, 0.8));
  const std::string runs = " " + a.string() + " " + b.string() + " " + c.string();
  const auto out = dir / "compare.png";

  const auto [rc, output] = run_command(cli_path() + " plot" + runs + " --labels LISA,LoRA,full --out " + out.string());
  EXPECT_EQ(rc, 0) << output;
  EXPECT_NE(output.find("wrote " + out.string()), std::string::npos) << output;
  EXPECT_EQ(decode_png(out).width, 1000);

  // No --out: there is no one run folder to write into.
  const auto [rc2, output2] = run_command(cli_path() + " plot" + runs);
  EXPECT_EQ(rc2, 2) << output2;
  EXPECT_NE(output2.find("--out: required when plotting several runs"), std::string::npos) << output2;
  for (const auto& run : {a, b, c}) EXPECT_FALSE(fs::exists(run / "metrics.png")) << run;

  const auto [rc3, output3] = run_command(cli_path() + " plot" + runs + " --labels x,y -o " + (dir / "x.png").string());
  EXPECT_EQ(rc3, 2) << output3;
  EXPECT_NE(output3.find("--labels: 2 labels for 3 runs"), std::string::npos) << output3;
  EXPECT_FALSE(fs::exists(dir / "x.png"));

  const auto [rc4, output4] = run_command(cli_path() + " plot" + runs + " " + (dir / "nope").string() + " -o " +
                                          (dir / "y.png").string());
  EXPECT_EQ(rc4, 1) << output4;
  EXPECT_NE(output4.find("error: " + (dir / "nope").string() + ": no such file"), std::string::npos) << output4;
  EXPECT_FALSE(fs::exists(dir / "y.png"));

  const auto [rc5, output5] = run_command(cli_path() + " plot" + runs + " --metrics nope -o " + (dir / "z.png").string());
  EXPECT_EQ(rc5, 1) << output5;
  EXPECT_NE(output5.find("no metric 'nope' in any of the 3 runs"), std::string::npos) << output5;
}

}  // namespace
}  // namespace lisadiff::tools
