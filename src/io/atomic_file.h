// Files that appear whole or not at all: data goes to a hidden temporary file beside the
// target, which is flushed to disk and renamed over the target on commit(). A crash or an
// exception before commit() leaves the previous target untouched (and the temporary file
// is removed by the destructor when the process survives).
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

namespace lisadiff::io {

class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::filesystem::path target);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, std::size_t size);
  void write(std::string_view text) { write(text.data(), text.size()); }
  // fsync, rename over the target, fsync the directory. Throws lisadiff::Error on failure.
  void commit();

  const std::filesystem::path& target() const { return target_; }
  const std::filesystem::path& temp_path() const { return temp_; }

 private:
  [[noreturn]] void fail(const char* what);
  std::filesystem::path target_;
  std::filesystem::path temp_;
  int fd_ = -1;
  bool committed_ = false;
};

// The whole content of `path`. Throws lisadiff::Error naming the file ("cannot read: cannot
// open it (...)" or "read failed").
std::string read_file(const std::filesystem::path& path);

// Writes `content` to `path` through an AtomicFileWriter.
void write_file_atomic(const std::filesystem::path& path, std::string_view content);

// fsync of a directory, so that a rename inside it survives a power loss (best effort).
void fsync_directory(const std::filesystem::path& dir);

}  // namespace lisadiff::io
