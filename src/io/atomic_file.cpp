#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "core/error.h"

namespace lisadiff::io {
namespace {

std::filesystem::path temp_name_for(const std::filesystem::path& target) {
  static std::atomic<unsigned> counter{0};
  static const auto salt = std::random_device{}();
  const std::string name = "." + target.filename().string() + ".tmp." + std::to_string(getpid()) + "." +
                           std::to_string(salt) + "." + std::to_string(counter++);
  return target.parent_path() / name;
}

// Fault injection for the disk-full tests (docs/hardening.md): with LISADIFF_FAULT_ENOSPC set,
// every atomic write whose target path contains its value fails as on a full disk (ENOSPC), so
// that a test can fill the disk at one chosen file (a checkpoint's, the final save's). Read
// once; unset, it costs one comparison per write.
bool injected_enospc(const std::filesystem::path& target) {
  static const std::string pattern = [] {
    const char* v = std::getenv("LISADIFF_FAULT_ENOSPC");
    return v != nullptr ? std::string(v) : std::string();
  }();
  return !pattern.empty() && target.string().find(pattern) != std::string::npos;
}

}  // namespace

void fsync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

AtomicFileWriter::AtomicFileWriter(std::filesystem::path target)
    : target_(std::move(target)), temp_(temp_name_for(target_)) {
  // O_EXCL | O_NOFOLLOW: never write through a file or link someone else put at that name.
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot create temporary file");
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) {
    std::error_code ignored;
    std::filesystem::remove(temp_, ignored);
  }
}

void AtomicFileWriter::fail(const char* what) {
  throw Error(target_.string(), std::string(what) + " (" + temp_.string() + "): " + std::strerror(errno));
}

void AtomicFileWriter::write(const void* data, std::size_t size) {
  if (size > 0 && injected_enospc(target_)) {
    errno = ENOSPC;
    fail("write failed");
  }
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("write failed");
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void AtomicFileWriter::commit() {
  if (::fsync(fd_) != 0) fail("fsync failed");
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail("close failed");
  }
  fd_ = -1;
  if (::rename(temp_.c_str(), target_.c_str()) != 0) fail("rename into place failed");
  committed_ = true;
  fsync_directory(target_.parent_path());
}

void write_file_atomic(const std::filesystem::path& path, std::string_view content) {
  AtomicFileWriter out(path);
  out.write(content);
  out.commit();
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string(), std::string("cannot read: cannot open it (") + std::strerror(errno) + ")");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error(path.string(), "read failed");
  return text.str();
}

}  // namespace lisadiff::io
