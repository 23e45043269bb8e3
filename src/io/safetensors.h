// The safetensors format (https://github.com/huggingface/safetensors): reader and writer.
//
// Layout: u64 little-endian header length N, N bytes of JSON, then the data buffer. The
// header maps tensor names to {dtype, shape, data_offsets} (offsets relative to the data
// buffer, end exclusive) and may hold "__metadata__" (string -> string).
//
// The reader maps the file and validates the whole header before any tensor is handed out:
// the header length, JSON, every field, dtypes, sizes against shapes, and that the tensors
// tile the data buffer exactly (no gap, no overlap, nothing past the end or after it).
// Every error is a lisadiff::Error naming the file and, where there is one, the tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <torch/types.h>

namespace lisadiff::io {

class MappedFile;

// Declared in the order of the reference implementation's enum: the writer sorts tensors
// by this order, largest first (so U64/I64/F64 come before F32, and F32 before F16).
enum class Dtype : std::uint8_t {
  BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ,
  I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64,
};

std::string_view dtype_name(Dtype dtype);
std::optional<Dtype> dtype_from_name(std::string_view name);
// Bytes per element. Throws lisadiff::Error for the sub-byte types (F4, F6_*).
std::size_t dtype_size(Dtype dtype);
// The torch dtype that holds `dtype` bit for bit. Throws lisadiff::Error for F4/F6_*,
// which LibTorch cannot represent element-wise.
torch::ScalarType to_scalar_type(Dtype dtype);
// Throws lisadiff::Error for torch dtypes that safetensors cannot store.
Dtype from_scalar_type(torch::ScalarType type);

struct TensorEntry {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  // byte offsets into the data buffer, end exclusive
  std::uint64_t end = 0;

  std::int64_t numel() const;
  std::uint64_t nbytes() const { return end - begin; }
};

constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;  // the reference reader's limit

class SafetensorsReader {
 public:
  // Maps and validates `path`. Throws lisadiff::Error on any problem.
  explicit SafetensorsReader(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  // Entries in file order (ascending data offset; the order the reference writer lists them).
  const std::vector<TensorEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::size_t size() const { return entries_.size(); }
  bool contains(std::string_view name) const;
  // Throws lisadiff::Error naming the file and the tensor when there is no such tensor.
  const TensorEntry& entry(std::string_view name) const;

  // The tensor in its stored dtype. Zero-copy when the data is aligned for its dtype: the
  // tensor then points into the (copy-on-write) mapping and keeps it alive. Otherwise a copy.
  torch::Tensor tensor(std::string_view name) const;
  // The tensor converted to `dtype` (the zero-copy tensor itself when the dtype matches).
  torch::Tensor tensor(std::string_view name, torch::ScalarType dtype) const;
  // Drops the tensor's mapped pages from memory (MappedFile::release) once its data has been
  // copied out; a later tensor() reads them from the file again. Only for tensors whose
  // zero-copy views nobody wrote to.
  void release_pages(std::string_view name) const;

 private:
  void parse_header(std::uint64_t header_len);
  void check_layout(std::uint64_t data_size) const;

  std::filesystem::path path_;
  std::shared_ptr<MappedFile> file_;
  const std::uint8_t* data_ = nullptr;  // start of the data buffer
  std::vector<TensorEntry> entries_;
  std::unordered_map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes `tensors` the way the reference writer does (entries sorted by dtype, largest
// first, then by name; header padded with spaces to a multiple of 8 bytes), through a
// temporary file that is renamed into place. Throws lisadiff::Error for duplicate names,
// undefined tensors or dtypes safetensors cannot store. Tensors may live on any device.
void write_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace lisadiff::io
