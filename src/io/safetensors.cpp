#include "io/safetensors.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <numeric>
#include <unordered_set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/mapped_file.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

namespace lisadiff::io {
namespace {

// Reading parses into a plain (sorted) object: entries are ordered by data offset anyway, and
// ordered_json's linear key lookup would make parsing quadratic in the tensor count. Writing
// uses ordered_json, because the header lists entries in data order.
using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

struct DtypeInfo {
  Dtype dtype;
  std::string_view name;
  std::size_t bits;
  std::optional<torch::ScalarType> scalar_type;
};

// One row per Dtype, in enum order.
const std::array<DtypeInfo, 22> kDtypes = {{
    {Dtype::BOOL, "BOOL", 8, torch::kBool},
    {Dtype::F4, "F4", 4, std::nullopt},
    {Dtype::F6_E2M3, "F6_E2M3", 6, std::nullopt},
    {Dtype::F6_E3M2, "F6_E3M2", 6, std::nullopt},
    {Dtype::U8, "U8", 8, torch::kByte},
    {Dtype::I8, "I8", 8, torch::kChar},
    {Dtype::F8_E5M2, "F8_E5M2", 8, torch::kFloat8_e5m2},
    {Dtype::F8_E4M3, "F8_E4M3", 8, torch::kFloat8_e4m3fn},
    {Dtype::F8_E8M0, "F8_E8M0", 8, torch::kFloat8_e8m0fnu},
    {Dtype::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8, torch::kFloat8_e4m3fnuz},
    {Dtype::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8, torch::kFloat8_e5m2fnuz},
    {Dtype::I16, "I16", 16, torch::kShort},
    {Dtype::U16, "U16", 16, torch::kUInt16},
    {Dtype::F16, "F16", 16, torch::kHalf},
    {Dtype::BF16, "BF16", 16, torch::kBFloat16},
    {Dtype::I32, "I32", 32, torch::kInt},
    {Dtype::U32, "U32", 32, torch::kUInt32},
    {Dtype::F32, "F32", 32, torch::kFloat},
    {Dtype::C64, "C64", 64, torch::kComplexFloat},
    {Dtype::F64, "F64", 64, torch::kDouble},
    {Dtype::I64, "I64", 64, torch::kLong},
    {Dtype::U64, "U64", 64, torch::kUInt64},
}};

const DtypeInfo& info(Dtype dtype) { return kDtypes.at(static_cast<std::size_t>(dtype)); }

std::string json_kind(const Json& value) {
  if (value.is_number_unsigned()) return "a non-negative integer";
  if (value.is_number_integer()) return "a negative integer";
  return std::string("a ") + value.type_name();
}

std::uint64_t read_u64(const Json& value) { return value.get<std::uint64_t>(); }

// Throws the reader's error for one tensor.
[[noreturn]] void tensor_error(const std::filesystem::path& path, const std::string& name,
                               const std::string& problem) {
  throw Error(path.string(), tensor_key(name), problem);
}

TensorEntry parse_entry(const std::filesystem::path& path, const std::string& name, const Json& value) {
  if (!value.is_object()) tensor_error(path, name, "entry must be a JSON object, found " + json_kind(value));
  for (const auto& item : value.items()) {
    const auto& key = item.key();
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      tensor_error(path, name, "unexpected field '" + key + "' (expected dtype, shape, data_offsets)");
    }
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!value.contains(field)) tensor_error(path, name, std::string("missing field '") + field + "'");
  }
  TensorEntry entry;
  entry.name = name;

  const Json& dtype = value["dtype"];
  if (!dtype.is_string()) tensor_error(path, name, "field 'dtype' must be a string, found " + json_kind(dtype));
  const auto parsed = dtype_from_name(dtype.get<std::string>());
  if (!parsed) tensor_error(path, name, "unknown dtype '" + dtype.get<std::string>() + "'");
  if (!info(*parsed).scalar_type) {
    tensor_error(path, name, "dtype " + dtype.get<std::string>() +
                                 " (a sub-byte float format) is not supported by lisadiff");
  }
  entry.dtype = *parsed;

  const Json& shape = value["shape"];
  if (!shape.is_array()) tensor_error(path, name, "field 'shape' must be an array, found " + json_kind(shape));
  for (const auto& dim : shape) {
    if (!dim.is_number_unsigned()) {
      tensor_error(path, name, "field 'shape' must hold non-negative integers, found " + json_kind(dim));
    }
    if (read_u64(dim) > static_cast<std::uint64_t>(INT64_MAX)) tensor_error(path, name, "shape dimension too large");
    entry.shape.push_back(static_cast<std::int64_t>(read_u64(dim)));
  }

  const Json& offsets = value["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    tensor_error(path, name, "field 'data_offsets' must be [begin, end] with non-negative integers, found " +
                                 offsets.dump());
  }
  entry.begin = read_u64(offsets[0]);
  entry.end = read_u64(offsets[1]);
  if (entry.end < entry.begin) {
    tensor_error(path, name, fmt::format("data_offsets [{}, {}] end before they begin", entry.begin, entry.end));
  }

  // numel * itemsize, with overflow checks: a hostile shape must not wrap around. Zero
  // dimensions are left out of the check, so [0, 2^62, 2^62] cannot slip through as empty.
  std::uint64_t bytes = dtype_size(entry.dtype);
  std::uint64_t nonzero = dtype_size(entry.dtype);
  for (const auto dim : entry.shape) {
    const auto d = static_cast<std::uint64_t>(dim);
    if ((d != 0 && __builtin_mul_overflow(nonzero, d, &nonzero)) || nonzero > static_cast<std::uint64_t>(INT64_MAX)) {
      tensor_error(path, name, fmt::format("shape [{}] is too large", fmt::join(entry.shape, ", ")));
    }
    bytes *= d;
  }
  if (bytes != entry.nbytes()) {
    tensor_error(path, name,
                 fmt::format("shape [{}] of {} needs {} bytes but data_offsets [{}, {}] span {}",
                             fmt::join(entry.shape, ", "), dtype_name(entry.dtype), bytes, entry.begin,
                             entry.end, entry.nbytes()));
  }
  return entry;
}

std::map<std::string, std::string> parse_metadata(const std::filesystem::path& path, const Json& value) {
  if (!value.is_object()) {
    throw Error(path.string(), "__metadata__ must be an object of strings, found " + json_kind(value));
  }
  std::map<std::string, std::string> out;
  for (const auto& item : value.items()) {
    if (!item.value().is_string()) {
      throw Error(path.string(), "__metadata__ entry '" + item.key() + "' must be a string, found " +
                                     json_kind(item.value()));
    }
    out.emplace(item.key(), item.value().get<std::string>());
  }
  return out;
}

}  // namespace

std::string_view dtype_name(Dtype dtype) { return info(dtype).name; }

std::optional<Dtype> dtype_from_name(std::string_view name) {
  for (const auto& row : kDtypes) {
    if (row.name == name) return row.dtype;
  }
  return std::nullopt;
}

std::size_t dtype_size(Dtype dtype) {
  const auto& row = info(dtype);
  if (row.bits % 8 != 0) throw Error("safetensors dtype " + std::string(row.name) + " is not supported by lisadiff");
  return row.bits / 8;
}

torch::ScalarType to_scalar_type(Dtype dtype) {
  const auto& row = info(dtype);
  if (!row.scalar_type) throw Error("safetensors dtype " + std::string(row.name) + " is not supported by lisadiff");
  return *row.scalar_type;
}

Dtype from_scalar_type(torch::ScalarType type) {
  for (const auto& row : kDtypes) {
    if (row.scalar_type == type) return row.dtype;
  }
  throw Error(std::string("torch dtype ") + c10::toString(type) + " cannot be stored in safetensors");
}

std::int64_t TensorEntry::numel() const {
  return std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
}

SafetensorsReader::SafetensorsReader(const std::filesystem::path& path)
    : path_(path), file_(MappedFile::open(path)) {
  const std::uint64_t size = file_->size();
  if (size < 8) {
    throw Error(path_.string(), fmt::format("file is {} bytes, too short for the 8-byte header length "
                                            "(truncated or not a safetensors file)", size));
  }
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, file_->data(), 8);
  if (header_len > kMaxHeaderBytes) {
    throw Error(path_.string(), fmt::format("header length {} exceeds the limit of {} bytes "
                                            "(corrupt or not a safetensors file)", header_len, kMaxHeaderBytes));
  }
  if (header_len > size - 8) {
    throw Error(path_.string(), fmt::format("truncated: header length {} runs past the end of the file "
                                            "({} bytes, {} after the length field)", header_len, size, size - 8));
  }
  parse_header(header_len);
  data_ = file_->data() + 8 + header_len;
  check_layout(size - 8 - header_len);
}

void SafetensorsReader::parse_header(std::uint64_t header_len) {
  const auto* begin = reinterpret_cast<const char*>(file_->data() + 8);
  const std::string_view text(begin, header_len);
  if (text.empty() || text.front() != '{') {
    throw Error(path_.string(), "header must be a JSON object starting with '{'");
  }
  // nlohmann stops at a NUL byte, which would hide whatever follows it in the header.
  if (text.find('\0') != std::string_view::npos) {
    throw Error(path_.string(), "header contains a NUL byte (padding must be spaces)");
  }
  // nlohmann keeps the last of two equal keys; the callback sees every key of every object,
  // so a repeated tensor name or a repeated field inside an entry is caught.
  std::vector<std::unordered_set<std::string>> seen;
  std::string duplicate;
  const auto on_event = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) seen.emplace_back();
    if (event == Json::parse_event_t::object_end && !seen.empty()) seen.pop_back();
    if (event == Json::parse_event_t::key && duplicate.empty() && !seen.empty() &&
        !seen.back().insert(parsed.get<std::string>()).second) {
      const auto key = parsed.get<std::string>();
      duplicate = depth == 1 ? tensor_key(key) : field_key(key);
    }
    return true;
  };
  Json header;
  try {
    header = Json::parse(text.begin(), text.end(), on_event);
  } catch (const Json::exception& e) {
    throw Error(path_.string(), std::string("header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) throw Error(path_.string(), duplicate + " appears twice in one header object");

  for (const auto& item : header.items()) {
    if (item.key() == "__metadata__") {
      metadata_ = parse_metadata(path_, item.value());
      continue;
    }
    entries_.push_back(parse_entry(path_, item.key(), item.value()));
  }
  std::stable_sort(entries_.begin(), entries_.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (std::size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].name, i);
}

void SafetensorsReader::check_layout(std::uint64_t data_size) const {
  const std::uint64_t data_start = file_->size() - data_size;
  std::uint64_t cursor = 0;
  const TensorEntry* previous = nullptr;
  for (const auto& entry : entries_) {
    if (entry.end > data_size) {
      throw Error(path_.string(), tensor_key(entry.name),
                  fmt::format("truncated: data ends at byte {} of the file, which has {} bytes",
                              data_start + entry.end, file_->size()));
    }
    if (entry.begin < cursor) {
      throw Error(path_.string(), tensor_key(entry.name),
                  fmt::format("data_offsets [{}, {}] overlap tensor '{}', which ends at {}", entry.begin,
                              entry.end, previous->name, cursor));
    }
    if (entry.begin > cursor) {
      throw Error(path_.string(), tensor_key(entry.name),
                  fmt::format("data_offsets [{}, {}] leave a gap of {} bytes after {}", entry.begin, entry.end,
                              entry.begin - cursor,
                              previous ? "tensor '" + previous->name + "'" : "the start of the data buffer"));
    }
    cursor = entry.end;
    previous = &entry;
  }
  if (cursor != data_size) {
    throw Error(path_.string(), fmt::format("{} bytes after the last tensor's data: the tensors must cover "
                                            "the data buffer exactly", data_size - cursor));
  }
}

bool SafetensorsReader::contains(std::string_view name) const { return index_.count(std::string(name)) > 0; }

const TensorEntry& SafetensorsReader::entry(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  if (it == index_.end()) throw Error(path_.string(), tensor_key(std::string(name)), "no such tensor in the file");
  return entries_[it->second];
}

torch::Tensor SafetensorsReader::tensor(std::string_view name) const {
  const auto& e = entry(name);
  const auto options = torch::TensorOptions().dtype(to_scalar_type(e.dtype));
  if (e.nbytes() == 0) return torch::empty(e.shape, options);
  const std::uint8_t* src = data_ + e.begin;
  if (reinterpret_cast<std::uintptr_t>(src) % dtype_size(e.dtype) == 0) {
    auto keep_alive = file_;
    // The mapping is private and writable, so handing out a mutable pointer is safe.
    return torch::from_blob(const_cast<std::uint8_t*>(src), e.shape,
                            [keep_alive](void*) mutable { keep_alive.reset(); }, options);
  }
  auto out = torch::empty(e.shape, options);
  std::memcpy(out.data_ptr(), src, e.nbytes());
  return out;
}

torch::Tensor SafetensorsReader::tensor(std::string_view name, torch::ScalarType dtype) const {
  auto t = tensor(name);
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

void SafetensorsReader::release_pages(std::string_view name) const {
  const auto& e = entry(name);
  file_->release(static_cast<std::size_t>(data_ - file_->data()) + e.begin, e.nbytes());
}

void write_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  struct Item {
    const std::string* name;
    torch::Tensor tensor;
    Dtype dtype;
  };
  std::vector<Item> items;
  std::unordered_set<std::string> names;
  for (const auto& [name, tensor] : tensors) {
    if (!names.insert(name).second) throw Error(path.string(), tensor_key(name), "name given twice");
    if (!tensor.defined()) throw Error(path.string(), tensor_key(name), "tensor is undefined");
    if (name == "__metadata__") throw Error(path.string(), tensor_key(name), "reserved name");
    Dtype dtype;
    try {
      dtype = from_scalar_type(tensor.scalar_type());
    } catch (const Error& e) {
      throw Error(path.string(), tensor_key(name), e.what());
    }
    items.push_back({&name, tensor, dtype});
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return a.dtype != b.dtype ? a.dtype > b.dtype : *a.name < *b.name;
  });

  OrderedJson header = OrderedJson::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& item : items) {
    const auto bytes = static_cast<std::uint64_t>(item.tensor.numel()) * dtype_size(item.dtype);
    header[*item.name] = {{"dtype", dtype_name(item.dtype)},
                          {"shape", item.tensor.sizes().vec()},
                          {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const OrderedJson::exception& e) {  // e.g. a name that is not valid UTF-8
    throw Error(path.string(), std::string("cannot encode the header: ") + e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // the data buffer starts 8-byte aligned

  AtomicFileWriter out(path);
  const std::uint64_t header_len = text.size();
  out.write(&header_len, sizeof header_len);
  out.write(text);
  for (const auto& item : items) {
    const auto cpu = item.tensor.detach().to(torch::kCPU).resolve_conj().resolve_neg().contiguous();
    out.write(cpu.data_ptr(), cpu.numel() * cpu.element_size());
  }
  out.commit();
}

}  // namespace lisadiff::io
