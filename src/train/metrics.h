// What a training run reports while it goes: metrics.jsonl for `lisadiff plot`, a progress
// line on stderr, and the process's peak memory.
//
// MetricsWriter appends one JSON object per call to RUN_DIR/metrics.jsonl, the contract of
// README.md, "lisadiff plot" (and src/tools/plot.h):
//   {"step": 12, "loss": 0.1834, "lr": 9.6e-05, "grad_norm": 1.23, "peak_memory": 123456789}
//   {"step": 50, "event": "recall"}
//   {"step": 500, "event": "checkpoint"}
// "step" comes first, then the fields in the order given; NaN and inf are written as null.
// Each line goes to the file in one write() on a descriptor opened with O_APPEND, so it is in
// the kernel (and visible to `lisadiff plot`) as soon as log() returns, and a crash leaves at
// most one incomplete last line. Opening a file whose last line is incomplete removes that
// line first (with a warning), so new records never get glued to it. A resumed run calls
// truncate_after(N) to drop the records of the branch it abandons (steps after checkpoint-N).
// Only one writer per file; a disabled writer (ranks other than 0) does nothing at all.
//
// A TensorBoard mirror (mirror_to_tensorboard(log_dir); `report_to` in the trainer's options)
// also writes every record to an event file (src/io/tensorboard.h): each numeric field of a
// log() line becomes a scalar tagged with the field name at that step (strings, nulls and
// booleans are left out; NaN and inf stay NaN and inf), an event becomes the scalar
// "events/<kind>" = 1 at its step (its extra fields stay in metrics.jsonl only), and
// truncate_after(N) writes a SessionLog START at step N + 1, so TensorBoard drops the
// abandoned branch of a resumed run from the files of the earlier runs. add_image() writes
// an image (validation grids) to the mirror only.
//
// ProgressDisplay prints "step 120/1000 (12%) | loss 0.1834 | lr 1.00e-04 | 3.21 it/s |
// 0:00:37 < 0:04:34 | active 1.2%" on stderr: rewritten in place every `interval` seconds
// when stderr is a terminal, a plain line every `plain_interval` seconds otherwise (CI logs),
// and always at the first and the last step. The clock is injectable, so tests do not sleep.
//
// PeakMemory::measure() gives the process's peak resident memory and, when CUDA is in use,
// the CUDA caching allocator's peak; bytes() is what the metrics' "peak_memory" holds.
#pragma once

#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <memory>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "io/tensorboard.h"

namespace lisadiff::train {

// ---------------------------------------------------------------------------------------------
// metrics.jsonl
// ---------------------------------------------------------------------------------------------
class MetricsWriter {
 public:
  // A disabled writer: every call does nothing.
  MetricsWriter() = default;
  // Creates `run_dir` (and its parents) and opens run_dir/metrics.jsonl for appending; an
  // incomplete last line already in the file is removed first (atomically), with a warning.
  // enabled = false (ranks other than 0): touches nothing, every call does nothing.
  // Throws lisadiff::Error naming the folder or file when it cannot be created or opened.
  explicit MetricsWriter(const std::filesystem::path& run_dir, bool enabled = true);
  ~MetricsWriter();
  MetricsWriter(MetricsWriter&& other) noexcept;
  MetricsWriter& operator=(MetricsWriter&& other) noexcept;
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  // Appends {"step": step, <fields>}. `fields` is a JSON object (or null: no fields) and may
  // not hold "step"; numbers that are NaN or inf are written as null. Throws lisadiff::Error
  // naming the file when the write fails or the fields are not an object.
  void log(std::int64_t step, const nlohmann::ordered_json& fields);
  // Appends {"step": step, "event": kind, <extra>} ("recall": LISA drew new layers,
  // "checkpoint": a checkpoint was written). `extra` may hold neither "step" nor "event".
  void event(std::int64_t step, std::string_view kind,
             const nlohmann::ordered_json& extra = nlohmann::ordered_json::object());
  // For a run resumed from checkpoint-N: removes every line whose "step" is greater than
  // `step` (lines that are not JSON objects with a numeric step are kept as they are), by
  // rewriting the file atomically, and goes on appending to the new file. Returns the number
  // of lines removed (0 when disabled or nothing was later).
  std::size_t truncate_after(std::int64_t step);

  // Starts mirroring every later record to a new TensorBoard event file in `log_dir`
  // (created with its parents). Does nothing on a disabled writer. Throws lisadiff::Error
  // naming the folder or file when it cannot be created.
  void mirror_to_tensorboard(const std::filesystem::path& log_dir);
  // An image for TensorBoard (uint8 [H, W, 3] or floating-point [3, H, W] in [0, 1]; see
  // io::TensorBoardWriter::add_image); nothing without a mirror.
  void add_image(std::string_view tag, const torch::Tensor& image, std::int64_t step);
  // The mirror's event file; empty without a mirror.
  std::filesystem::path tensorboard_file() const;

  bool enabled() const { return fd_ >= 0; }
  // run_dir/metrics.jsonl; empty for a disabled writer.
  const std::filesystem::path& file() const { return file_; }

  // The line log()/event() write for a record, without the trailing newline.
  static std::string format_record(std::int64_t step, const nlohmann::ordered_json& fields);

 private:
  void open_for_append();
  void append(const std::string& line);
  void write_record(std::int64_t step, const nlohmann::ordered_json& fields);
  void close() noexcept;

  std::filesystem::path file_;
  int fd_ = -1;
  std::unique_ptr<io::TensorBoardWriter> tensorboard_;
};

// ---------------------------------------------------------------------------------------------
// Progress on stderr
// ---------------------------------------------------------------------------------------------

// "h:mm:ss", rounded to the nearest second: 0 -> "0:00:00", 3725.4 -> "1:02:05", hours grow
// past 24 ("27:46:40"). Negative, NaN or infinite: "?:??:??".
std::string format_duration(double seconds);
// Steps per second as "3.21 it/s" (3 significant digits), and below 1 it/s as seconds per
// step, "2.50 s/it" (as tqdm). Zero, negative, NaN or infinite: "? it/s".
std::string format_rate(double steps_per_second);

struct ProgressField {
  std::string name;   // "active"
  std::string value;  // "1.2%"
};

// Everything one progress line shows.
struct ProgressStatus {
  std::int64_t step = 0;
  std::int64_t total = 0;          // <= 0: unknown (no percentage, no ETA)
  std::optional<double> loss;      // shown as "loss 0.1834" (4 significant digits)
  std::optional<double> lr;        // shown as "lr 1.00e-04"
  double rate = 0;                 // steps per second; <= 0: unknown
  double elapsed = 0;              // seconds
  std::vector<ProgressField> extra;
  std::string label;               // printed first when not empty
};
// "[label] step 120/1000 (12%) | loss 0.1834 | lr 1.00e-04 | 3.21 it/s | 0:00:37 < 0:04:34 |
// active 1.2%": elapsed < ETA, where ETA = (total - step) / rate ("?:??:??" when unknown).
std::string format_progress_line(const ProgressStatus& status);

struct ProgressOptions {
  double interval = 1.0;         // seconds between lines when stderr is a terminal
  double plain_interval = 10.0;  // seconds between lines otherwise (CI logs stay short)
  // The loss shown is an exponential moving average: shown = beta * shown + (1 - beta) * loss,
  // starting at the first loss. 0: the raw loss. A NaN/inf loss is shown as is and leaves the
  // average alone.
  double loss_smoothing = 0.9;
  // it/s is measured over the last `rate_window` updates (at least 1).
  int rate_window = 20;
  std::string label;             // e.g. "lcm_distill"; printed first
  bool enabled = true;           // false (ranks other than 0): prints nothing
  // Injected for tests: the time in seconds (monotonic; default std::chrono::steady_clock),
  // whether output is a terminal (default isatty(stderr)), and where text goes (default
  // stderr, flushed).
  std::function<double()> clock;
  std::optional<bool> tty;
  std::function<void(std::string_view)> sink;
};

class ProgressDisplay {
 public:
  // `total`: the step the loop ends at (<= 0: unknown); `start_step`: the step it starts
  // from (a resumed run's checkpoint step). The clock starts now.
  explicit ProgressDisplay(std::int64_t total, ProgressOptions options = {}, std::int64_t start_step = 0);
  // Ends an in-place line with a newline.
  ~ProgressDisplay();
  ProgressDisplay(const ProgressDisplay&) = delete;
  ProgressDisplay& operator=(const ProgressDisplay&) = delete;

  // Records that `step` is done (steps only grow). A value not given (loss, lr, an empty
  // `extra`) keeps its last one. Prints a line at the first update, at step >= total, and
  // when `interval` (terminal) or `plain_interval` seconds have passed since the last line.
  // Returns whether it printed.
  bool update(std::int64_t step, std::optional<double> loss = std::nullopt,
              std::optional<double> lr = std::nullopt, std::vector<ProgressField> extra = {});
  // Ends the in-place line, if one is showing, so that other output (a log message, a
  // checkpoint notice) starts on a line of its own; the next update starts a new one.
  void break_line();

  // What a line printed now would show (elapsed: up to the last update), for callers that
  // log it elsewhere.
  ProgressStatus status() const;
  double rate() const;  // steps per second over the window; 0 before the first update

 private:
  void emit(const std::string& text);

  std::int64_t total_;
  ProgressOptions options_;
  bool tty_ = false;
  double start_time_ = 0;
  double now_ = 0;  // the time of the last update
  double last_print_ = 0;
  bool printed_any_ = false;
  bool line_open_ = false;  // an in-place line is showing, not ended by a newline
  std::int64_t step_ = 0;
  std::optional<double> smoothed_loss_;
  std::optional<double> shown_loss_;
  std::optional<double> lr_;
  std::vector<ProgressField> extra_;
  std::deque<std::pair<std::int64_t, double>> window_;  // (step, time) of recent updates
};

// ---------------------------------------------------------------------------------------------
// Peak memory
// ---------------------------------------------------------------------------------------------
struct PeakMemory {
  // The process's peak resident set size in bytes (VmHWM of /proc/self/status, else
  // getrusage's ru_maxrss); 0 when neither can be read.
  std::int64_t host_bytes = 0;
  // The CUDA caching allocator's peak allocated and reserved bytes on the current device;
  // -1 when CUDA is not available or has not allocated anything yet.
  std::int64_t cuda_allocated_bytes = -1;
  std::int64_t cuda_reserved_bytes = -1;

  static PeakMemory measure();
  // The number a metrics line's "peak_memory" holds: the CUDA peak allocated bytes when
  // CUDA is in use, else the host peak.
  std::int64_t bytes() const { return cuda_allocated_bytes >= 0 ? cuda_allocated_bytes : host_bytes; }
};

// PeakMemory::measure().bytes() without the measurements it does not use: the CUDA peak
// allocated bytes when CUDA is in use, else the host peak.
std::int64_t peak_memory_bytes();

std::int64_t host_peak_rss_bytes();
// A "Name:   123 kB" field of /proc/self/status ("VmRSS", "VmHWM", "RssAnon", ...) in
// bytes; 0 when it cannot be read.
std::int64_t proc_status_bytes(const std::string& name);
// The current resident set size (VmRSS); 0 when it cannot be read.
std::int64_t host_current_rss_bytes();
// -1 when CUDA is not available or its allocator is not initialised.
std::int64_t cuda_peak_allocated_bytes();
std::int64_t cuda_peak_reserved_bytes();
// Starts the CUDA peaks over from the current usage (no-op without CUDA), e.g. per epoch.
void reset_cuda_peak_memory();

}  // namespace lisadiff::train
