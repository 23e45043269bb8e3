// The data loader: a record source read in a fixed order, records decoded and transformed in
// worker threads, batches collated on the training device.
//
// Determinism: record i of the stream is processed with the seed mix(seed, rank, i), so a
// sample's crop and flip depend only on the seed and its place in the stream, never on which
// worker handled it; results are handed out in stream order. One worker, two workers or none
// give the same batches. The position (records consumed by the batches returned so far) is
// the loader's checkpoint state: a resumed loader skips that many records and continues
// with the same batches the uninterrupted run would have produced.
//
// Bad samples (unreadable or corrupt images, missing fields, empty captions, truncated tars)
// are skipped with a warning that names the file or shard and the sample key, counted, and
// turn into an error once they exceed max_bad_share of the samples seen.
#pragma once

#include <atomic>
#include <condition_variable>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "data/dataset.h"

namespace lisadiff::data {

struct Batch {
  std::vector<std::string> keys, sources;
  // One [B, 3, R, R] float32 tensor per image slot: t2i {image}, ip2p {original, edited},
  // dpo {preferred, other}.
  std::vector<torch::Tensor> images;
  std::vector<std::string> texts;
  torch::Tensor labels;  // [B] float32 (dpo's label_0; zeros otherwise)
  std::int64_t epoch = 0;
  bool end_of_epoch = false;  // the batch holds the last record of its epoch
  std::int64_t size() const { return static_cast<std::int64_t>(keys.size()); }
};

struct LoaderStats {
  std::int64_t records = 0;   // records consumed (the position)
  std::int64_t examples = 0;  // examples delivered in batches
  std::int64_t bad = 0, filtered = 0, dropped = 0;  // dropped: in incomplete batches (drop_last)
  std::int64_t epoch = 0;
  nlohmann::json to_json() const;
};

class DataLoader {
 public:
  // Opens the source now (errors for a missing folder, bad metadata.jsonl or no shards
  // surface here); worker threads start with the first next().
  explicit DataLoader(DataOptions options, torch::Device device = torch::kCPU);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next batch. Folder datasets cycle through epochs endlessly; a batch never spans two
  // epochs (the last one of an epoch may be smaller unless drop_last). Throws lisadiff::Error
  // when bad samples exceed max_bad_share or an epoch has no usable sample.
  Batch next();

  // Position and counters after the last batch returned; load_state() restores them before
  // the first next() (throws when called later, or for another data order).
  nlohmann::json state() const;
  void load_state(const nlohmann::json& state);

  const LoaderStats& stats() const { return stats_; }
  const DataOptions& options() const { return options_; }
  // Batches per epoch for this rank when the source knows its size (folder), else -1.
  std::int64_t batches_per_epoch() const;
  std::string describe() const;

 private:
  struct Result {
    Processed processed;
    std::int64_t epoch = 0;
    bool last_in_epoch = false;
  };
  void start_workers();
  void worker_loop();
  // Reads the next record from the source and processes it; returns its stream index.
  // `index` is set to the record's stream index before the source is read, so that a failure
  // can be placed in the stream.
  Result fetch_and_process(std::int64_t& index);
  Result take(std::int64_t index);
  void count_bad(const Result& r);
  Batch collate(std::vector<Result>& items, bool end_of_epoch) const;

  DataOptions options_;
  torch::Device device_;
  std::unique_ptr<RecordSource> source_;
  std::uint64_t stream_seed_;
  std::int64_t window_;
  bool started_ = false;

  std::mutex source_mutex_;  // serialises source_ reads
  std::atomic<std::int64_t> fetched_{0};

  mutable std::mutex mutex_;  // results_, consumed_, stop_, fatal_
  std::condition_variable work_cv_, result_cv_;
  std::map<std::int64_t, Result> results_;
  std::atomic<std::int64_t> consumed_{0};
  bool stop_ = false;
  std::exception_ptr fatal_;
  std::int64_t fatal_index_ = 0;  // the stream index whose fetch or processing failed
  std::vector<std::thread> workers_;

  LoaderStats stats_;
  std::int64_t good_in_epoch_ = 0;
  std::int64_t unusable_in_a_row_ = 0;  // bad or filtered records since the last usable one
  std::string last_unusable_;            // "'key': problem" of the last bad or filtered record
};

}  // namespace lisadiff::data
