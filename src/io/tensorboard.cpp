#include "io/tensorboard.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <utility>

#include <boost/crc.hpp>
#include <fmt/format.h>
#include <torch/torch.h>

#include "core/error.h"
#include "io/png.h"
#include "io/tfevent.pb.h"

namespace lisadiff::io {
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// TFRecord framing
// ---------------------------------------------------------------------------------------------

std::uint32_t crc32c(std::string_view data) {
  // CRC-32C: the Castagnoli polynomial, reflected input and output, all-ones start and final
  // XOR (crc32c("123456789") = 0xe3069283).
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(data.data(), data.size());
  return crc.checksum();
}

std::uint32_t masked_crc32c(std::string_view data) {
  // TensorFlow masks the CRCs it stores, since a CRC of data that holds CRCs is weak.
  const std::uint32_t crc = crc32c(data);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

namespace {

template <typename T>
void append_little_endian(std::string& out, T value) {
  for (std::size_t i = 0; i < sizeof(T); ++i) out += static_cast<char>((value >> (8 * i)) & 0xff);
}

}  // namespace

std::string tfrecord_frame(std::string_view data) {
  std::string record;
  record.reserve(data.size() + 16);
  append_little_endian<std::uint64_t>(record, data.size());
  append_little_endian<std::uint32_t>(record, masked_crc32c(record));  // of the 8 length bytes
  record.append(data);
  append_little_endian<std::uint32_t>(record, masked_crc32c(data));
  return record;
}

// ---------------------------------------------------------------------------------------------
// TensorBoardWriter
// ---------------------------------------------------------------------------------------------
namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string hostname() {
  std::array<char, 256> name{};
  if (::gethostname(name.data(), name.size() - 1) != 0 || name[0] == '\0') return "localhost";
  return name.data();
}

// Counts the event files this process creates, so that two writers made in the same second
// get two files (torch.utils.tensorboard's global_uid does the same).
std::atomic<int> file_counter{0};

tfevent::Event make_event(std::int64_t step, std::optional<double> wall_time) {
  tfevent::Event event;
  event.set_wall_time(wall_time ? *wall_time : now_seconds());
  event.set_step(step);
  return event;
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir.string(), "cannot create the TensorBoard log folder: " + ec.message());
  const auto seconds = static_cast<long long>(now_seconds());
  const std::string host = hostname();
  // O_EXCL: a writer only ever appends to a file it created itself, so the records of an
  // earlier run (or a crashed one) are never touched.
  for (int attempt = 0; fd_ < 0; ++attempt) {
    file_ = dir / fmt::format("events.out.tfevents.{:010d}.{}.{}.{}", seconds, host, ::getpid(), file_counter++);
    fd_ = ::open(file_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0 && (errno != EEXIST || attempt >= 1000)) {
      throw Error(file_.string(), std::string("cannot create the event file: ") + std::strerror(errno));
    }
  }
  auto event = make_event(0, std::nullopt);
  event.set_file_version("brain.Event:2");
  try {
    write_event(event.SerializeAsString());
  } catch (...) {
    close();  // the destructor of an object whose constructor throws does not run
    throw;
  }
}

TensorBoardWriter::~TensorBoardWriter() { close(); }

TensorBoardWriter::TensorBoardWriter(TensorBoardWriter&& other) noexcept
    : file_(std::move(other.file_)),
      fd_(std::exchange(other.fd_, -1)),
      size_(std::exchange(other.size_, 0)),
      records_(std::exchange(other.records_, 0)) {
  other.file_.clear();
}

TensorBoardWriter& TensorBoardWriter::operator=(TensorBoardWriter&& other) noexcept {
  if (this != &other) {
    close();
    file_ = std::move(other.file_);
    other.file_.clear();
    fd_ = std::exchange(other.fd_, -1);
    size_ = std::exchange(other.size_, 0);
    records_ = std::exchange(other.records_, 0);
  }
  return *this;
}

void TensorBoardWriter::close() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void TensorBoardWriter::write_event(const std::string& serialized_event) {
  if (fd_ < 0) throw Error(file_.string(), "the TensorBoard writer was moved from");
  const std::string record = tfrecord_frame(serialized_event);
  const char* data = record.data();
  std::size_t left = record.size();
  while (left > 0) {
    const ssize_t n = ::write(fd_, data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      // A record cut short would hide every record after it from a reader: take it back.
      // (Best effort: when even that fails, the error below still names the file.)
      if (left != record.size() && ::ftruncate(fd_, size_) != 0) errno = error;
      throw Error(file_.string(), std::string("write failed: ") + std::strerror(error));
    }
    data += n;
    left -= static_cast<std::size_t>(n);
  }
  size_ += static_cast<std::int64_t>(record.size());
  ++records_;
}

void TensorBoardWriter::add_scalar(std::string_view tag, double value, std::int64_t step,
                                   std::optional<double> wall_time) {
  auto event = make_event(step, wall_time);
  auto* summary_value = event.mutable_summary()->add_value();
  summary_value->set_tag(std::string(tag));
  summary_value->set_simple_value(static_cast<float>(value));
  write_event(event.SerializeAsString());
}

void TensorBoardWriter::add_image(std::string_view tag, const std::uint8_t* rgb, int height, int width,
                                  std::int64_t step, std::optional<double> wall_time) {
  const std::string what = fmt::format("image '{}'", tag);
  if (rgb == nullptr || height <= 0 || width <= 0) {
    throw Error(file_.string(), what, fmt::format("empty image ({} x {})", height, width));
  }
  if (static_cast<long long>(width) * 3 * height > INT_MAX) {
    throw Error(file_.string(), what, fmt::format("too large to encode as PNG ({} x {})", height, width));
  }
  // The same libpng encoder as every other PNG lisadiff writes (io/png.h).
  std::string png;
  try {
    png = encode_png_with_text(
        torch::from_blob(const_cast<std::uint8_t*>(rgb), {height, width, 3}, torch::kUInt8), {});
  } catch (const Error& e) {
    throw Error(file_.string(), what, std::string("PNG encoding failed: ") + e.what());
  }
  auto event = make_event(step, wall_time);
  auto* summary_value = event.mutable_summary()->add_value();
  summary_value->set_tag(std::string(tag));
  auto* image = summary_value->mutable_image();
  image->set_height(height);
  image->set_width(width);
  image->set_colorspace(3);  // RGB
  image->set_encoded_image_string(std::move(png));
  write_event(event.SerializeAsString());
}

void TensorBoardWriter::add_image(std::string_view tag, const torch::Tensor& image, std::int64_t step,
                                  std::optional<double> wall_time) {
  torch::Tensor hwc;
  if (image.dim() == 3 && image.scalar_type() == torch::kUInt8 && image.size(2) == 3) {
    hwc = image;
  } else if (image.dim() == 3 && image.is_floating_point() && image.size(0) == 3) {
    hwc = image.detach().to(torch::kFloat32).clamp(0, 1).mul(255).round().to(torch::kUInt8).permute({1, 2, 0});
  } else {
    throw Error(file_.string(), fmt::format("image '{}'", tag),
                fmt::format("expected uint8 [H, W, 3] or floating-point [3, H, W], found {} {}",
                            c10::toString(image.scalar_type()), fmt::format("{}", fmt::join(image.sizes(), "x"))));
  }
  hwc = hwc.to(torch::kCPU).contiguous();
  add_image(tag, hwc.data_ptr<std::uint8_t>(), static_cast<int>(hwc.size(0)), static_cast<int>(hwc.size(1)), step,
            wall_time);
}

void TensorBoardWriter::add_session_start(std::int64_t step, std::optional<double> wall_time) {
  auto event = make_event(step, wall_time);
  event.mutable_session_log()->set_status(tfevent::SessionLog::START);
  write_event(event.SerializeAsString());
}

void TensorBoardWriter::flush() {
  if (fd_ < 0) return;
  if (::fsync(fd_) != 0) throw Error(file_.string(), std::string("fsync failed: ") + std::strerror(errno));
}

}  // namespace lisadiff::io
