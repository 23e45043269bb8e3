#include "train/metrics.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/cuda.h>

#include "core/error.h"
#include "io/atomic_file.h"

namespace lisadiff::train {
namespace fs = std::filesystem;
using OrderedJson = nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------------
// MetricsWriter
// ---------------------------------------------------------------------------------------------
namespace {

// The record's numeric "step", if the line is a JSON object that has one.
std::optional<double> record_step(std::string_view line) {
  const auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!record.is_object()) return std::nullopt;
  const auto it = record.find("step");
  if (it == record.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

// An incomplete last line (a run that stopped mid-write) would swallow the next record; cut it.
void drop_incomplete_last_line(const fs::path& file) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) return;  // absent, or a device/pipe that cannot be rewritten
  const std::string text = io::read_file(file);
  if (text.empty() || text.back() == '\n') return;
  const auto end = text.rfind('\n');
  const std::size_t keep = end == std::string::npos ? 0 : end + 1;
  spdlog::warn("{}: removed an incomplete last line ({} bytes; the run that wrote it stopped mid-line)",
               file.string(), text.size() - keep);
  io::write_file_atomic(file, std::string_view(text).substr(0, keep));
}

}  // namespace

MetricsWriter::MetricsWriter(const fs::path& run_dir, bool enabled) {
  if (!enabled) return;
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) throw Error(run_dir.string(), "cannot create the run folder: " + ec.message());
  file_ = run_dir / "metrics.jsonl";
  drop_incomplete_last_line(file_);
  open_for_append();
}

MetricsWriter::~MetricsWriter() { close(); }

MetricsWriter::MetricsWriter(MetricsWriter&& other) noexcept
    : file_(std::move(other.file_)), fd_(std::exchange(other.fd_, -1)), tensorboard_(std::move(other.tensorboard_)) {
  other.file_.clear();
}

MetricsWriter& MetricsWriter::operator=(MetricsWriter&& other) noexcept {
  if (this != &other) {
    close();
    file_ = std::move(other.file_);
    other.file_.clear();
    fd_ = std::exchange(other.fd_, -1);
    tensorboard_ = std::move(other.tensorboard_);
  }
  return *this;
}

void MetricsWriter::open_for_append() {
  fd_ = ::open(file_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(file_.string(), std::string("cannot open for appending: ") + std::strerror(errno));
}

void MetricsWriter::close() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::string MetricsWriter::format_record(std::int64_t step, const OrderedJson& fields) {
  if (!fields.is_null() && !fields.is_object()) {
    throw Error(std::string("metrics fields must be a JSON object, found ") + fields.type_name());
  }
  OrderedJson record = OrderedJson::object();
  record["step"] = step;
  if (fields.is_object()) {
    for (const auto& [key, value] : fields.items()) {
      if (key == "step") throw Error(field_key("step") + ": set by the writer, not a field");
      record[key] = value;
    }
  }
  // nlohmann writes NaN and inf as null; invalid UTF-8 in a string becomes U+FFFD rather
  // than stopping a training run.
  return record.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

void MetricsWriter::append(const std::string& line) {
  const char* data = line.data();
  std::size_t size = line.size();
  while (size > 0) {
    const ssize_t n = ::write(fd_, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(file_.string(), std::string("write failed: ") + std::strerror(errno));
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

void MetricsWriter::write_record(std::int64_t step, const OrderedJson& fields) {
  std::string line;
  try {
    line = format_record(step, fields);
  } catch (const Error& e) {
    throw Error(file_.string(), e.what());
  }
  line += '\n';
  append(line);
}

void MetricsWriter::log(std::int64_t step, const OrderedJson& fields) {
  if (!enabled()) return;
  write_record(step, fields);
  if (!tensorboard_ || !fields.is_object()) return;
  // JSON numbers only: a bool is not a metric, and NaN/inf are still doubles here (the line
  // has them as null, TensorBoard keeps them as they are).
  for (const auto& [key, value] : fields.items()) {
    if (value.is_number()) tensorboard_->add_scalar(key, value.get<double>(), step);
  }
}

void MetricsWriter::event(std::int64_t step, std::string_view kind, const OrderedJson& extra) {
  if (!enabled()) return;
  if (!extra.is_null() && !extra.is_object()) {
    throw Error(file_.string(), std::string("event fields must be a JSON object, found ") + extra.type_name());
  }
  OrderedJson fields = OrderedJson::object();
  fields["event"] = std::string(kind);
  if (extra.is_object()) {
    for (const auto& [key, value] : extra.items()) {
      if (key == "event") throw Error(file_.string(), field_key("event") + ": set by event(), not a field");
      fields[key] = value;
    }
  }
  write_record(step, fields);
  if (tensorboard_) tensorboard_->add_scalar("events/" + std::string(kind), 1.0, step);
}

void MetricsWriter::mirror_to_tensorboard(const fs::path& log_dir) {
  if (!enabled()) return;
  tensorboard_ = std::make_unique<io::TensorBoardWriter>(log_dir);
}

void MetricsWriter::add_image(std::string_view tag, const torch::Tensor& image, std::int64_t step) {
  if (enabled() && tensorboard_) tensorboard_->add_image(tag, image, step);
}

fs::path MetricsWriter::tensorboard_file() const { return tensorboard_ ? tensorboard_->file() : fs::path(); }

std::size_t MetricsWriter::truncate_after(std::int64_t step) {
  if (!enabled()) return 0;
  // Event files are never rewritten: TensorBoard drops the later steps of the earlier files
  // when it reads this START.
  if (tensorboard_) tensorboard_->add_session_start(step + 1);
  const std::string text = io::read_file(file_);
  std::string kept;
  kept.reserve(text.size());
  std::size_t removed = 0;
  std::size_t begin = 0;
  while (begin < text.size()) {
    const auto end = text.find('\n', begin);
    if (end == std::string::npos) {
      ++removed;  // an incomplete last line (someone else wrote it); new records go after it
      break;
    }
    const std::string_view line(text.data() + begin, end - begin);
    const auto line_step = record_step(line);
    if (line_step && *line_step > static_cast<double>(step)) {
      ++removed;
    } else {
      kept.append(line);
      kept += '\n';
    }
    begin = end + 1;
  }
  if (removed == 0) return 0;
  io::write_file_atomic(file_, kept);
  // The descriptor still points at the replaced file.
  close();
  open_for_append();
  spdlog::info("{}: removed {} record(s) after step {} (resumed run)", file_.string(), removed, step);
  return removed;
}

// ---------------------------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------------------------
namespace {

constexpr const char* kUnknownDuration = "?:??:??";

std::string rate_number(double value) {
  if (value >= 100) return fmt::format("{:.0f}", value);
  if (value >= 10) return fmt::format("{:.1f}", value);
  return fmt::format("{:.2f}", value);
}

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void write_stderr(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

}  // namespace

std::string format_duration(double seconds) {
  // Past about 114 years the number is meaningless (and llround would overflow far later).
  if (!std::isfinite(seconds) || seconds < 0 || seconds > 3.6e12) return kUnknownDuration;
  const long long total = std::llround(seconds);
  return fmt::format("{}:{:02}:{:02}", total / 3600, (total % 3600) / 60, total % 60);
}

std::string format_rate(double steps_per_second) {
  if (!std::isfinite(steps_per_second) || steps_per_second <= 0) return "? it/s";
  // Decide by the rounded value, so 0.999 it/s does not show as "1.00 s/it".
  if (steps_per_second >= 1 || 1 / steps_per_second < 1.005) return rate_number(steps_per_second) + " it/s";
  return rate_number(1 / steps_per_second) + " s/it";
}

std::string format_progress_line(const ProgressStatus& s) {
  std::string line;
  if (!s.label.empty()) line += "[" + s.label + "] ";
  if (s.total > 0) {
    const auto percent = static_cast<long long>(std::floor(100.0 * static_cast<double>(s.step) / static_cast<double>(s.total)));
    line += fmt::format("step {}/{} ({}%)", s.step, s.total, percent);
  } else {
    line += fmt::format("step {}", s.step);
  }
  if (s.loss) line += fmt::format(" | loss {:.4g}", *s.loss);
  if (s.lr) line += fmt::format(" | lr {:.2e}", *s.lr);
  line += " | " + format_rate(s.rate);
  std::string eta = kUnknownDuration;
  if (s.total > 0 && s.rate > 0 && std::isfinite(s.rate)) {
    eta = format_duration(std::max<double>(0, static_cast<double>(s.total - s.step)) / s.rate);
  }
  line += " | " + format_duration(s.elapsed) + " < " + eta;
  for (const auto& field : s.extra) line += " | " + field.name + " " + field.value;
  return line;
}

ProgressDisplay::ProgressDisplay(std::int64_t total, ProgressOptions options, std::int64_t start_step)
    : total_(total), options_(std::move(options)), step_(start_step) {
  if (!options_.clock) options_.clock = steady_seconds;
  if (!options_.sink) options_.sink = write_stderr;
  options_.rate_window = std::max(1, options_.rate_window);
  options_.loss_smoothing = std::clamp(options_.loss_smoothing, 0.0, 1.0);
  tty_ = options_.tty ? *options_.tty : ::isatty(::fileno(stderr)) == 1;
  start_time_ = options_.clock();
  now_ = start_time_;
  window_.emplace_back(start_step, start_time_);
}

ProgressDisplay::~ProgressDisplay() {
  try {
    break_line();
  } catch (...) {
  }
}

void ProgressDisplay::emit(const std::string& text) { options_.sink(text); }

void ProgressDisplay::break_line() {
  if (!line_open_) return;
  line_open_ = false;
  emit("\n");
}

double ProgressDisplay::rate() const {
  if (window_.size() < 2) return 0;
  const double dt = window_.back().second - window_.front().second;
  const auto ds = window_.back().first - window_.front().first;
  if (!(dt > 0) || ds <= 0) return 0;
  return static_cast<double>(ds) / dt;
}

ProgressStatus ProgressDisplay::status() const {
  ProgressStatus s;
  s.step = step_;
  s.total = total_;
  s.loss = shown_loss_;
  s.lr = lr_;
  s.rate = rate();
  s.elapsed = now_ - start_time_;
  s.extra = extra_;
  s.label = options_.label;
  return s;
}

bool ProgressDisplay::update(std::int64_t step, std::optional<double> loss, std::optional<double> lr,
                             std::vector<ProgressField> extra) {
  if (!options_.enabled) return false;
  now_ = options_.clock();
  step_ = step;
  window_.emplace_back(step, now_);
  while (window_.size() > static_cast<std::size_t>(options_.rate_window) + 1) window_.pop_front();
  if (loss) {
    if (std::isfinite(*loss)) {
      const double beta = options_.loss_smoothing;
      smoothed_loss_ = smoothed_loss_ ? beta * *smoothed_loss_ + (1 - beta) * *loss : *loss;
      shown_loss_ = smoothed_loss_;
    } else {
      shown_loss_ = loss;  // a NaN must be seen, but must not poison the average
    }
  }
  if (lr) lr_ = lr;
  if (!extra.empty()) extra_ = std::move(extra);

  const bool last = total_ > 0 && step >= total_;
  const double interval = tty_ ? options_.interval : options_.plain_interval;
  if (printed_any_ && !last && now_ - last_print_ < interval) return false;

  const std::string line = format_progress_line(status());
  if (tty_) {
    emit("\r" + line + "\x1b[K" + (last ? "\n" : ""));
    line_open_ = !last;
  } else {
    emit(line + "\n");
  }
  printed_any_ = true;
  last_print_ = now_;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Peak memory
// ---------------------------------------------------------------------------------------------
namespace {


// The CUDA caching allocator, when CUDA is present and has been initialised; through c10's
// device-generic interface, so nothing here needs the CUDA headers.
c10::DeviceAllocator* cuda_allocator() {
  try {
    if (!torch::cuda::is_available()) return nullptr;
    auto* allocator = c10::getDeviceAllocator(c10::kCUDA);
    return allocator && allocator->initialized() ? allocator : nullptr;
  } catch (const std::exception&) {
    return nullptr;
  }
}

std::int64_t cuda_peak(bool reserved) {
  auto* allocator = cuda_allocator();
  if (!allocator) return -1;
  try {
    const auto device = c10::impl::getDeviceGuardImpl(c10::kCUDA)->getDevice().index();
    const auto stats = allocator->getDeviceStats(device);
    constexpr auto kAggregate = static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    return (reserved ? stats.reserved_bytes : stats.allocated_bytes)[kAggregate].peak;
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

std::int64_t proc_status_bytes(const std::string& name) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, name.size() + 1, name + ":") != 0) continue;
    std::istringstream fields(line.substr(name.size() + 1));
    long long value = 0;
    std::string unit;
    if (!(fields >> value)) return 0;
    fields >> unit;
    return unit == "kB" ? value * 1024 : value;
  }
  return 0;
}

std::int64_t host_peak_rss_bytes() {
  if (const auto hwm = proc_status_bytes("VmHWM"); hwm > 0) return hwm;
  rusage usage{};
  if (::getrusage(RUSAGE_SELF, &usage) == 0) return static_cast<std::int64_t>(usage.ru_maxrss) * 1024;  // kB on Linux
  return 0;
}

std::int64_t host_current_rss_bytes() { return proc_status_bytes("VmRSS"); }

std::int64_t cuda_peak_allocated_bytes() { return cuda_peak(false); }
std::int64_t cuda_peak_reserved_bytes() { return cuda_peak(true); }

void reset_cuda_peak_memory() {
  auto* allocator = cuda_allocator();
  if (!allocator) return;
  try {
    allocator->resetPeakStats(c10::impl::getDeviceGuardImpl(c10::kCUDA)->getDevice().index());
  } catch (const std::exception&) {
  }
}

std::int64_t peak_memory_bytes() {
  const auto cuda = cuda_peak_allocated_bytes();
  return cuda >= 0 ? cuda : host_peak_rss_bytes();
}

PeakMemory PeakMemory::measure() {
  PeakMemory m;
  m.host_bytes = host_peak_rss_bytes();
  m.cuda_allocated_bytes = cuda_peak_allocated_bytes();
  m.cuda_reserved_bytes = cuda_peak_reserved_bytes();
  return m;
}

}  // namespace lisadiff::train
