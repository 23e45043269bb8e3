// The two record sources: an image folder with metadata.jsonl (the Hugging Face imagefolder
// convention) and webdataset tar shards read with libarchive. Both give the same sequence
// for the same seed on every platform (own Fisher-Yates and shuffle buffer on mt19937_64).
#pragma once

#include <cstdio>
#include <deque>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "data/dataset.h"

struct archive;

namespace lisadiff::data {

// webdataset's shard-list syntax: "{a..b}" numeric ranges (zero padding kept from the wider
// bound), "{x,y,z}" alternatives, several braces per spec, and several specs joined by "::".
// Throws lisadiff::Error for an unbalanced brace or a reversed range.
std::vector<std::string> expand_braces(const std::string& spec);

// A deterministic permutation of [0, n) (Fisher-Yates on TransformDraws).
std::vector<std::int64_t> seeded_permutation(std::int64_t n, std::uint64_t seed);

class FolderSource : public RecordSource {
 public:
  explicit FolderSource(const DataOptions& options);
  bool next(Record& record) override;
  void skip(std::int64_t n) override { position_ += n; }
  std::int64_t epoch_size() const override { return per_rank_; }
  std::string describe() const override;
  std::int64_t position_after(std::int64_t records, int world_size) const override;

 private:
  const std::vector<std::int64_t>& order_of(std::int64_t epoch);

  std::filesystem::path dir_;
  std::vector<Record> rows_;  // one per metadata.jsonl line, source set; next() adds the epoch
  std::vector<std::int64_t> subset_;  // rows in use (max_train_samples)
  bool shuffle_;
  std::uint64_t seed_;
  int rank_, world_;
  std::int64_t per_rank_ = 0, position_ = 0, cached_epoch_ = -1;
  std::vector<std::int64_t> order_;
};

// One tar (a file, or the output of a `pipe:` command) as a stream of grouped samples.
class TarSamples {
 public:
  explicit TarSamples(std::string shard);
  ~TarSamples();
  TarSamples(const TarSamples&) = delete;
  TarSamples& operator=(const TarSamples&) = delete;
  // The next sample; a truncated or unreadable tar ends the stream with one record whose
  // `problem` says so (the partial sample's key, if any). false at the end.
  bool next(Record& record);

 private:
  bool read_member();  // read_member_unguarded, with any exception turned into error_
  bool read_member_unguarded();
  void close();

  std::string shard_;
  archive* archive_ = nullptr;
  std::FILE* pipe_ = nullptr;
  bool done_ = false;
  // The member read ahead of the sample being assembled.
  bool have_member_ = false;
  std::string member_key_, member_field_, member_data_;
  std::string error_;
};

class WdsSource : public RecordSource {
 public:
  explicit WdsSource(const DataOptions& options);
  bool next(Record& record) override;
  std::string describe() const override;

 private:
  // The next record of the unshuffled stream (shard after shard); false at an epoch's end.
  bool next_raw(Record& record);
  bool open_next_shard();

  std::vector<std::string> shards_;
  std::vector<std::string> my_shards_;  // this rank's share (epoch mode)
  bool resample_, shuffle_;
  std::uint64_t seed_;
  std::size_t buffer_size_;
  std::int64_t epoch_ = 0;
  std::size_t shard_cursor_ = 0;
  std::vector<std::size_t> shard_order_;
  std::unique_ptr<TarSamples> tar_;
  std::mt19937_64 rng_;  // resampling and the shuffle buffer
  std::deque<Record> buffer_;
  bool draining_ = false;
  int empty_epochs_ = 0;
};

}  // namespace lisadiff::data
