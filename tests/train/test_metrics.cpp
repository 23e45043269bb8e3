// Training metrics: metrics.jsonl as `lisadiff plot` reads it (values, events, NaN as null,
// resume truncation, repair after a crash mid-line, errors), the progress line (formatting,
// it/s and ETA with an injected clock, rate limiting, terminal vs plain output), and peak
// memory.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "data/image.h"
#include "io/tfevent_reader.h"
#include "tools/plot.h"
#include "train/metrics.h"
#include "test_util.h"

namespace lisadiff::train {
namespace {

namespace fs = std::filesystem;
using lisadiff::testing::CapturedLog;
using lisadiff::testing::read_file;
using lisadiff::testing::TempDir;
using lisadiff::testing::write_file;
using tools::MetricsLog;
using tools::parse_metrics;
using tools::read_metrics;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t begin = 0;
  while (begin < text.size()) {
    auto end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    lines.push_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  return lines;
}

std::vector<double> steps_of(const MetricsLog& log, const std::string& metric) {
  const auto* series = log.find(metric);
  return series ? series->steps : std::vector<double>{};
}

// ---------------------------------------------------------------------------------------------
// MetricsWriter
// ---------------------------------------------------------------------------------------------

TEST(MetricsWriter, WritesWhatPlotReadsWithTheSameValues) {
  TempDir dir;
  const auto run = dir / "runs" / "a";  // parents are created
  std::vector<double> losses, lrs;
  {
    MetricsWriter writer(run);
    EXPECT_TRUE(writer.enabled());
    EXPECT_EQ(writer.file(), run / "metrics.jsonl");
    for (int step = 1; step <= 6; ++step) {
      const double loss = 0.5 / step + 1e-9 * step;  // values that need all 17 digits
      const double lr = 1e-4 * (1 - step / 7.0);
      losses.push_back(loss);
      lrs.push_back(lr);
      writer.log(step, {{"loss", loss},
                        {"lr", lr},
                        {"grad_norm", 1.0 + step},
                        {"active_params", 1843200 + step},
                        {"step_time", 0.41},
                        {"peak_memory", std::int64_t{123456789012}},
                        {"epoch", 0}});
      if (step == 3) writer.event(step, "recall");
    }
    writer.event(6, "checkpoint", {{"loss", 0.25}});
  }
  const std::string text = read_file(run / "metrics.jsonl");
  const auto lines = lines_of(text);
  ASSERT_EQ(lines.size(), 8u);
  EXPECT_EQ(text.back(), '\n');
  // "step" first, then the fields in the order given.
  EXPECT_EQ(lines[0].rfind("{\"step\":1,\"loss\":", 0), 0u) << lines[0];
  EXPECT_EQ(lines[3], "{\"step\":3,\"event\":\"recall\"}");
  EXPECT_EQ(lines[7], "{\"step\":6,\"event\":\"checkpoint\",\"loss\":0.25}");

  const MetricsLog log = read_metrics(run / "metrics.jsonl");
  EXPECT_TRUE(log.warnings.empty());
  EXPECT_EQ(log.records, 8u);
  auto names = log.names();  // plot's parser orders the keys within a line by name
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"active_params", "epoch", "grad_norm", "loss", "lr", "peak_memory",
                                             "step_time"}));
  losses.back() = 0.25;  // the checkpoint line's value replaces step 6's
  EXPECT_EQ(log.find("loss")->values, losses);  // bit for bit
  EXPECT_EQ(log.find("lr")->values, lrs);
  EXPECT_EQ(log.find("active_params")->values.front(), 1843201);
  EXPECT_EQ(log.find("peak_memory")->values.front(), 123456789012.0);
  ASSERT_EQ(log.events.size(), 2u);
  EXPECT_EQ(log.events[0].kind, "recall");
  EXPECT_EQ(log.events[0].step, 3);
  EXPECT_EQ(log.events[1].kind, "checkpoint");
  EXPECT_EQ(log.events[1].step, 6);
}

TEST(MetricsWriter, NonFiniteValuesBecomeNull) {
  TempDir dir;
  {
    MetricsWriter writer(dir.path());
    writer.log(1, {{"loss", 0.5}, {"grad_norm", 2.0}});
    writer.log(2, {{"loss", kNaN}, {"grad_norm", kInf}});
    writer.log(3, {{"loss", 0.25}, {"grad_norm", -kInf}});
  }
  const auto lines = lines_of(read_file(dir / "metrics.jsonl"));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[1], "{\"step\":2,\"loss\":null,\"grad_norm\":null}");
  EXPECT_EQ(lines[2], "{\"step\":3,\"loss\":0.25,\"grad_norm\":null}");
  const auto log = read_metrics(dir / "metrics.jsonl");
  EXPECT_TRUE(log.warnings.empty());
  EXPECT_EQ(steps_of(log, "loss"), (std::vector<double>{1, 3}));
  EXPECT_EQ(steps_of(log, "grad_norm"), (std::vector<double>{1}));
}

TEST(MetricsWriter, AcceptsUnorderedJsonAndNoFields) {
  TempDir dir;
  MetricsWriter writer(dir.path());
  nlohmann::json fields;
  fields["lr"] = 1e-4;
  fields["loss"] = 0.5;
  writer.log(7, fields);
  writer.log(8, nullptr);
  EXPECT_EQ(read_file(writer.file()), "{\"step\":7,\"loss\":0.5,\"lr\":0.0001}\n{\"step\":8}\n");
}

TEST(MetricsWriter, ReopeningAppends) {
  TempDir dir;
  MetricsWriter(dir.path()).log(1, {{"loss", 1.0}});
  MetricsWriter(dir.path()).log(2, {{"loss", 2.0}});
  const auto log = read_metrics(dir / "metrics.jsonl");
  EXPECT_EQ(log.find("loss")->values, (std::vector<double>{1.0, 2.0}));
}

TEST(MetricsWriter, BadFieldsAreErrorsNamingTheFile) {
  TempDir dir;
  MetricsWriter writer(dir.path());
  const std::string file = writer.file().string();
  EXPECT_THROW_WITH(writer.log(1, {{"step", 2}, {"loss", 1.0}}), file, "'step'");
  EXPECT_THROW_WITH(writer.log(1, nlohmann::ordered_json::array({1, 2})), file, "JSON object", "array");
  EXPECT_THROW_WITH(writer.event(1, "recall", {{"event", "x"}}), file, "'event'");
  EXPECT_THROW_WITH(writer.event(1, "recall", 3), file, "JSON object");
  EXPECT_EQ(read_file(writer.file()), "");  // nothing half-written
}

TEST(MetricsWriter, DisabledWriterTouchesNothing) {
  TempDir dir;
  const auto run = dir / "rank1";
  MetricsWriter writer(run, /*enabled=*/false);
  EXPECT_FALSE(writer.enabled());
  writer.log(1, {{"loss", 1.0}});
  writer.event(1, "recall");
  EXPECT_EQ(writer.truncate_after(0), 0u);
  EXPECT_FALSE(fs::exists(run));
  MetricsWriter none;
  none.log(1, {{"loss", 1.0}});
  EXPECT_FALSE(none.enabled());
}

TEST(MetricsWriter, MovedWriterKeepsWriting) {
  TempDir dir;
  MetricsWriter a(dir.path());
  a.log(1, {{"loss", 1.0}});
  MetricsWriter b(std::move(a));
  EXPECT_FALSE(a.enabled());  // NOLINT(bugprone-use-after-move): moved-from is defined: disabled
  b.log(2, {{"loss", 2.0}});
  MetricsWriter c;
  c = std::move(b);
  c.log(3, {{"loss", 3.0}});
  EXPECT_EQ(lines_of(read_file(dir / "metrics.jsonl")).size(), 3u);
}

TEST(MetricsWriter, TruncateAfterDropsTheAbandonedBranch) {
  TempDir dir;
  MetricsWriter writer(dir.path());
  for (int step = 1; step <= 10; ++step) {
    writer.log(step, {{"loss", 1.0 / step}});
    if (step % 4 == 0) writer.event(step, "recall");
    if (step == 5) writer.event(step, "checkpoint");
  }
  // Lines the writer cannot attribute to a step stay as they are.
  write_file(writer.file(), read_file(writer.file()) + "not json\n{\"note\": \"no step\"}\n");

  EXPECT_EQ(writer.truncate_after(10), 0u);  // nothing later: the file is not rewritten
  EXPECT_EQ(writer.truncate_after(5), 6u);   // steps 6..10 and the recall at 8
  writer.log(6, {{"loss", 0.5}});            // the resumed run goes on from checkpoint-5
  writer.event(8, "recall");

  CapturedLog captured;
  const auto log = read_metrics(writer.file());
  EXPECT_EQ(steps_of(log, "loss"), (std::vector<double>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(log.find("loss")->values.back(), 0.5);
  ASSERT_EQ(log.events.size(), 3u);
  EXPECT_EQ(log.events[0].step, 4);
  EXPECT_EQ(log.events[1].kind, "checkpoint");
  EXPECT_EQ(log.events[2].step, 8);
  ASSERT_EQ(log.warnings.size(), 2u);  // the two lines kept as they were
  EXPECT_NE(log.warnings[0].find("not valid JSON"), std::string::npos) << log.warnings[0];
  // No temporary file is left beside it.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir.path())) files += entry.is_regular_file() ? 1 : 0;
  EXPECT_EQ(files, 1);
}

TEST(MetricsWriter, IncompleteLastLineOfACrashIsRemovedOnOpen) {
  TempDir dir;
  {
    MetricsWriter writer(dir.path());
    for (int step = 1; step <= 3; ++step) writer.log(step, {{"loss", 1.0 / step}});
  }
  const auto file = dir / "metrics.jsonl";
  write_file(file, read_file(file) + "{\"step\": 4, \"loss\": 0.2");  // the crash, mid-line

  {  // `lisadiff plot` on the crashed file: one warning, about that line only.
    CapturedLog captured;
    const auto log = read_metrics(file);
    EXPECT_EQ(steps_of(log, "loss"), (std::vector<double>{1, 2, 3}));
    ASSERT_EQ(log.warnings.size(), 1u);
    EXPECT_NE(log.warnings[0].find("line 4"), std::string::npos) << log.warnings[0];
    EXPECT_NE(log.warnings[0].find("incomplete last line"), std::string::npos) << log.warnings[0];
  }

  CapturedLog captured;
  MetricsWriter writer(dir.path());
  EXPECT_NE(captured.text().find("warning: " + file.string() + ": removed an incomplete last line (23 bytes"),
            std::string::npos)
      << captured.text();
  writer.log(4, {{"loss", 0.25}});
  writer.log(5, {{"loss", 0.2}});
  const auto log = read_metrics(file);
  EXPECT_TRUE(log.warnings.empty());
  EXPECT_EQ(steps_of(log, "loss"), (std::vector<double>{1, 2, 3, 4, 5}));
  EXPECT_EQ(log.find("loss")->values[3], 0.25);

  // A file that is nothing but an incomplete line becomes empty.
  TempDir other;
  write_file(other / "metrics.jsonl", "{\"st");
  MetricsWriter fresh(other.path());
  EXPECT_EQ(read_file(fresh.file()), "");
}

TEST(MetricsWriter, IOErrorsNameThePath) {
  TempDir dir;
  write_file(dir / "plain-file", "x");
  EXPECT_THROW_WITH(MetricsWriter(dir / "plain-file" / "run"), (dir / "plain-file" / "run").string(),
                    "cannot create the run folder");
  fs::create_directories(dir / "run" / "metrics.jsonl");  // a folder where the file should be
  EXPECT_THROW_WITH(MetricsWriter(dir / "run"), (dir / "run" / "metrics.jsonl").string(), "cannot open");
  if (fs::exists("/dev/full")) {  // every write fails with ENOSPC
    fs::create_directories(dir / "full");
    fs::create_symlink("/dev/full", dir / "full" / "metrics.jsonl");
    MetricsWriter writer(dir / "full");
    EXPECT_THROW_WITH(writer.log(1, {{"loss", 1.0}}), (dir / "full" / "metrics.jsonl").string(), "write failed");
  }
}

TEST(MetricsWriter, TensorBoardMirrorWritesEveryNumericFieldAsAScalar) {
  TempDir dir;
  const auto run = dir / "run";
  const auto logs = run / "logs";
  const auto points = [&](const std::string& tag) { return lisadiff::testing::tensorboard_scalars(logs, tag); };
  using Points = std::vector<std::pair<std::int64_t, float>>;
  MetricsWriter writer(run);
  EXPECT_TRUE(writer.tensorboard_file().empty());
  writer.log(1, {{"before_the_mirror", 1.0}});
  writer.mirror_to_tensorboard(logs);
  EXPECT_EQ(writer.tensorboard_file().parent_path(), logs);
  writer.log(2, {{"loss", 0.5}, {"lr", 1e-4}, {"peak_memory", 123456789}, {"note", "text"}, {"flag", true},
                 {"grad_norm", kNaN}, {"missing", nullptr}});
  writer.log(3, {{"loss", 0.25}});
  writer.event(4, "recall", {{"active_parameters", 10}});
  writer.event(5, "checkpoint", {{"path", "checkpoint-5"}});
  const torch::Tensor grid = torch::randint(0, 256, {2, 3, 3}, torch::kUInt8);
  writer.add_image("validation", grid, 5);

  EXPECT_EQ(points("loss"), (Points{{2, 0.5f}, {3, 0.25f}}));
  EXPECT_EQ(points("lr"), (Points{{2, 1e-4f}}));
  EXPECT_EQ(points("peak_memory"), (Points{{2, 123456789.0f}}));
  ASSERT_EQ(points("grad_norm").size(), 1u);
  EXPECT_TRUE(std::isnan(points("grad_norm")[0].second));  // null in the line, NaN in TensorBoard
  EXPECT_EQ(points("events/recall"), (Points{{4, 1.0f}}));
  EXPECT_EQ(points("events/checkpoint"), (Points{{5, 1.0f}}));
  for (const std::string tag : {"before_the_mirror", "note", "flag", "missing", "active_parameters", "event", "step"}) {
    EXPECT_TRUE(points(tag).empty()) << tag;
  }
  const auto events = lisadiff::testing::read_events(writer.tensorboard_file());
  ASSERT_FALSE(events.empty());
  const auto& image = events.back().summary().value(0);
  EXPECT_EQ(image.tag(), "validation");
  EXPECT_EQ(events.back().step(), 5);
  EXPECT_TRUE(lisadiff::testing::same_tensor(data::decode_image(image.image().encoded_image_string(), "png"), grid));

  // A resumed run: truncate_after(2) drops steps 3.. from TensorBoard's view too.
  writer.truncate_after(2);
  writer.log(3, {{"loss", 0.125}});
  EXPECT_EQ(points("loss"), (Points{{2, 0.5f}, {3, 0.125f}}));
  EXPECT_TRUE(points("events/recall").empty());
  // metrics.jsonl is what it always was.
  const auto lines = lines_of(read_file(run / "metrics.jsonl"));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[1], R"({"step":2,"loss":0.5,"lr":0.0001,"peak_memory":123456789,"note":"text","flag":true,"grad_norm":null,"missing":null})");
}

TEST(MetricsWriter, ADisabledWriterMirrorsNothing) {
  TempDir dir;
  MetricsWriter writer(dir / "run", /*enabled=*/false);
  writer.mirror_to_tensorboard(dir / "run" / "logs");
  writer.log(1, {{"loss", 1.0}});
  writer.add_image("x", torch::zeros({2, 2, 3}, torch::kUInt8), 1);
  EXPECT_TRUE(writer.tensorboard_file().empty());
  EXPECT_FALSE(fs::exists(dir / "run"));
}

// ---------------------------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------------------------

TEST(ProgressFormat, Durations) {
  EXPECT_EQ(format_duration(0), "0:00:00");
  EXPECT_EQ(format_duration(59.4), "0:00:59");
  EXPECT_EQ(format_duration(59.6), "0:01:00");
  EXPECT_EQ(format_duration(3725), "1:02:05");
  EXPECT_EQ(format_duration(100000), "27:46:40");
  EXPECT_EQ(format_duration(-1), "?:??:??");
  EXPECT_EQ(format_duration(kNaN), "?:??:??");
  EXPECT_EQ(format_duration(kInf), "?:??:??");
}

TEST(ProgressFormat, Rates) {
  EXPECT_EQ(format_rate(3.214), "3.21 it/s");
  EXPECT_EQ(format_rate(12.34), "12.3 it/s");
  EXPECT_EQ(format_rate(1234.4), "1234 it/s");
  EXPECT_EQ(format_rate(1.0), "1.00 it/s");
  EXPECT_EQ(format_rate(0.999), "1.00 it/s");
  EXPECT_EQ(format_rate(0.4), "2.50 s/it");
  EXPECT_EQ(format_rate(1.0 / 75), "75.0 s/it");
  EXPECT_EQ(format_rate(0), "? it/s");
  EXPECT_EQ(format_rate(-2), "? it/s");
  EXPECT_EQ(format_rate(kNaN), "? it/s");
  EXPECT_EQ(format_rate(kInf), "? it/s");
}

TEST(ProgressFormat, Line) {
  ProgressStatus s;
  s.step = 120;
  s.total = 1000;
  s.loss = 0.183412;
  s.lr = 1e-4;
  s.rate = 3.2;
  s.elapsed = 37.4;
  s.extra = {{"active", "1.2%"}};
  // ETA: 880 steps at 3.2 it/s = 275 s.
  EXPECT_EQ(format_progress_line(s),
            "step 120/1000 (12%) | loss 0.1834 | lr 1.00e-04 | 3.20 it/s | 0:00:37 < 0:04:35 | active 1.2%");
  s.label = "lcm";
  s.loss = kNaN;
  s.lr.reset();
  s.rate = 0;
  s.extra.clear();
  EXPECT_EQ(format_progress_line(s), "[lcm] step 120/1000 (12%) | loss nan | ? it/s | 0:00:37 < ?:??:??");
  s.total = 0;  // unknown length
  s.rate = 2;
  EXPECT_EQ(format_progress_line(s), "[lcm] step 120 | loss nan | 2.00 it/s | 0:00:37 < ?:??:??");
}

// A display driven by a clock the test sets, writing into `out`.
struct Harness {
  double now = 100;  // not 0: the display must use differences
  std::string out;
  std::vector<std::string> writes;
  ProgressOptions options(bool tty) {
    ProgressOptions o;
    o.clock = [this] { return now; };
    o.tty = tty;
    o.sink = [this](std::string_view text) {
      out += text;
      writes.emplace_back(text);
    };
    return o;
  }
};

TEST(Progress, RateAndEtaFromTheInjectedClock) {
  Harness h;
  ProgressDisplay progress(100, h.options(false));
  for (int step = 1; step <= 10; ++step) {
    h.now += 0.5;
    progress.update(step, 0.1, 1e-4);
  }
  const auto s = progress.status();
  EXPECT_DOUBLE_EQ(progress.rate(), 2.0);
  EXPECT_DOUBLE_EQ(s.elapsed, 5.0);
  EXPECT_EQ(s.step, 10);
  // 90 steps left at 2 it/s: 45 s.
  EXPECT_NE(format_progress_line(s).find("| 2.00 it/s | 0:00:05 < 0:00:45"), std::string::npos)
      << format_progress_line(s);
}

TEST(Progress, RateFollowsTheSlidingWindow) {
  Harness h;
  auto options = h.options(false);
  options.rate_window = 20;
  ProgressDisplay progress(1000, options);
  int step = 0;
  for (; step < 10; ++step) {
    h.now += 1.0;  // slow start (warm-up, first compilation)
    progress.update(step + 1);
  }
  EXPECT_DOUBLE_EQ(progress.rate(), 1.0);
  for (; step < 40; ++step) {
    h.now += 0.1;
    progress.update(step + 1);
  }
  EXPECT_NEAR(progress.rate(), 10.0, 1e-9);  // the slow steps have left the window
}

TEST(Progress, ResumedRunCountsFromItsStartStep) {
  Harness h;
  ProgressDisplay progress(100, h.options(false), /*start_step=*/50);
  h.now += 4;
  progress.update(52);
  EXPECT_DOUBLE_EQ(progress.rate(), 0.5);
  EXPECT_NE(h.out.find("step 52/100 (52%)"), std::string::npos) << h.out;
  EXPECT_NE(h.out.find("0:00:04 < 0:01:36"), std::string::npos) << h.out;  // 48 steps at 0.5 it/s
}

TEST(Progress, TerminalLinesAreRateLimitedAndRewrittenInPlace) {
  Harness h;
  ProgressDisplay progress(20, h.options(true));
  std::vector<int> printed;
  for (int step = 1; step <= 20; ++step) {
    h.now += 0.3;
    if (progress.update(step, 1.0, 1e-4)) printed.push_back(step);
  }
  // First step; then whenever 1 s has passed since the last line (every 4th step at 0.3 s);
  // and the last step.
  EXPECT_EQ(printed, (std::vector<int>{1, 5, 9, 13, 17, 20}));
  ASSERT_EQ(h.writes.size(), printed.size());
  for (std::size_t i = 0; i < h.writes.size(); ++i) {
    EXPECT_EQ(h.writes[i].front(), '\r') << h.writes[i];
    EXPECT_NE(h.writes[i].find("\x1b[K"), std::string::npos);
    const bool last = i + 1 == h.writes.size();
    EXPECT_EQ(h.writes[i].find('\n') != std::string::npos, last) << h.writes[i];
  }
  EXPECT_NE(h.writes.back().find("step 20/20 (100%)"), std::string::npos);
  EXPECT_EQ(h.out.back(), '\n');
}

TEST(Progress, PlainLinesComeLessOften) {
  Harness h;
  ProgressDisplay progress(100, h.options(false));  // plain_interval: 10 s
  int lines = 0;
  for (int step = 1; step <= 100; ++step) {
    h.now += 0.5;
    lines += progress.update(step) ? 1 : 0;
  }
  // Step 1, then every 20 steps (10 s), and the last: 1, 21, 41, 61, 81, 100.
  EXPECT_EQ(lines, 6);
  const auto out_lines = lines_of(h.out);
  ASSERT_EQ(out_lines.size(), 6u);
  EXPECT_EQ(h.out.find('\r'), std::string::npos);
  EXPECT_EQ(out_lines[0].rfind("step 1/100 (1%)", 0), 0u) << out_lines[0];
  EXPECT_EQ(out_lines[1].rfind("step 21/100 (21%)", 0), 0u) << out_lines[1];
  EXPECT_EQ(out_lines[5].rfind("step 100/100 (100%)", 0), 0u) << out_lines[5];
}

TEST(Progress, NoLineBetweenTicksEvenWhenStepsAreSlow) {
  Harness h;
  auto options = h.options(false);
  options.plain_interval = 5;
  ProgressDisplay progress(10, options);
  h.now += 4.5;
  EXPECT_TRUE(progress.update(1));  // first
  h.now += 4.5;
  EXPECT_FALSE(progress.update(2));
  h.now += 0.5;
  EXPECT_TRUE(progress.update(3));  // 5 s after the last line
  h.now += 0.25;
  EXPECT_FALSE(progress.update(4));
  EXPECT_TRUE(progress.update(10));  // last, whatever the time
}

TEST(Progress, LossIsAnExponentialMovingAverage) {
  Harness h;
  auto options = h.options(false);
  options.loss_smoothing = 0.5;
  ProgressDisplay progress(10, options);
  progress.update(1, 1.0);
  EXPECT_DOUBLE_EQ(*progress.status().loss, 1.0);  // starts at the first loss, not at 0
  progress.update(2, 3.0);
  EXPECT_DOUBLE_EQ(*progress.status().loss, 2.0);
  progress.update(3, kNaN);
  EXPECT_TRUE(std::isnan(*progress.status().loss));  // shown...
  progress.update(4, 4.0);
  EXPECT_DOUBLE_EQ(*progress.status().loss, 3.0);  // ...but not averaged in
  progress.update(5);                              // no loss given: the last one stays
  EXPECT_DOUBLE_EQ(*progress.status().loss, 3.0);

  options = h.options(false);
  options.loss_smoothing = 0;
  ProgressDisplay raw(10, options);
  raw.update(1, 1.0);
  raw.update(2, 3.0);
  EXPECT_DOUBLE_EQ(*raw.status().loss, 3.0);
}

TEST(Progress, ExtraFieldsAndLrKeepTheirLastValues) {
  Harness h;
  ProgressDisplay progress(10, h.options(false));
  progress.update(1, std::nullopt, 2e-5, {{"active", "1.2%"}});
  progress.update(2);
  const auto s = progress.status();
  EXPECT_EQ(*s.lr, 2e-5);
  ASSERT_EQ(s.extra.size(), 1u);
  EXPECT_EQ(s.extra[0].value, "1.2%");
  EXPECT_NE(h.out.find("| lr 2.00e-05 |"), std::string::npos) << h.out;
  EXPECT_NE(h.out.find("| active 1.2%"), std::string::npos) << h.out;
}

TEST(Progress, BreakLineAndDestructorEndAnInPlaceLine) {
  Harness h;
  {
    ProgressDisplay progress(10, h.options(true));
    progress.update(1);
    EXPECT_NE(h.out.back(), '\n');
    progress.break_line();
    EXPECT_EQ(h.out.back(), '\n');
    const auto size = h.out.size();
    progress.break_line();  // nothing open: nothing written
    EXPECT_EQ(h.out.size(), size);
    h.now += 2;
    progress.update(2);
    EXPECT_NE(h.out.back(), '\n');
  }
  EXPECT_EQ(h.out.back(), '\n');
}

TEST(Progress, DisabledPrintsNothing) {
  Harness h;
  auto options = h.options(true);
  options.enabled = false;
  {
    ProgressDisplay progress(3, options);
    for (int step = 1; step <= 3; ++step) EXPECT_FALSE(progress.update(step, 1.0));
  }
  EXPECT_TRUE(h.out.empty());
}

// ---------------------------------------------------------------------------------------------
// Peak memory
// ---------------------------------------------------------------------------------------------

TEST(PeakMemory, HostPeakGrowsAfterTouchingABigBuffer) {
  const auto before = PeakMemory::measure();
  ASSERT_GT(before.host_bytes, 0);
  const auto current = host_current_rss_bytes();
  ASSERT_GT(current, 0);
  // Enough to pass the old peak by 64 MiB, whatever the process did before.
  const std::size_t size = static_cast<std::size_t>(std::max<std::int64_t>(0, before.host_bytes - current)) + (64u << 20);
  std::unique_ptr<char[]> buffer(new char[size]);
  volatile char* bytes = buffer.get();
  for (std::size_t i = 0; i < size; i += 4096) bytes[i] = 1;  // touch every page
  const auto after = PeakMemory::measure();
  EXPECT_GE(after.host_bytes, before.host_bytes + (48 << 20)) << before.host_bytes << " -> " << after.host_bytes;
  EXPECT_GE(host_peak_rss_bytes(), after.host_bytes);
}

TEST(PeakMemory, WithoutCudaTheHostPeakIsReported) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "CUDA is available";
  const auto m = PeakMemory::measure();
  EXPECT_EQ(m.cuda_allocated_bytes, -1);
  EXPECT_EQ(m.cuda_reserved_bytes, -1);
  EXPECT_EQ(m.bytes(), m.host_bytes);
  reset_cuda_peak_memory();  // a no-op, not a crash
}

TEST(PeakMemory, CudaPeakFollowsTheCachingAllocator) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::Tensor warm = torch::ones({1}, torch::kCUDA);  // initialises the allocator
  reset_cuda_peak_memory();
  const auto before = cuda_peak_allocated_bytes();
  ASSERT_GE(before, 0);
  {
    torch::Tensor big = torch::ones({64 << 20}, torch::dtype(torch::kFloat).device(torch::kCUDA));  // 256 MiB
    EXPECT_GE(cuda_peak_allocated_bytes(), before + (256 << 20));
  }
  const auto m = PeakMemory::measure();
  EXPECT_GE(m.cuda_allocated_bytes, 256 << 20);  // a peak: stays after the free
  EXPECT_GE(m.cuda_reserved_bytes, m.cuda_allocated_bytes);
  EXPECT_EQ(m.bytes(), m.cuda_allocated_bytes);
  reset_cuda_peak_memory();
  EXPECT_LT(cuda_peak_allocated_bytes(), 256 << 20);
}

}  // namespace
}  // namespace lisadiff::train
