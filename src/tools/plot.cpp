#include "tools/plot.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "io/atomic_file.h"

namespace lisadiff::tools {
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Reading metrics.jsonl
// ---------------------------------------------------------------------------------------------
namespace {

// A corrupt file could produce one warning per line; the first ones say what is wrong.
constexpr std::size_t kLoggedWarnings = 20;
// What a plot can scale: steps far beyond any run's (so whole steps stay exact doubles and the
// x axis's tick arithmetic exact), values short of double's limit (so spans and margins stay
// finite). Larger ones are skipped with a warning, as a broken line is.
constexpr double kMaxStep = 1e15;
constexpr double kMaxValue = 1e300;

std::string_view trim(std::string_view s) {
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

// nlohmann's "[json.exception.parse_error.101] parse error at line 1, column 5: syntax error
// ..." without the prefix and the line (always 1 here; the caller names the file's line).
std::string parse_problem(const nlohmann::json::exception& e) {
  const std::string what = e.what();
  const auto column = what.find("column ");
  return column == std::string::npos ? what : what.substr(column);
}

class MetricsParser {
 public:
  explicit MetricsParser(const fs::path& file) : file_(file.string()) { log_.file = file; }

  void line(std::size_t number, std::string_view text, bool terminated) {
    text = trim(text);
    if (text.empty()) return;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for a number like 1e999
      if (!terminated) {
        return warn(number, "incomplete last line (the run is still writing or stopped mid-line), skipped");
      }
      return warn(number, "not valid JSON (" + parse_problem(e) + "), skipped");
    }
    if (!record.is_object()) {
      return warn(number, std::string("expected a JSON object, found ") + record.type_name() + ", skipped");
    }
    const auto step_it = record.find("step");
    if (step_it == record.end() || !step_it->is_number()) return warn(number, "no numeric 'step', skipped");
    const double step = step_it->get<double>();
    if (!(std::fabs(step) <= kMaxStep)) {
      return warn(number, fmt::format("'step' {} is not a step count (beyond 1e15), skipped", step));
    }
    ++log_.records;
    for (const auto& [key, value] : record.items()) {
      if (key == "step") continue;
      if (key == "event") {
        if (value.is_string()) {
          log_.events.push_back({step, value.get<std::string>()});
        } else if (!value.is_null()) {
          warn(number, "'event' is not a string, ignored");
        }
        continue;
      }
      if (!value.is_number()) continue;
      const double v = value.get<double>();
      if (std::fabs(v) > kMaxValue) {
        warn(number, fmt::format("'{}' = {} is beyond what a plot can scale (1e300), left out", key, v));
        continue;
      }
      add(key, step, v);
    }
  }

  MetricsLog finish(std::size_t lines) {
    if (log_.warnings.size() > kLoggedWarnings) {
      spdlog::warn("{}: {} lines skipped in all (the first {} are listed above)", file_, log_.warnings.size(),
                   kLoggedWarnings);
    }
    for (std::size_t i = 0; i < names_.size(); ++i) {
      MetricSeries series{names_[i], {}, {}};
      for (const auto& [step, value] : values_[i]) {
        series.steps.push_back(step);
        series.values.push_back(value);
      }
      log_.series.push_back(std::move(series));
    }
    if (log_.series.empty()) {
      if (lines == 0) throw Error(file_, "is empty: no metrics to plot");
      throw Error(file_, fmt::format("no numeric metrics to plot ({} lines, {} records with a step, {} lines skipped)",
                                     lines, log_.records, log_.warnings.size()));
    }
    return std::move(log_);
  }

 private:
  void warn(std::size_t line, const std::string& problem) {
    log_.warnings.push_back(fmt::format("{}: line {}: {}", file_, line, problem));
    if (log_.warnings.size() <= kLoggedWarnings) spdlog::warn("{}", log_.warnings.back());
  }

  void add(const std::string& name, double step, double value) {
    auto [it, inserted] = index_.emplace(name, names_.size());
    if (inserted) {
      names_.push_back(name);
      values_.emplace_back();
    }
    values_[it->second][step] = value;  // a repeated step (resumed run) replaces the old value
  }

  std::string file_;
  MetricsLog log_;
  std::map<std::string, std::size_t> index_;
  std::vector<std::string> names_;
  std::vector<std::map<double, double>> values_;
};

}  // namespace

const MetricSeries* MetricsLog::find(std::string_view name) const {
  for (const auto& s : series) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

std::vector<std::string> MetricsLog::names() const {
  std::vector<std::string> out;
  for (const auto& s : series) out.push_back(s.name);
  return out;
}

fs::path metrics_file(const fs::path& run_dir_or_file) {
  return fs::is_directory(run_dir_or_file) ? run_dir_or_file / "metrics.jsonl" : run_dir_or_file;
}

MetricsLog parse_metrics(std::string_view text, const fs::path& file) {
  MetricsParser parser(file);
  std::size_t number = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t newline = text.find('\n', pos);
    const bool terminated = newline != std::string_view::npos;
    const std::size_t end = terminated ? newline : text.size();
    parser.line(++number, text.substr(pos, end - pos), terminated);
    pos = end + 1;
  }
  return parser.finish(number);
}

MetricsLog read_metrics(const fs::path& file) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) {
    throw Error(file.string(), fs::exists(file, ec) ? "not a regular file"
                                                    : "no such file (training runs write metrics.jsonl into their "
                                                      "output folder)");
  }
  return parse_metrics(io::read_file(file), file);
}

// ---------------------------------------------------------------------------------------------
// Axes: ranges, nice ticks, labels
// ---------------------------------------------------------------------------------------------
namespace {

struct Axis {
  double lo = 0, hi = 1;  // in axis units: data, or log10(data) for a log axis
  bool log = false;
  std::vector<AxisTick> ticks;
};

// The exponent of |v| in base 10, robust to log10 rounding (log10(1e-5) may be -4.9999...);
// 0 for 0 (and for a non-finite v, which the axes never pass: they are finite and not empty).
int decade(double v) {
  if (v == 0 || !std::isfinite(v)) return 0;
  return static_cast<int>(std::floor(std::log10(std::fabs(v)) + 1e-9));
}

// The smallest of 1, 2, 5 x 10^k that is >= rough (0 for 0).
double nice_step(double rough) {
  if (!(rough > 0)) return 0;  // no span, or one that underflowed
  const double power = std::pow(10.0, decade(rough));
  const double f = rough / power;
  return (f <= 1 + 1e-9 ? 1 : f <= 2 + 1e-9 ? 2 : f <= 5 + 1e-9 ? 5 : 10) * power;
}

std::string strip_zeros(std::string s) {
  if (s.find('.') == std::string::npos) return s;
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s;
}

// v as a tick label on an axis whose ticks are `step` apart: fixed with as many decimals as
// the step needs ("0.15"), or scientific with as many mantissa digits ("2.5e-5", "1e-4").
std::string format_tick(double v, double step, bool scientific) {
  if (v == 0) return "0";
  if (!scientific) return fmt::format("{:.{}f}", v, std::max(0, -decade(step)));
  int exponent = decade(v);
  const int decimals = std::max(0, exponent - decade(step));
  std::string mantissa = fmt::format("{:.{}f}", v / std::pow(10.0, exponent), decimals);
  if (std::fabs(std::stod(mantissa)) >= 10) {  // 9.96 rounded up to 10.0
    ++exponent;
    mantissa = fmt::format("{:.{}f}", v / std::pow(10.0, exponent), decimals);
  }
  return strip_zeros(mantissa) + (exponent == 0 ? "" : "e" + std::to_string(exponent));
}

// Scientific labels when fixed ones would be long: large values, or small ones such as
// learning rates (1e-4) that would need many leading zeros.
bool wants_scientific(const std::vector<double>& values) {
  double max_abs = 0, min_abs = INFINITY;
  for (const double v : values) {
    if (v == 0) continue;
    max_abs = std::max(max_abs, std::fabs(v));
    min_abs = std::min(min_abs, std::fabs(v));
  }
  return max_abs >= 1e6 || min_abs < 1e-3;
}

std::vector<AxisTick> linear_ticks(double lo, double hi, int target, double min_step) {
  // The readers bound steps and values (kMaxStep, kMaxValue), so the span is finite; it is
  // not empty as the axes pad a constant. The step stays above 1e-12 of the values, so that
  // k below counts in exact whole numbers and the loop ends.
  if (!(hi > lo) || !std::isfinite(hi - lo)) {
    throw Error(fmt::format("internal: axis range [{}, {}] cannot be drawn", lo, hi));
  }
  const double magnitude = std::max(std::fabs(lo), std::fabs(hi));
  const double step = std::max({nice_step((hi - lo) / std::max(target, 1)), min_step, nice_step(magnitude * 1e-12)});
  std::vector<double> values;
  for (double k = std::ceil(lo / step - 1e-9); k <= std::floor(hi / step + 1e-9); ++k) {
    const double v = k * step;  // k * step, not a running sum: no accumulated rounding
    values.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  }
  const bool scientific = wants_scientific(values);
  std::vector<AxisTick> ticks;
  for (const double v : values) ticks.push_back({v, format_tick(v, step, scientific)});
  return ticks;
}

// Ticks for a log axis spanning [10^lo, 10^hi]: whole decades when there are at least two
// (every n-th one if there are many), else 1/2/5 x 10^k, else plain linear ticks.
std::vector<AxisTick> log_ticks(double lo, double hi, int target) {
  std::vector<double> values;
  const int first = static_cast<int>(std::ceil(lo - 1e-9)), last = static_cast<int>(std::floor(hi + 1e-9));
  if (last - first + 1 >= 2) {
    const int stride = std::max(1, static_cast<int>(std::ceil((last - first + 1) / static_cast<double>(target))));
    for (int k = first; k <= last; k += stride) values.push_back(std::pow(10.0, k));
  } else {
    for (int k = first - 1; k <= last + 1; ++k) {
      for (const double m : {1.0, 2.0, 5.0}) {
        const double v = m * std::pow(10.0, k);
        if (std::log10(v) >= lo - 1e-9 && std::log10(v) <= hi + 1e-9) values.push_back(v);
      }
    }
  }
  if (values.size() < 2) {
    std::vector<AxisTick> ticks;
    for (const auto& t : linear_ticks(std::pow(10.0, lo), std::pow(10.0, hi), 3, 0)) {
      if (t.value > 0) ticks.push_back(t);
    }
    return ticks;
  }
  const bool scientific = wants_scientific(values);
  std::vector<AxisTick> ticks;
  for (const double v : values) ticks.push_back({v, format_tick(v, v, scientific)});
  return ticks;
}

// A y axis around the values (already filtered to positive ones for a log axis), 5% margin.
Axis value_axis(const std::vector<double>& values, bool log, int target, int max_ticks) {
  Axis axis;
  axis.log = log;
  if (values.empty()) {
    axis.lo = 0, axis.hi = 1;
  } else {
    double lo = INFINITY, hi = -INFINITY;
    for (const double v : values) {
      const double a = log ? std::log10(v) : v;
      lo = std::min(lo, a), hi = std::max(hi, a);
    }
    if (hi - lo <= 1e-12 * std::max(1.0, std::fabs(hi))) {  // a constant: centre it
      const double pad = log ? 0.5 : (lo != 0 ? std::fabs(lo) * 0.1 : 1.0);
      lo -= pad, hi += pad;
    } else {
      const double pad = 0.05 * (hi - lo);
      lo -= pad, hi += pad;
    }
    axis.lo = lo, axis.hi = hi;
  }
  // A nice step can leave only one or two ticks in range; ask for more until there are three
  // (or the panel has no room for more labels).
  for (int t = target; t <= max_ticks; ++t) {
    axis.ticks = log ? log_ticks(axis.lo, axis.hi, t) : linear_ticks(axis.lo, axis.hi, t, 0);
    if (axis.ticks.size() >= 3) break;
  }
  return axis;
}

// ---------------------------------------------------------------------------------------------
// Series preparation
// ---------------------------------------------------------------------------------------------

// Centred moving average over `window` neighbouring records (window - 1 rounded down to an
// even count, half on each side). Near the ends the window shrinks symmetrically, so the
// first and last points are not pulled towards the middle of the run; where it would hold
// less than a quarter of its records the average is too noisy to mean much, and is NaN.
std::vector<double> moving_average(const std::vector<double>& v, int window) {
  std::vector<double> prefix(v.size() + 1, 0.0);
  for (std::size_t i = 0; i < v.size(); ++i) prefix[i + 1] = prefix[i] + v[i];
  const auto n = static_cast<std::ptrdiff_t>(v.size());
  std::vector<double> out(v.size());
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    const auto full = static_cast<std::ptrdiff_t>((window - 1) / 2);
    const std::ptrdiff_t half = std::min({full, i, n - 1 - i});
    out[i] = 4 * half < full ? NAN : (prefix[i + half + 1] - prefix[i - half]) / static_cast<double>(2 * half + 1);
  }
  return out;
}

int smoothing_window(const std::string& metric, std::size_t points, int requested) {
  if (metric.find("loss") == std::string::npos) return 1;
  const int window = requested > 0 ? requested : static_cast<int>(points / 20);
  return std::clamp(window, 1, static_cast<int>(std::max<std::size_t>(points, 1)));
}

// Many records per pixel column (a long run on a narrow image) become that column's first,
// lowest, highest and last point, in record order: the same picture, a fraction of the work.
std::vector<Point> decimate(const std::vector<Point>& points) {
  std::vector<Point> out;
  std::size_t i = 0;
  while (i < points.size()) {
    const double column = std::floor(points[i].x);
    std::size_t j = i;
    while (j < points.size() && std::floor(points[j].x) == column) ++j;
    if (j - i <= 4) {
      out.insert(out.end(), points.begin() + static_cast<std::ptrdiff_t>(i),
                 points.begin() + static_cast<std::ptrdiff_t>(j));
    } else {
      std::size_t low = i, high = i;
      for (std::size_t k = i; k < j; ++k) {
        if (points[k].y > points[low].y) low = k;  // pixel y grows downwards
        if (points[k].y < points[high].y) high = k;
      }
      std::vector<std::size_t> keep = {i, low, high, j - 1};
      std::sort(keep.begin(), keep.end());
      keep.erase(std::unique(keep.begin(), keep.end()), keep.end());
      for (const std::size_t k : keep) out.push_back(points[k]);
    }
    i = j;
  }
  return out;
}

// One run's line in one panel.
struct Curve {
  std::vector<double> steps, values, smoothed;  // smoothed is empty without an overlay
  std::size_t dropped = 0;                       // values <= 0 left out of a log axis
  int window = 1;
  Rgb color;
};

struct Panel {
  std::string metric;
  std::vector<Curve> curves;  // one per run, in run order; no values where a run lacks the metric
  Axis y;                     // spans every run's values

  bool empty() const {
    return std::all_of(curves.begin(), curves.end(), [](const Curve& c) { return c.values.empty(); });
  }
};

// ---------------------------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------------------------

constexpr Rgb kBackground{255, 255, 255};
constexpr Rgb kText{34, 34, 34};
constexpr Rgb kMuted{120, 120, 120};
constexpr Rgb kAxisColor{90, 90, 90};
constexpr Rgb kGrid{232, 232, 232};
// Tableau-like colours, without the purple and green that the markers use.
constexpr Rgb kLinePalette[] = {{31, 119, 180}, {255, 127, 14}, {214, 39, 40},   {140, 86, 75},
                            {227, 119, 194}, {23, 190, 207}, {188, 189, 34}, {127, 127, 127}};
// Several runs, a colour each: Okabe and Ito's colour-blind-safe palette (blue, vermillion,
// bluish green, reddish purple, orange, sky blue, black, yellow), the pairs that are easiest
// to tell apart first and yellow, the faintest on white, last.
constexpr Rgb kRunPalette[] = {{0, 114, 178}, {213, 94, 0},   {0, 158, 115}, {204, 121, 167},
                               {230, 159, 0}, {86, 180, 233}, {0, 0, 0},     {240, 228, 66}};
static_assert(std::size(kRunPalette) == kMaxPlotRuns);

struct MarkerStyle {
  Rgb line;   // the marker itself, light so that curves stay in front
  Rgb label;  // its name in the header
  int dash;   // 0: solid
};

MarkerStyle marker_style(const std::string& kind) {
  if (kind == "recall") return {{196, 176, 226}, {128, 90, 180}, 3};
  if (kind == "checkpoint") return {{130, 200, 130}, {40, 140, 40}, 0};
  return {{190, 190, 190}, {110, 110, 110}, 2};
}

Rgb lighten(Rgb c, double amount) {
  const auto mix = [amount](std::uint8_t v) { return static_cast<std::uint8_t>(std::lround(v + amount * (255 - v))); };
  return {mix(c.r), mix(c.g), mix(c.b)};
}

// "0.1834", "1.235e8", "9.6e-5": four significant digits, exponents written as on the axes.
std::string format_value(double v) {
  std::string s = fmt::format("{:.4g}", v);
  const auto e = s.find('e');
  if (e == std::string::npos) return s;
  std::string exponent = s.substr(e + 1);
  const bool negative = exponent[0] == '-';
  exponent.erase(0, exponent.find_first_not_of("+-0"));
  return s.substr(0, e + 1) + (negative ? "-" : "") + (exponent.empty() ? "0" : exponent);
}

// Steps are counts: written in full ("199999", not "2e+05") when they are whole numbers.
std::string format_step(double step) {
  if (step == std::floor(step) && std::fabs(step) < 1e15) return fmt::format("{}", static_cast<long long>(step));
  return format_value(step);
}

// Sizes in pixels, all derived from one scale that steps up with the width, so that large
// images stay proportionate.
struct Sizes {
  int scale;       // 1 to 4: line widths and spacing
  double font;     // text size, pixels per em
  int unit;        // spacing unit
  int text_h;      // a line of text (the font's ascent + descent)
  int line_h;      // a line of text with its spacing
  int tick_len;
  int header_h;    // run summary and marker key
  int title_h;     // each panel's title row
  int panel_gap;   // between one panel's plot and the next one's title
  int bottom_h;    // under the last plot: ticks, labels, "step"
  int right;       // right margin
};

int width_of(const std::string& text, const Sizes& m);

Sizes sizes_for(int width) {
  Sizes m{};
  m.scale = 1 + (width >= 800) + (width >= 2000) + (width >= 3200);
  m.font = 6.5 + 4 * m.scale;  // 10.5, 14.5, 18.5, 22.5
  m.unit = 4 * m.scale;
  m.text_h = static_cast<int>(std::ceil(io::font_metrics(m.font).line_height()));
  m.line_h = m.text_h + m.unit;
  m.tick_len = 2 * m.scale + 2;
  m.header_h = m.line_h + 2 * m.unit;
  m.title_h = m.line_h + m.unit / 2;
  m.panel_gap = 2 * m.unit;
  m.bottom_h = m.tick_len + m.unit / 2 + 2 * m.line_h + m.unit;
  m.right = width_of("00000", m) + m.unit;
  return m;
}

// Text widths in whole pixels, for layout.
int width_of(const std::string& text, const Sizes& m) {
  return static_cast<int>(std::ceil(io::text_width(text, m.font)));
}

// The names that identify a run, outermost first: its folders, and the file's stem when the
// file is not called metrics.jsonl ("/data/runs/lisa/metrics.jsonl": data, runs, lisa;
// "runs/lora.jsonl": ..., runs, lora). Relative paths are made absolute first, so that "."
// and ".." become names.
std::vector<std::string> name_parts(const fs::path& file) {
  std::error_code ec;
  fs::path full = fs::absolute(file, ec);
  if (ec) full = file;
  full = full.lexically_normal();
  std::vector<std::string> parts;
  for (const auto& part : full.parent_path()) {
    const std::string name = part.string();
    if (!name.empty() && name != "/" && name != ".") parts.push_back(name);
  }
  if (full.filename() != "metrics.jsonl") parts.push_back(full.stem().string());
  if (parts.empty()) parts.push_back(file.string());
  return parts;
}

// The legend's names: a given label where there is one, else the run's innermost name, with
// parent folders added for as long as two runs would share a name ("lisa/run", "lora/run").
// The same file given twice keeps its full path, then " (2)", " (3)".
std::vector<std::string> run_labels(const std::vector<const MetricsLog*>& logs, const std::vector<std::string>& given) {
  const std::size_t n = logs.size();
  std::vector<std::string> labels(n);
  std::vector<std::vector<std::string>> parts(n);
  std::vector<std::size_t> depth(n, 0);  // name parts in the label; 0: a given label
  const auto last_parts = [](const std::vector<std::string>& p, std::size_t count) {
    return fmt::format("{}", fmt::join(p.end() - static_cast<std::ptrdiff_t>(count), p.end(), "/"));
  };
  for (std::size_t i = 0; i < n; ++i) {
    if (!given.empty() && !given[i].empty()) {
      labels[i] = given[i];
    } else {
      parts[i] = name_parts(logs[i]->file);
      depth[i] = 1;
      labels[i] = parts[i].back();
    }
  }
  for (bool grew = true; grew;) {
    grew = false;
    std::vector<std::size_t> colliding;
    for (std::size_t i = 0; i < n; ++i) {
      if (depth[i] == 0 || depth[i] >= parts[i].size()) continue;
      for (std::size_t j = 0; j < n; ++j) {
        if (j != i && labels[j] == labels[i]) {
          colliding.push_back(i);
          break;
        }
      }
    }
    for (const std::size_t i : colliding) {
      labels[i] = last_parts(parts[i], ++depth[i]);
      grew = true;
    }
  }
  const std::vector<std::string> names = labels;
  for (std::size_t i = 0; i < n; ++i) {
    if (depth[i] == 0) continue;
    const auto earlier = std::count(names.begin(), names.begin() + static_cast<std::ptrdiff_t>(i), names[i]);
    if (earlier > 0) labels[i] += fmt::format(" ({})", earlier + 1);
  }
  return labels;
}

class FigureBuilder {
 public:
  // One log draws the single-run figure (a colour per panel, event markers); several draw one
  // line per run in the run's colour, with a legend instead of the markers.
  FigureBuilder(std::vector<const MetricsLog*> logs, const std::vector<std::string>& labels, const PlotOptions& options)
      : logs_(std::move(logs)), given_labels_(labels), options_(options) {}

  Figure build() {
    validate_options();
    labels_ = single() ? std::vector<std::string>{single_title()} : run_labels(logs_, given_labels_);
    const auto names = panel_metrics();
    m_ = sizes_for(options_.width);
    header_ = make_header();
    m_.header_h += header_.key_lines_below * m_.line_h;
    const int n = static_cast<int>(names.size());
    const int fixed = m_.header_h + n * m_.title_h + (n - 1) * m_.panel_gap + m_.bottom_h;
    const int plot_h = options_.height > 0 ? (options_.height - fixed) / n : 110 * m_.scale;
    const int min_plot_h = 3 * m_.line_h;
    if (plot_h < min_plot_h) {
      throw Error(fmt::format("height {} is too small for {} panel(s): at least {} pixels are needed", options_.height,
                              n, fixed + n * min_plot_h));
    }
    const int height = options_.height > 0 ? options_.height : fixed + n * plot_h;
    const int y_ticks = std::max(2, plot_h * 2 / (m_.line_h * 3));
    const int max_y_ticks = std::max(y_ticks, plot_h / m_.line_h);
    for (std::size_t i = 0; i < names.size(); ++i) panels_.push_back(prepare(names[i], i, y_ticks, max_y_ticks));

    int label_w = 0;
    for (const auto& p : panels_) {
      for (const auto& t : p.y.ticks) label_w = std::max(label_w, width_of(t.label, m_));
    }
    const int left = m_.unit + label_w + m_.unit / 2 + m_.tick_len;
    const int plot_w = options_.width - left - m_.right;
    if (plot_w < 10 * m_.unit) {
      throw Error(fmt::format("width {} is too small for the tick labels", options_.width));
    }

    Figure figure{Canvas(options_.width, height, kBackground), 0, 0, {}, {}};
    if (!single()) {
      for (std::size_t r = 0; r < logs_.size(); ++r) figure.runs.push_back({labels_[r], kRunPalette[r], {}});
    }
    set_x_range(figure);
    const int x_target = std::max(2, plot_w / (width_of("000000", m_) + 2 * m_.unit));
    x_ticks_ = linear_ticks(figure.x_min, figure.x_max, x_target, /*min_step=*/1);

    int top = m_.header_h;
    for (std::size_t i = 0; i < panels_.size(); ++i) {
      top += m_.title_h;
      const Panel& p = panels_[i];
      const auto data = [&p](double a) { return p.y.log ? std::pow(10.0, a) : a; };
      std::vector<int> windows;
      for (const auto& curve : p.curves) windows.push_back(curve.window);
      figure.panels.push_back({p.metric, {left, top, left + plot_w, top + plot_h}, data(p.y.lo), data(p.y.hi),
                               p.y.log, *std::max_element(windows.begin(), windows.end()), windows});
      top += plot_h + m_.panel_gap;
    }
    draw_header(figure);
    for (std::size_t i = 0; i < panels_.size(); ++i) draw_panel(figure, i, i + 1 == panels_.size());
    return figure;
  }

 private:
  bool single() const { return logs_.size() == 1; }

  void validate_options() const {
    if (const std::string problem = plot_runs_problem(logs_.size(), given_labels_.size(), /*has_out=*/true);
        !problem.empty()) {
      throw Error(problem);
    }
    if (options_.width < 320 || options_.width > 8000) {
      throw Error(fmt::format("width {} is out of range (320 to 8000 pixels)", options_.width));
    }
    if (options_.height < 0 || options_.height > 16000) {
      throw Error(fmt::format("height {} is out of range (0 for automatic, else up to 16000 pixels)", options_.height));
    }
    if (options_.smooth < 0) throw Error(fmt::format("smoothing window {} is negative", options_.smooth));
  }

  // The run folder's name (the file's, for a file at the top of a relative path), or the label.
  std::string single_title() const {
    if (!given_labels_.empty() && !given_labels_[0].empty()) return given_labels_[0];
    const fs::path& file = logs_[0]->file;
    const fs::path run = file.parent_path().filename();
    return (run.empty() ? file.filename() : run).string();
  }

  bool any_run_has(const std::string& name) const {
    return std::any_of(logs_.begin(), logs_.end(), [&name](const MetricsLog* log) { return log->find(name); });
  }

  std::vector<std::string> panel_metrics() const {
    std::vector<std::string> names;
    const auto add = [&names](const std::string& name) {
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
    };
    if (options_.metrics.empty()) {
      // The loss, the recipes' own headline metrics where the run has them (Diffusion-DPO's
      // implicit accuracy and its two raw losses), then the learning rate; with several runs,
      // those that any of them has.
      for (const char* name : {"loss", "implicit_acc", "raw_model_loss", "ref_loss", "lr"}) {
        if (any_run_has(name)) add(name);
      }
      if (names.empty()) {  // logs without loss or lr: everything they have, first run first
        for (const MetricsLog* log : logs_) {
          for (const auto& name : log->names()) add(name);
        }
      }
    } else {
      for (const auto& name : options_.metrics) {
        if (!any_run_has(name)) {
          if (single()) {
            const MetricsLog& log = *logs_[0];
            throw Error(log.file.string(), fmt::format("no metric '{}' (it has: {})", name, fmt::join(log.names(), ", ")));
          }
          std::vector<std::string> has;
          for (std::size_t r = 0; r < logs_.size(); ++r) {
            has.push_back(fmt::format("{}: {}", labels_[r], fmt::join(logs_[r]->names(), ", ")));
          }
          throw Error(fmt::format("no metric '{}' in any of the {} runs ({})", name, logs_.size(), fmt::join(has, "; ")));
        }
        add(name);
      }
    }
    for (const auto& name : options_.log_y) {
      if (std::find(names.begin(), names.end(), name) == names.end()) {
        throw Error(fmt::format("log-scale metric '{}' is not one of the plotted metrics ({})", name,
                                fmt::join(names, ", ")));
      }
    }
    return names;
  }

  Panel prepare(const std::string& name, std::size_t index, int y_ticks, int max_y_ticks) const {
    Panel p;
    p.metric = name;
    const bool log = std::find(options_.log_y.begin(), options_.log_y.end(), name) != options_.log_y.end();
    std::vector<double> all_values;  // every run's: the y axis spans them all
    for (std::size_t r = 0; r < logs_.size(); ++r) {
      Curve c;
      // One run: a colour per panel tells the panels apart. Several: a colour per run, the
      // same in every panel, tells the runs apart.
      c.color = single() ? kLinePalette[index % std::size(kLinePalette)] : kRunPalette[r];
      if (const MetricSeries* series = logs_[r]->find(name)) {
        for (std::size_t i = 0; i < series->values.size(); ++i) {
          if (log && !(series->values[i] > 0)) {
            ++c.dropped;
            continue;
          }
          c.steps.push_back(series->steps[i]);
          c.values.push_back(series->values[i]);
        }
        if (c.dropped > 0) {
          spdlog::warn("{}: '{}': {} value(s) <= 0 left out of the log-scale panel", logs_[r]->file.string(), name,
                       c.dropped);
        }
        c.window = smoothing_window(name, c.values.size(), options_.smooth);
        if (c.window > 1) c.smoothed = moving_average(c.values, c.window);
        all_values.insert(all_values.end(), c.values.begin(), c.values.end());
      }
      p.curves.push_back(std::move(c));
    }
    p.y = value_axis(all_values, log, y_ticks, max_y_ticks);
    return p;
  }

  // Every run's plotted steps (and, for one run, its events, which are drawn).
  void set_x_range(Figure& figure) const {
    double lo = INFINITY, hi = -INFINITY;
    for (const auto& p : panels_) {
      for (const auto& c : p.curves) {
        if (!c.steps.empty()) lo = std::min(lo, c.steps.front()), hi = std::max(hi, c.steps.back());
      }
    }
    if (single()) {
      for (const auto& e : logs_[0]->events) lo = std::min(lo, e.step), hi = std::max(hi, e.step);
    }
    if (!(lo <= hi)) lo = 0, hi = 1;  // every value was left out (log axis of non-positive values)
    if (hi - lo < 1) lo -= 1, hi += 1;
    const double pad = 0.02 * (hi - lo);
    figure.x_min = lo - pad, figure.x_max = hi + pad;
  }

  // One entry of the header's key: a marker kind (one run) or a run (several).
  struct KeyItem {
    std::string label;
    Rgb color;         // a marker's key colour, a run's line colour
    int dash = 0;      // a marker's dash
    bool run = false;  // a swatch of the run's line colour, then its label in the text colour
    int width = 0;     // swatch or marker sample, gap, label
  };

  struct Header {
    std::string title;    // the run folder's name, or "N runs"
    std::string summary;  // step range, skipped lines
    std::vector<std::pair<std::string, std::size_t>> markers;  // event kind and count, first seen first
    std::vector<KeyItem> key;
    std::vector<std::pair<std::size_t, std::size_t>> rows;  // [first, last) key items of each row
    std::vector<int> row_widths;
    int key_lines_below = 0;  // 0: the key fits beside the summary on the title line
  };

  int swatch_width() const { return 3 * m_.unit; }

  Header make_header() const {
    Header h;
    h.title = single() ? labels_[0] : fmt::format("{} runs", logs_.size());
    double lo = INFINITY, hi = -INFINITY;
    std::size_t skipped = 0;
    for (const MetricsLog* log : logs_) {
      for (const auto& s : log->series) lo = std::min(lo, s.steps.front()), hi = std::max(hi, s.steps.back());
      if (single()) {
        for (const auto& e : log->events) lo = std::min(lo, e.step), hi = std::max(hi, e.step);
      }
      skipped += log->warnings.size();
    }
    h.summary = fmt::format("steps {} to {}", format_step(lo), format_step(hi));
    if (skipped > 0) h.summary += fmt::format(", {} line{} skipped", skipped, skipped == 1 ? "" : "s");

    const int available = options_.width - m_.right - m_.unit;  // a key row's room
    if (single()) {
      for (const auto& e : logs_[0]->events) {
        auto it = std::find_if(h.markers.begin(), h.markers.end(), [&e](const auto& k) { return k.first == e.kind; });
        if (it == h.markers.end()) {
          h.markers.emplace_back(e.kind, 1);
        } else {
          ++it->second;
        }
      }
      for (const auto& marker : h.markers) {
        const MarkerStyle style = marker_style(marker.first);
        const std::string label = marker_label(marker);
        h.key.push_back({label, style.label, style.dash, false, m_.scale + 2 * m_.unit + width_of(label, m_)});
      }
    } else {
      for (std::size_t r = 0; r < logs_.size(); ++r) {
        // A label longer than a whole row is cut short rather than run off the image.
        const std::string label = io::ellipsize(labels_[r], m_.font, available - swatch_width() - m_.unit);
        h.key.push_back({label, kRunPalette[r], 0, true, swatch_width() + m_.unit + width_of(label, m_)});
      }
    }
    if (h.key.empty()) return h;

    int key_width = 0;
    for (std::size_t i = 0; i < h.key.size(); ++i) key_width += (i > 0 ? 4 * m_.unit : 0) + h.key[i].width;
    const int left_end = m_.unit + width_of(h.title + "  " + h.summary, m_);
    if (left_end + 4 * m_.unit <= options_.width - m_.right - key_width) {
      h.rows.emplace_back(0, h.key.size());  // beside the summary
      h.row_widths.push_back(key_width);
      return h;
    }
    // Below the title: one run's marker key on one line, as it always was (a handful of event
    // kinds); a legend of several runs on as many lines as it takes.
    if (single()) {
      h.rows.emplace_back(0, h.key.size());
      h.row_widths.push_back(key_width);
      h.key_lines_below = 1;
      return h;
    }
    std::size_t first = 0;
    int width = 0;
    for (std::size_t i = 0; i < h.key.size(); ++i) {
      const int added = (i > first ? 4 * m_.unit : 0) + h.key[i].width;
      if (i > first && width + added > available) {
        h.rows.emplace_back(first, i);
        h.row_widths.push_back(width);
        first = i;
        width = h.key[i].width;
      } else {
        width += added;
      }
    }
    h.rows.emplace_back(first, h.key.size());
    h.row_widths.push_back(width);
    h.key_lines_below = static_cast<int>(h.rows.size());
    return h;
  }

  // Markers of one kind closer than a few pixels on average (a re-draw every few steps over a
  // long run) would paint the whole plot; they become short ticks along its top edge instead.
  bool dense_markers(const std::string& kind, int plot_width) const {
    for (const auto& [name, count] : header_.markers) {
      if (name == kind) return static_cast<double>(count) * 6 > plot_width;
    }
    return false;
  }

  static std::string marker_label(const std::pair<std::string, std::size_t>& marker) {
    return fmt::format("{} ({})", marker.first, marker.second);
  }

  // The run's name (or the number of runs) and the step range, then the key, right-aligned:
  // for one run a short sample of each marker line and its name with the count, in the
  // marker's colour; for several a swatch of each run's line colour and the run's label.
  void draw_header(Figure& figure) const {
    Canvas& c = figure.canvas;
    int y = m_.unit;
    c.text(m_.unit, y, header_.title, text(kText));
    c.text(m_.unit + width_of(header_.title + "  ", m_), y, header_.summary, text(kMuted));
    if (header_.key_lines_below > 0) y += m_.line_h;
    const io::FontMetrics font = io::font_metrics(m_.font);
    for (std::size_t row = 0; row < header_.rows.size(); ++row, y += m_.line_h) {
      int x = c.width() - m_.right - header_.row_widths[row];
      for (std::size_t i = header_.rows[row].first; i < header_.rows[row].second; ++i) {
        const KeyItem& item = header_.key[i];
        if (item.run) {
          // A short thick stroke at the height of the label's lower-case letters.
          const int thickness = m_.scale + 1;
          const int middle = static_cast<int>(std::lround(y + font.ascent - 0.4 * font.cap_height));
          const PixelRect swatch{x, middle - thickness / 2, x + swatch_width(), middle - thickness / 2 + thickness};
          c.fill_rect(swatch, item.color);
          figure.runs.at(i).swatch = swatch;  // several runs: key item i is run i
          x += swatch_width() + m_.unit;
          c.text(x, y, item.label, text(kText));
        } else {
          for (int dx = 0; dx < m_.scale; ++dx) c.vline(x + dx, y - m_.scale, y + m_.text_h, item.color, item.dash);
          x += m_.scale + 2 * m_.unit;
          c.text(x, y, item.label, text(item.color));
        }
        x += width_of(item.label, m_) + 4 * m_.unit;
      }
    }
  }

  void draw_panel(Figure& figure, std::size_t index, bool last) const {
    Canvas& c = figure.canvas;
    const Panel& p = panels_[index];
    const PixelRect& r = figure.panels[index].plot;
    const auto px = [&](double step) { return figure.to_pixel(index, step, 0).x; };
    const auto py = [&](double value) { return figure.to_pixel(index, 0, value).y; };

    for (const auto& t : p.y.ticks) c.hline(r.left, r.right - 1, static_cast<int>(std::floor(py(t.value))), kGrid);
    for (const auto& t : x_ticks_) c.vline(static_cast<int>(std::floor(px(t.value))), r.top, r.bottom - 1, kGrid);
    if (single()) {
      for (const auto& e : logs_[0]->events) {
        const MarkerStyle style = marker_style(e.kind);
        const int x = static_cast<int>(std::floor(px(e.step)));
        if (dense_markers(e.kind, r.width())) {
          c.vline(x, r.top, r.top + m_.unit, style.line);  // a rug along the top edge
        } else {
          c.vline(x, r.top, r.bottom - 1, style.line, style.dash * m_.scale);
        }
      }
    }

    const auto to_points = [&](const Curve& curve, const std::vector<double>& values) {
      std::vector<Point> points;
      for (std::size_t i = 0; i < values.size(); ++i) {
        if (std::isfinite(values[i])) points.push_back(figure.to_pixel(index, curve.steps[i], values[i]));
      }
      return decimate(points);
    };
    const double stroke = 0.75 * m_.scale + 0.5;
    // Every run's raw curve first, then the moving averages over them: no run's noise hides
    // another run's trend.
    for (const Curve& curve : p.curves) {
      if (curve.values.empty()) continue;
      const double dot = curve.values.size() == 1 ? 3.0 * m_.scale : 0.0;  // a lone point shows as a dot
      if (curve.smoothed.empty()) {
        c.polyline(to_points(curve, curve.values), curve.color, std::max(stroke, dot), r);
      } else {
        c.polyline(to_points(curve, curve.values), lighten(curve.color, 0.6), std::max(0.5 * m_.scale + 0.5, dot), r);
      }
    }
    for (const Curve& curve : p.curves) {
      if (!curve.smoothed.empty()) c.polyline(to_points(curve, curve.smoothed), curve.color, stroke + 0.5, r);
    }
    if (p.empty()) {
      const std::string note = "no positive values";
      c.text((r.left + r.right) / 2.0, (r.top + r.bottom) / 2.0, note,
             text(kMuted, io::Align::centre, io::VAlign::middle));
    }

    // Frame, ticks, labels.
    c.hline(r.left - 1, r.right, r.top - 1, kAxisColor);
    c.hline(r.left - 1, r.right, r.bottom, kAxisColor);
    c.vline(r.left - 1, r.top - 1, r.bottom, kAxisColor);
    c.vline(r.right, r.top - 1, r.bottom, kAxisColor);
    for (const auto& t : p.y.ticks) {
      const double y = py(t.value);
      c.hline(r.left - 1 - m_.tick_len, r.left - 2, static_cast<int>(std::floor(y)), kAxisColor);
      c.text(r.left - 1 - m_.tick_len - m_.unit / 2, y, t.label, text(kText, io::Align::right, io::VAlign::middle));
    }
    for (const auto& t : x_ticks_) {
      const int x = static_cast<int>(std::floor(px(t.value)));
      c.vline(x, r.bottom + 1, r.bottom + m_.tick_len, kAxisColor);
      if (last) {
        c.text(x + 0.5, r.bottom + m_.tick_len + m_.unit / 2, t.label, text(kText, io::Align::centre));
      }
    }
    if (last) {
      const std::string label = "step";
      c.text((r.left + r.right) / 2.0, r.bottom + m_.tick_len + m_.unit / 2 + m_.line_h, label,
             text(kText, io::Align::centre));
    }
    draw_title(c, p, r);
  }

  // "moving average of 20", or with several runs whose windows differ, each run's in run
  // order ("moving average of 5 / 20"); "" without an overlay.
  static std::string smoothing_note(const Panel& p) {
    std::vector<int> windows;
    for (const auto& curve : p.curves) {
      if (!curve.values.empty() || p.curves.size() == 1) windows.push_back(curve.window);
    }
    if (windows.empty() || *std::max_element(windows.begin(), windows.end()) <= 1) return "";
    if (std::all_of(windows.begin(), windows.end(), [&windows](int w) { return w == windows.front(); })) {
      return fmt::format("moving average of {}", windows.front());
    }
    return fmt::format("moving average of {}", fmt::join(windows, " / "));
  }

  void draw_title(Canvas& c, const Panel& p, const PixelRect& r) const {
    const int y = r.top - m_.title_h + m_.unit / 2;
    c.text(r.left, y, p.metric, text(kText));
    std::vector<std::string> notes;
    if (std::string smoothing = smoothing_note(p); !smoothing.empty()) notes.push_back(std::move(smoothing));
    if (p.y.log) notes.push_back("log scale");
    std::size_t dropped = 0;
    for (const auto& curve : p.curves) dropped += curve.dropped;
    if (dropped > 0) notes.push_back(fmt::format("{} values <= 0 not shown", dropped));
    const std::string joined = fmt::format("{}", fmt::join(notes, ", "));
    if (!notes.empty()) c.text(r.left + width_of(p.metric + "  ", m_), y, joined, text(kMuted));
    if (single()) {
      const Curve& curve = p.curves.front();
      if (!curve.values.empty()) {
        c.text(r.right, y,
               fmt::format("last {} at step {}", format_value(curve.values.back()), format_step(curve.steps.back())),
               text(kMuted, io::Align::right));
      }
      return;
    }
    // Several runs: each one's last value in its colour, where the title leaves room.
    const std::string lead = "last ", gap = "  ";
    std::vector<std::pair<std::string, Rgb>> values;
    int width = width_of(lead, m_);
    for (const auto& curve : p.curves) {
      if (curve.values.empty()) continue;
      values.emplace_back(format_value(curve.values.back()), curve.color);
      width += width_of(values.back().first, m_) + (values.size() > 1 ? width_of(gap, m_) : 0);
    }
    const int left_end = r.left + width_of(notes.empty() ? p.metric : p.metric + "  " + joined, m_) + 2 * m_.unit;
    int x = r.right - width;
    if (values.empty() || x < left_end) return;
    c.text(x, y, lead, text(kMuted));
    x += width_of(lead, m_);
    for (std::size_t i = 0; i < values.size(); ++i) {
      if (i > 0) x += width_of(gap, m_);
      c.text(x, y, values[i].first, text(values[i].second));
      x += width_of(values[i].first, m_);
    }
  }

  // Text at the figure's size; the anchor is the top-left corner of the line unless told.
  io::TextStyle text(Rgb color, io::Align align = io::Align::left, io::VAlign valign = io::VAlign::top) const {
    return {m_.font, color, align, valign};
  }

  std::vector<const MetricsLog*> logs_;
  const std::vector<std::string>& given_labels_;
  const PlotOptions& options_;
  std::vector<std::string> labels_;  // one run: the header title; several: the legend's names
  Sizes m_{};
  std::vector<Panel> panels_;
  std::vector<AxisTick> x_ticks_;
  Header header_;
};

}  // namespace

std::vector<AxisTick> axis_ticks(double lo, double hi, int max_ticks, bool log_scale) {
  if (!(lo < hi) || (log_scale && !(lo > 0))) {
    throw Error(fmt::format("axis range [{}, {}] is empty{}", lo, hi, log_scale ? " or not positive" : ""));
  }
  return log_scale ? log_ticks(std::log10(lo), std::log10(hi), max_ticks) : linear_ticks(lo, hi, max_ticks, 0);
}

Point Figure::to_pixel(std::size_t panel, double step, double value) const {
  const PanelLayout& p = panels.at(panel);
  const auto axis = [&p](double v) { return p.log_y ? std::log10(v) : v; };
  const double tx = (step - x_min) / (x_max - x_min);
  const double ty = (axis(value) - axis(p.y_min)) / (axis(p.y_max) - axis(p.y_min));
  return {p.plot.left + 0.5 + tx * (p.plot.width() - 1), p.plot.top + 0.5 + (1 - ty) * (p.plot.height() - 1)};
}

std::string plot_runs_problem(std::size_t runs, std::size_t labels, bool has_out) {
  if (runs == 0) return "RUN: no runs to plot";
  if (runs > kMaxPlotRuns) {
    return fmt::format("RUN: {} runs, at most {} fit in one figure (one colour each)", runs, kMaxPlotRuns);
  }
  if (labels != 0 && labels != runs) {
    return fmt::format("--labels: {} label{} for {} run{} (one per run, in the order of the runs)", labels,
                       labels == 1 ? "" : "s", runs, runs == 1 ? "" : "s");
  }
  // One run writes beside its metrics file; several have no one folder to write into.
  if (runs > 1 && !has_out) return "--out: required when plotting several runs";
  return "";
}

Figure render_metrics(const MetricsLog& log, const PlotOptions& options) {
  return FigureBuilder({&log}, /*labels=*/{}, options).build();
}

Figure render_runs(const std::vector<MetricsLog>& logs, const std::vector<std::string>& labels,
                   const PlotOptions& options) {
  std::vector<const MetricsLog*> pointers;
  for (const auto& log : logs) pointers.push_back(&log);
  return FigureBuilder(std::move(pointers), labels, options).build();
}

fs::path plot_metrics(const fs::path& run_dir_or_file, const PlotOptions& options) {
  return plot_runs({run_dir_or_file}, /*labels=*/{}, options);
}

fs::path plot_runs(const std::vector<fs::path>& runs, const std::vector<std::string>& labels,
                   const PlotOptions& options) {
  // Before any file is read: a command-line mistake should not wait for large logs.
  if (const std::string problem = plot_runs_problem(runs.size(), labels.size(), !options.out.empty());
      !problem.empty()) {
    throw Error(problem);
  }
  std::vector<MetricsLog> logs;
  for (const auto& run : runs) logs.push_back(read_metrics(metrics_file(run)));
  const Figure figure = render_runs(logs, labels, options);
  const fs::path out = options.out.empty() ? fs::path(logs.front().file).replace_extension(".png") : options.out;
  figure.canvas.write_png(out);
  return out;
}

}  // namespace lisadiff::tools
