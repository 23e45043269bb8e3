#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "core/error.h"

namespace lisadiff::io {

MappedFile::MappedFile(std::filesystem::path path, std::uint8_t* data, std::size_t size)
    : path_(std::move(path)), data_(data), size_(size) {}

MappedFile::~MappedFile() {
  if (data_ != nullptr) munmap(data_, size_);
}

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path.string(), std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path.string(), "not a regular file");
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  std::uint8_t* data = nullptr;
  if (size > 0) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw Error(path.string(), std::string("cannot map into memory: ") + std::strerror(err));
    }
    data = static_cast<std::uint8_t*>(p);
  }
  ::close(fd);  // the mapping stays valid without the descriptor
  return std::shared_ptr<MappedFile>(new MappedFile(path, data, size));
}

void MappedFile::release(std::size_t offset, std::size_t length) const {
  static const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  if (offset >= size_) return;
  length = std::min(length, size_ - offset);
  const std::size_t first = (offset + page - 1) / page * page;  // whole pages only
  const std::size_t last = (offset + length) / page * page;
  if (last > first) madvise(data_ + first, last - first, MADV_DONTNEED);  // advice: a failure changes nothing
}

}  // namespace lisadiff::io
