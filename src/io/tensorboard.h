// TensorBoard event files, written natively (no Python, no TensorFlow): what the diffusers
// scripts' `--report_to tensorboard` (their default) writes through accelerate, so that
// `tensorboard --logdir OUTPUT_DIR/logs` shows a lisadiff run the same way.
//
// TensorBoardWriter(dir) creates dir/events.out.tfevents.<unix seconds>.<hostname>.<pid>.<n>
// (the name torch.utils.tensorboard's SummaryWriter gives; n counts the writers this process
// made, so two writers never share a file) and writes TFRecords into it:
//   uint64 length (little-endian) | uint32 masked CRC-32C of the length bytes |
//   data (a serialized Event)     | uint32 masked CRC-32C of the data
// where masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8. The first record is an Event
// with the wall time and file_version "brain.Event:2"; each add_* call appends one Event
// holding one Summary value (a scalar as simple_value, an image as a PNG Summary.Image).
// The messages are protobuf classes generated from src/io/tfevent.proto (the subset of
// TensorFlow's event.proto and summary.proto that is used, with TensorFlow's field numbers).
//
// Durability: every record goes to the kernel in one write() on a descriptor opened with
// O_APPEND, so a reader (TensorBoard polls the file) sees whole records as soon as add_*
// returns, and a crash can leave at most an incomplete last record. A failed write (disk
// full) cuts the file back to its last whole record, when it can, and throws lisadiff::Error
// naming the file. A writer never opens an existing file: a resumed run writes a new file
// beside the old ones, whose records stay as they were. flush() fsyncs.
// One writer per file; which process writes (rank 0 only) is the caller's business.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include <torch/types.h>

namespace lisadiff::io {

// CRC-32C (Castagnoli) of `data`, and TensorFlow's masked form of it that TFRecords store.
std::uint32_t crc32c(std::string_view data);
std::uint32_t masked_crc32c(std::string_view data);

// One TFRecord around `data` (a serialized Event), as described above.
std::string tfrecord_frame(std::string_view data);

class TensorBoardWriter {
 public:
  // Creates `dir` (and its parents) and a new event file in it, and writes the file-version
  // record. Throws lisadiff::Error naming the folder or file when either cannot be created or
  // written.
  explicit TensorBoardWriter(const std::filesystem::path& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(TensorBoardWriter&& other) noexcept;
  TensorBoardWriter& operator=(TensorBoardWriter&& other) noexcept;
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // A scalar: Summary.Value{tag, simple_value} (a float32, as TensorBoard stores it) in an
  // Event at `step`. `wall_time` (seconds since the Unix epoch) defaults to now. NaN and inf
  // are written as they are (TensorBoard shows them).
  void add_scalar(std::string_view tag, double value, std::int64_t step,
                  std::optional<double> wall_time = std::nullopt);
  // An image: `rgb` holds height x width x 3 bytes, row-major, RGB (HWC). Written as a
  // Summary.Image (colorspace 3) holding the PNG of those pixels. Throws lisadiff::Error
  // naming the file for an empty or oversized image.
  void add_image(std::string_view tag, const std::uint8_t* rgb, int height, int width, std::int64_t step,
                 std::optional<double> wall_time = std::nullopt);
  // The same from a tensor on any device: uint8 [H, W, 3] (HWC, as lisadiff's decoded
  // images), or a floating-point [3, H, W] (CHW, as torch.utils.tensorboard's add_image
  // default) with values in [0, 1], clamped and rounded to bytes.
  void add_image(std::string_view tag, const torch::Tensor& image, std::int64_t step,
                 std::optional<double> wall_time = std::nullopt);
  // For a run resumed from a checkpoint at step N: a SessionLog START event at step N + 1.
  // TensorBoard's event accumulator then drops the events of earlier files with step > N
  // (the abandoned branch), as it does for a restarted TensorFlow job.
  void add_session_start(std::int64_t step, std::optional<double> wall_time = std::nullopt);
  // fsync: the records written so far survive a power cut too. Throws lisadiff::Error naming
  // the file when it fails.
  void flush();

  const std::filesystem::path& file() const { return file_; }
  // Records written so far, the file-version record included.
  std::int64_t records() const { return records_; }

 private:
  void write_event(const std::string& serialized_event);
  void close() noexcept;

  std::filesystem::path file_;
  int fd_ = -1;
  std::int64_t size_ = 0;  // bytes of whole records in the file
  std::int64_t records_ = 0;
};

}  // namespace lisadiff::io
