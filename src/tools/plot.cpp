#include "tools/plot.h"

#include <algorithm>
#include <cmath>
#include <map>

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

std::string_view trim(std::string_view s) {
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return s;
}

// nlohmann's "[json.exception.parse_error.101] parse error at line 1, column 5: syntax error
// ..." without the prefix and the line (always 1 here; the caller names the file's line).
std::string parse_problem(const nlohmann::json::parse_error& e) {
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
    } catch (const nlohmann::json::parse_error& e) {
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
      if (value.is_number()) add(key, step, value.get<double>());
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

// The exponent of |v| in base 10, robust to log10 rounding (log10(1e-5) may be -4.9999...).
int decade(double v) { return static_cast<int>(std::floor(std::log10(std::fabs(v)) + 1e-9)); }

// The smallest of 1, 2, 5 x 10^k that is >= rough.
double nice_step(double rough) {
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
  const double step = std::max(nice_step((hi - lo) / std::max(target, 1)), min_step);
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

struct Panel {
  std::string metric;
  std::vector<double> steps, values, smoothed;  // smoothed is empty without an overlay
  std::size_t dropped = 0;                       // values <= 0 left out of a log axis
  int window = 1;
  Axis y;
  Rgb color;
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
constexpr Rgb kPalette[] = {{31, 119, 180}, {255, 127, 14}, {214, 39, 40},   {140, 86, 75},
                            {227, 119, 194}, {23, 190, 207}, {188, 189, 34}, {127, 127, 127}};

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

class FigureBuilder {
 public:
  FigureBuilder(const MetricsLog& log, const PlotOptions& options) : log_(log), options_(options) {}

  Figure build() {
    validate_options();
    const auto names = panel_metrics();
    m_ = sizes_for(options_.width);
    header_ = make_header();
    if (header_.key_below) m_.header_h += m_.line_h;
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

    Figure figure{Canvas(options_.width, height, kBackground), 0, 0, {}};
    set_x_range(figure);
    const int x_target = std::max(2, plot_w / (width_of("000000", m_) + 2 * m_.unit));
    x_ticks_ = linear_ticks(figure.x_min, figure.x_max, x_target, /*min_step=*/1);

    int top = m_.header_h;
    for (std::size_t i = 0; i < panels_.size(); ++i) {
      top += m_.title_h;
      const Panel& p = panels_[i];
      const auto data = [&p](double a) { return p.y.log ? std::pow(10.0, a) : a; };
      figure.panels.push_back(
          {p.metric, {left, top, left + plot_w, top + plot_h}, data(p.y.lo), data(p.y.hi), p.y.log, p.window});
      top += plot_h + m_.panel_gap;
    }
    draw_header(figure);
    for (std::size_t i = 0; i < panels_.size(); ++i) draw_panel(figure, i, i + 1 == panels_.size());
    return figure;
  }

 private:
  void validate_options() const {
    if (options_.width < 320 || options_.width > 8000) {
      throw Error(fmt::format("width {} is out of range (320 to 8000 pixels)", options_.width));
    }
    if (options_.height < 0 || options_.height > 16000) {
      throw Error(fmt::format("height {} is out of range (0 for automatic, else up to 16000 pixels)", options_.height));
    }
    if (options_.smooth < 0) throw Error(fmt::format("smoothing window {} is negative", options_.smooth));
  }

  std::vector<std::string> panel_metrics() const {
    std::vector<std::string> names;
    const auto add = [&names](const std::string& name) {
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
    };
    if (options_.metrics.empty()) {
      // The loss, the recipes' own headline metrics where the run has them (Diffusion-DPO's
      // implicit accuracy and its two raw losses), then the learning rate.
      for (const char* name : {"loss", "implicit_acc", "raw_model_loss", "ref_loss", "lr"}) {
        if (log_.find(name)) add(name);
      }
      if (names.empty()) names = log_.names();  // a log without loss or lr: everything it has
    } else {
      for (const auto& name : options_.metrics) {
        if (!log_.find(name)) {
          throw Error(log_.file.string(), fmt::format("no metric '{}' (it has: {})", name, fmt::join(log_.names(), ", ")));
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
    const MetricSeries& series = *log_.find(name);
    Panel p;
    p.metric = name;
    p.color = kPalette[index % std::size(kPalette)];
    const bool log = std::find(options_.log_y.begin(), options_.log_y.end(), name) != options_.log_y.end();
    for (std::size_t i = 0; i < series.values.size(); ++i) {
      if (log && !(series.values[i] > 0)) {
        ++p.dropped;
        continue;
      }
      p.steps.push_back(series.steps[i]);
      p.values.push_back(series.values[i]);
    }
    if (p.dropped > 0) {
      spdlog::warn("{}: '{}': {} value(s) <= 0 left out of the log-scale panel", log_.file.string(), name, p.dropped);
    }
    p.window = smoothing_window(name, p.values.size(), options_.smooth);
    if (p.window > 1) p.smoothed = moving_average(p.values, p.window);
    p.y = value_axis(p.values, log, y_ticks, max_y_ticks);
    return p;
  }

  void set_x_range(Figure& figure) const {
    double lo = INFINITY, hi = -INFINITY;
    for (const auto& p : panels_) {
      if (!p.steps.empty()) lo = std::min(lo, p.steps.front()), hi = std::max(hi, p.steps.back());
    }
    for (const auto& e : log_.events) lo = std::min(lo, e.step), hi = std::max(hi, e.step);
    if (!(lo <= hi)) lo = 0, hi = 1;  // every value was left out (log axis of non-positive values)
    if (hi - lo < 1) lo -= 1, hi += 1;
    const double pad = 0.02 * (hi - lo);
    figure.x_min = lo - pad, figure.x_max = hi + pad;
  }

  struct Header {
    std::string title;    // the run folder's name
    std::string summary;  // step range, skipped lines
    std::vector<std::pair<std::string, std::size_t>> markers;  // event kind and count, first seen first
    int key_width = 0;    // of the marker key
    bool key_below = false;  // the key does not fit beside the summary and goes on a second line
  };

  Header make_header() const {
    Header h;
    const fs::path run = log_.file.parent_path().filename();
    h.title = (run.empty() ? log_.file.filename() : run).string();
    double lo = INFINITY, hi = -INFINITY;
    for (const auto& s : log_.series) lo = std::min(lo, s.steps.front()), hi = std::max(hi, s.steps.back());
    for (const auto& e : log_.events) lo = std::min(lo, e.step), hi = std::max(hi, e.step);
    h.summary = fmt::format("steps {} to {}", format_step(lo), format_step(hi));
    if (const auto skipped = log_.warnings.size(); skipped > 0) {
      h.summary += fmt::format(", {} line{} skipped", skipped, skipped == 1 ? "" : "s");
    }
    for (const auto& e : log_.events) {
      auto it = std::find_if(h.markers.begin(), h.markers.end(), [&e](const auto& k) { return k.first == e.kind; });
      if (it == h.markers.end()) {
        h.markers.emplace_back(e.kind, 1);
      } else {
        ++it->second;
      }
    }
    for (std::size_t i = 0; i < h.markers.size(); ++i) {
      h.key_width += (i > 0 ? 4 * m_.unit : 0) + m_.scale + 2 * m_.unit + width_of(marker_label(h.markers[i]), m_);
    }
    const int left_end = m_.unit + width_of(h.title + "  " + h.summary, m_);
    h.key_below = !h.markers.empty() && left_end + 4 * m_.unit > options_.width - m_.right - h.key_width;
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

  // The run's name and step range, then a key to the markers: a short sample of each marker
  // line and its name with the count, in the marker's colour.
  void draw_header(Figure& figure) const {
    Canvas& c = figure.canvas;
    int y = m_.unit;
    c.text(m_.unit, y, header_.title, text(kText));
    c.text(m_.unit + width_of(header_.title + "  ", m_), y, header_.summary, text(kMuted));
    if (header_.key_below) y += m_.line_h;
    int x = c.width() - m_.right - header_.key_width;
    for (const auto& marker : header_.markers) {
      const MarkerStyle style = marker_style(marker.first);
      for (int dx = 0; dx < m_.scale; ++dx) c.vline(x + dx, y - m_.scale, y + m_.text_h, style.label, style.dash);
      x += m_.scale + 2 * m_.unit;
      const std::string label = marker_label(marker);
      c.text(x, y, label, text(style.label));
      x += width_of(label, m_) + 4 * m_.unit;
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
    for (const auto& e : log_.events) {
      const MarkerStyle style = marker_style(e.kind);
      const int x = static_cast<int>(std::floor(px(e.step)));
      if (dense_markers(e.kind, r.width())) {
        c.vline(x, r.top, r.top + m_.unit, style.line);  // a rug along the top edge
      } else {
        c.vline(x, r.top, r.bottom - 1, style.line, style.dash * m_.scale);
      }
    }

    const auto to_points = [&](const std::vector<double>& values) {
      std::vector<Point> points;
      for (std::size_t i = 0; i < values.size(); ++i) {
        if (std::isfinite(values[i])) points.push_back(figure.to_pixel(index, p.steps[i], values[i]));
      }
      return decimate(points);
    };
    const double stroke = 0.75 * m_.scale + 0.5;
    const double dot = p.values.size() == 1 ? 3.0 * m_.scale : 0.0;  // a lone point shows as a dot
    if (p.smoothed.empty()) {
      c.polyline(to_points(p.values), p.color, std::max(stroke, dot), r);
    } else {
      c.polyline(to_points(p.values), lighten(p.color, 0.6), std::max(0.5 * m_.scale + 0.5, dot), r);
      c.polyline(to_points(p.smoothed), p.color, stroke + 0.5, r);
    }
    if (p.values.empty()) {
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

  void draw_title(Canvas& c, const Panel& p, const PixelRect& r) const {
    const int y = r.top - m_.title_h + m_.unit / 2;
    c.text(r.left, y, p.metric, text(kText));
    std::vector<std::string> notes;
    if (p.window > 1) notes.push_back(fmt::format("moving average of {}", p.window));
    if (p.y.log) notes.push_back("log scale");
    if (p.dropped > 0) notes.push_back(fmt::format("{} values <= 0 not shown", p.dropped));
    if (!notes.empty()) {
      c.text(r.left + width_of(p.metric + "  ", m_), y, fmt::format("{}", fmt::join(notes, ", ")), text(kMuted));
    }
    if (!p.values.empty()) {
      c.text(r.right, y, fmt::format("last {} at step {}", format_value(p.values.back()), format_step(p.steps.back())),
             text(kMuted, io::Align::right));
    }
  }

  // Text at the figure's size; the anchor is the top-left corner of the line unless told.
  io::TextStyle text(Rgb color, io::Align align = io::Align::left, io::VAlign valign = io::VAlign::top) const {
    return {m_.font, color, align, valign};
  }

  const MetricsLog& log_;
  const PlotOptions& options_;
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

Figure render_metrics(const MetricsLog& log, const PlotOptions& options) { return FigureBuilder(log, options).build(); }

fs::path plot_metrics(const fs::path& run_dir_or_file, const PlotOptions& options) {
  const fs::path file = metrics_file(run_dir_or_file);
  const MetricsLog log = read_metrics(file);
  const Figure figure = render_metrics(log, options);
  const fs::path out = options.out.empty() ? fs::path(file).replace_extension(".png") : options.out;
  figure.canvas.write_png(out);
  return out;
}

}  // namespace lisadiff::tools
