#include "data/wds_writer.h"

#include <archive.h>
#include <archive_entry.h>

#include <cerrno>
#include <cstdio>
#include <memory>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"

namespace lisadiff::data {

namespace fs = std::filesystem;

namespace {

// Where libarchive's output goes: an AtomicFileWriter, so the temporary name, fsync and
// rename are those the rest of lisadiff uses.
struct TarSink {
  explicit TarSink(const fs::path& target) : file(target) {}
  io::AtomicFileWriter file;
  std::string write_error;  // what the callback caught, for the message
  std::uint64_t bytes = 0;
};

// libarchive's write callback. Exceptions must not cross the C library, so a failed write
// is recorded and reported to libarchive as -1.
la_ssize_t write_to_sink(archive* ar, void* client, const void* buffer, size_t length) {
  auto* sink = static_cast<TarSink*>(client);
  try {
    sink->file.write(buffer, length);
    sink->bytes += length;
    return static_cast<la_ssize_t>(length);
  } catch (const std::exception& e) {
    sink->write_error = e.what();
    archive_set_error(ar, EIO, "%s", e.what());
    return -1;
  }
}

void check_key(const std::string& key, const fs::path& shard) {
  if (key.empty()) throw Error(shard.string(), "sample key is empty");
  const auto base = key.substr(key.rfind('/') == std::string::npos ? 0 : key.rfind('/') + 1);
  if (base.empty() || base.find('.') != std::string::npos) {
    throw Error(shard.string(), "sample key '" + key + "': its base name must be non-empty and contain no '.'");
  }
}

void check_fields(const std::string& key, const SampleFields& fields, const fs::path& shard) {
  if (fields.empty()) throw Error(shard.string(), "sample '" + key + "' has no fields");
  std::set<std::string> seen;
  for (const auto& [field, bytes] : fields) {
    if (field.empty() || field.find('/') != std::string::npos) {
      throw Error(shard.string(), "sample '" + key + "': field '" + field + "' must be non-empty and contain no '/'");
    }
    if (!seen.insert(field).second) {
      throw Error(shard.string(), "sample '" + key + "': field '" + field + "' given twice");
    }
  }
}

}  // namespace

// One shard being written: libarchive's writer and the file it feeds.
struct ShardWriter::OpenShard {
  explicit OpenShard(const fs::path& target) : sink(target) {}
  ~OpenShard() {
    if (ar) archive_write_free(ar);  // an abandoned shard: the sink's destructor removes the file
  }
  std::string problem(const std::string& doing) const {
    if (!sink.write_error.empty()) return doing + ": " + sink.write_error;
    const char* message = archive_error_string(ar);
    return doing + ": " + (message ? message : "unknown libarchive error");
  }
  TarSink sink;
  archive* ar = nullptr;
  std::int64_t samples = 0;
};

std::string ShardWriter::shard_name(std::int64_t index) {
  char name[32];
  std::snprintf(name, sizeof name, "%05lld.tar", static_cast<long long>(index));
  return name;
}

ShardWriter::ShardWriter(fs::path dir, std::int64_t samples_per_shard)
    : dir_(std::move(dir)), samples_per_shard_(samples_per_shard) {
  if (samples_per_shard_ < 1) {
    throw Error(dir_.string(), "samples per shard must be at least 1, got " + std::to_string(samples_per_shard_));
  }
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) throw Error(dir_.string(), "cannot create the shard folder: " + ec.message());
}

ShardWriter::~ShardWriter() = default;

void ShardWriter::open_shard() {
  const auto path = dir_ / shard_name(static_cast<std::int64_t>(shards_.size()));
  open_ = std::make_unique<OpenShard>(path);
  archive* ar = archive_write_new();
  if (!ar) throw Error(path.string(), "libarchive: out of memory");
  open_->ar = ar;
  if (archive_write_set_format_pax_restricted(ar) != ARCHIVE_OK) {
    throw Error(path.string(), open_->problem("cannot select the tar format"));
  }
  if (archive_write_open2(ar, &open_->sink, nullptr, write_to_sink, nullptr, nullptr) != ARCHIVE_OK) {
    throw Error(path.string(), open_->problem("cannot open"));
  }
}

void ShardWriter::close_shard() {
  const fs::path target = open_->sink.file.target();
  // Writes the end-of-archive blocks and the record padding through the callback.
  if (archive_write_close(open_->ar) != ARCHIVE_OK) {
    throw Error(target.string(), open_->problem("cannot finish the tar"));
  }
  archive_write_free(open_->ar);
  open_->ar = nullptr;
  open_->sink.file.commit();
  bytes_ += open_->sink.bytes;
  shards_.push_back(target);
  open_.reset();
}

void ShardWriter::add(const std::string& key, const SampleFields& fields) {
  const fs::path shard =
      open_ ? open_->sink.file.target() : dir_ / shard_name(static_cast<std::int64_t>(shards_.size()));
  if (failed_) throw Error(shard.string(), "sample '" + key + "': an earlier write failed");
  if (finished_) throw Error(dir_.string(), "sample '" + key + "' added after finish()");
  check_key(key, shard);
  check_fields(key, fields, shard);
  if (samples_ > 0 && key == last_key_) {
    throw Error(shard.string(), "sample key '" + key + "' repeats the previous sample's key");
  }
  try {
    if (!open_) open_shard();
    write_members(key, fields);
    last_key_ = key;
    ++samples_;
    if (++open_->samples == samples_per_shard_) close_shard();
  } catch (...) {
    // A shard with half a sample in it is of no use: drop it (and its temporary file).
    failed_ = true;
    open_.reset();
    throw;
  }
}

void ShardWriter::write_members(const std::string& key, const SampleFields& fields) {
  const std::string shard = open_->sink.file.target().string();
  std::unique_ptr<archive_entry, void (*)(archive_entry*)> entry(archive_entry_new(), archive_entry_free);
  if (!entry) throw Error(shard, "libarchive: out of memory");
  for (const auto& [field, bytes] : fields) {
    const std::string member = key + "." + field;
    archive_entry_clear(entry.get());
    // Fixed metadata, so that a shard depends on its samples only.
    archive_entry_set_pathname(entry.get(), member.c_str());
    archive_entry_set_filetype(entry.get(), AE_IFREG);
    archive_entry_set_perm(entry.get(), 0644);
    archive_entry_set_size(entry.get(), static_cast<la_int64_t>(bytes.size()));
    archive_entry_set_mtime(entry.get(), 0, 0);
    archive_entry_set_uid(entry.get(), 0);
    archive_entry_set_gid(entry.get(), 0);
    if (archive_write_header(open_->ar, entry.get()) != ARCHIVE_OK) {
      throw Error(shard, open_->problem("member '" + member + "': cannot write the header"));
    }
    if (!bytes.empty() &&
        archive_write_data(open_->ar, bytes.data(), bytes.size()) != static_cast<la_ssize_t>(bytes.size())) {
      throw Error(shard, open_->problem("member '" + member + "': cannot write the data"));
    }
  }
}

void ShardWriter::finish() {
  if (failed_) throw Error(dir_.string(), "cannot finish the shards: an earlier write failed");
  if (finished_) return;
  try {
    if (open_) close_shard();
  } catch (...) {
    failed_ = true;
    open_.reset();
    throw;
  }
  finished_ = true;
}

}  // namespace lisadiff::data
