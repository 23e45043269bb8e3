// A whole file mapped into memory, copy-on-write: pages are read from disk on first
// touch, and a write into the mapping (e.g. an in-place op on a zero-copy tensor) changes
// only this process's copy, never the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>

namespace lisadiff::io {

class MappedFile {
 public:
  // Throws lisadiff::Error naming the file when it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return data_; }
  std::uint8_t* mutable_data() { return data_; }
  std::size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }
  // Drops the whole pages inside [offset, offset + length) from the process's memory
  // (madvise MADV_DONTNEED): the next read faults them in from the file again. A page that
  // was written through the private mapping loses that write, so call it only for ranges
  // nobody wrote to. What a loader calls after copying a tensor out, so that the peak RSS of
  // loading a model is the model plus one tensor, not the model plus the file.
  void release(std::size_t offset, std::size_t length) const;

 private:
  MappedFile(std::filesystem::path path, std::uint8_t* data, std::size_t size);
  std::filesystem::path path_;
  std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace lisadiff::io
