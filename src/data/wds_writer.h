// Writes webdataset tar shards (docs/data.md, "Webdataset tar shards"): DIR/00000.tar,
// DIR/00001.tar, ..., each holding `samples_per_shard` samples (the last one fewer). A sample
// is a key and its fields; each field becomes the member "KEY.field", in the order given, so
// readers that group consecutive members by key (webdataset, src/data/) see one sample.
//
// The tars are reproducible: ustar headers (pax-restricted: a pax header only for what ustar
// cannot hold, e.g. a name over 100 characters), mtime 0, uid/gid 0, no user or group names,
// mode 0644, so the same samples give byte-identical shards. Each shard is written under a
// hidden temporary name beside its target and renamed into place, fsynced, when it is closed:
// a shard either exists whole or not at all.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace lisadiff::data {

// (field, bytes): the field is the member name after "KEY.", e.g. "png", "txt",
// "input_image.png".
using SampleFields = std::vector<std::pair<std::string, std::string>>;

class ShardWriter {
 public:
  // `dir` is created if missing. samples_per_shard >= 1, else lisadiff::Error.
  ShardWriter(std::filesystem::path dir, std::int64_t samples_per_shard);
  // Discards a shard that finish() has not closed (its temporary file is removed); shards
  // already closed stay.
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Appends one sample, opening the next shard when the current one is full. The key must be
  // non-empty, without '.' (the reader cuts the key at the first '.') and differ from the
  // previous sample's key (consecutive equal keys would merge); fields must be non-empty,
  // without '/', and not repeat within the sample. Throws lisadiff::Error naming the shard.
  void add(const std::string& key, const SampleFields& fields);
  // Closes and renames the open shard. Idempotent; add() after finish() is an error. After
  // any failed write the writer refuses to go on (add and finish throw).
  void finish();

  // Shards closed so far, in order, and their total size in bytes.
  const std::vector<std::filesystem::path>& shards() const { return shards_; }
  std::uint64_t bytes() const { return bytes_; }
  std::int64_t samples() const { return samples_; }

  // "00042.tar": the file name of shard `index`, five digits as webdataset brace specs use.
  static std::string shard_name(std::int64_t index);

 private:
  struct OpenShard;
  void open_shard();
  void write_members(const std::string& key, const SampleFields& fields);
  void close_shard();

  std::filesystem::path dir_;
  std::int64_t samples_per_shard_;
  std::unique_ptr<OpenShard> open_;
  std::vector<std::filesystem::path> shards_;
  std::uint64_t bytes_ = 0;
  std::int64_t samples_ = 0;
  std::string last_key_;
  bool finished_ = false;
  bool failed_ = false;  // a write failed: the open shard was dropped, nothing more is written
};

}  // namespace lisadiff::data
