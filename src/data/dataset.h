// Datasets of the three recipes: what a sample is (Record), where records come from
// (RecordSource: an image folder with metadata.jsonl, or webdataset tar shards), and how a
// record becomes an Example of one kind (t2i, ip2p, dpo). docs/data.md describes the
// formats; the loader (loader.h) runs this in worker threads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "config/json_fields.h"
#include "data/transforms.h"

namespace lisadiff::data {

enum class ExampleKind { kT2i, kIp2p, kDpo };
ExampleKind parse_example_kind(const std::string& name, const std::string& source);
const char* kind_name(ExampleKind kind);

// One sample as stored: encoded files by field name and JSON values. A folder record names
// its files (read by a worker); a tar record carries the bytes.
struct Record {
  std::string key;     // the sample key (tar) or metadata.jsonl line number
  std::string source;  // the shard or folder it came from, for messages
  std::map<std::string, std::string> bytes;                 // field -> file contents
  std::map<std::string, std::filesystem::path> files;       // field -> file to read
  nlohmann::json values = nlohmann::json::object();         // value columns
  std::string problem;  // set when the record is already known to be bad (bad JSON line, truncated tar)
  std::int64_t epoch = 0;
  bool last_in_epoch = false;

  std::string where() const { return source + " sample '" + key + "'"; }
};

// An endless or finite sequence of records in a fixed order for a given seed. Thread
// compatible: the loader serialises calls.
class RecordSource {
 public:
  virtual ~RecordSource() = default;
  // The next record; false when a finite source is exhausted.
  virtual bool next(Record& record) = 0;
  // Skips `n` records as if next() had returned them (resume); the default calls next().
  virtual void skip(std::int64_t n);
  // Records per epoch when known (folder), else -1.
  virtual std::int64_t epoch_size() const { return -1; }
  virtual std::string describe() const = 0;
  // This rank's position after `records` records of a run with `world_size` processes, each
  // of which had read as many (a checkpoint resumed by another number of processes): the
  // examples all of them read are skipped, or -1 when the source cannot say (shards).
  virtual std::int64_t position_after(std::int64_t records, int world_size) const {
    (void)records;
    (void)world_size;
    return -1;
  }
};

// The column names of a kind, as the scripts' flags name them.
struct Columns {
  std::string image = "image", caption = "text";                        // t2i
  std::string original_image = "input_image", edited_image = "edited_image",
              edit_prompt = "edit_prompt";                               // ip2p
  std::string image_0 = "jpg_0", image_1 = "jpg_1", label = "label_0", dpo_caption = "caption";  // dpo
  bool t2i_defaults = true;  // t2i: image/caption from the LCM script's key lists unless named
};

// The LCM/SDXL webdataset filters, applied to the `json` field when present.
struct SampleFilters {
  std::int64_t min_original_size = 0;  // original_width and original_height >= this
  double max_pwatermark = -1;          // pwatermark <= this (negative: off)
  double min_aesthetic = -1;           // aesthetic >= this (negative: off)
  bool active() const { return min_original_size > 0 || max_pwatermark >= 0 || min_aesthetic >= 0; }
};

// Everything a loader needs; read from a recipe config with the scripts' key names.
struct DataOptions {
  ExampleKind kind = ExampleKind::kT2i;
  std::string train_data_dir;   // image folder with metadata.jsonl
  std::string train_shards;     // webdataset shard spec (brace-expanded; pipe: allowed)
  Columns columns;
  ImageTransform transform;
  // ip2p: one flip (and crop) for both images of a pair; dpo: independent draws per image.
  bool shared_pair_draws = true;
  std::int64_t batch_size = 1;
  int num_workers = 0;
  int prefetch_batches = 2;     // batches decoded ahead per worker
  std::uint64_t seed = 0;
  bool shuffle = true;
  bool drop_last = false;
  std::int64_t shuffle_buffer = 1000;  // wds
  bool resample_shards = false;        // wds: draw shards with replacement, endlessly (LCM)
  std::int64_t max_train_samples = -1; // folder: a seeded subset, as dataset.shuffle(seed).select(range(n))
  SampleFilters filters;
  double max_bad_share = 0.05;  // error once more than this share of the samples seen is bad
  std::int64_t min_samples_for_bad_share = 20;
  std::int64_t max_unusable_in_a_row = 10000;  // bad or filtered records in a row before an error
  int rank = 0, world_size = 1;

  // The preprocessing and loader settings of each diffusers script (recipes.md 2.2, 3.2,
  // 4.2), before a config's keys are read:
  //   t2i (LCM): resolution 512, shorter side (bilinear) + random crop, no flip, mean/std
  //              normalisation, shards resampled endlessly, incomplete batches dropped;
  //   ip2p:      resolution 256, exact bicubic resize, center crop, no flip unless random_flip,
  //              2 * (x / 255) - 1, one crop and flip for both images of a pair;
  //   dpo:       resolution 512, shorter side (bilinear) + center crop, random flip, mean/std,
  //              independent draws for the two images.
  static DataOptions for_recipe(ExampleKind kind);
  // train_text_to_image.py's (kind t2i): resolution 512, the shorter side resized by Pillow
  // with --image_interpolation_mode (lanczos), random crop unless center_crop, flip with
  // random_flip, mean/std normalisation; shards read once per epoch, incomplete batches kept.
  // read() takes center_crop, random_flip and image_interpolation_mode, which the LCM
  // profile ignores.
  static DataOptions for_text_to_image();
  bool t2i_script_transforms = false;  // for_text_to_image()'s reading of those three keys
  // Reads the keys a recipe config uses (train_data_dir, train_shards_path_or_url,
  // resolution, center_crop / random_crop, random_flip / no_hflip, interpolation_type,
  // dataloader_num_workers, train_batch_size, seed, the column names, max_train_samples,
  // max_bad_share, ...). The recipe sets `kind` and the transform's resize/normalize.
  void read(config::FieldReader& fields);
  void validate(const std::string& source) const;
  // Identifies the data order: kind, sources, seed, batch, shuffle, rank/world, filters.
  std::string fingerprint() const;
  // The same without rank/world: the order over all processes.
  std::string order_fingerprint() const;
};

// A decoded, transformed example. images: float32 [3, R, R] each (t2i 1, ip2p 2: original,
// edited; dpo 2: preferred first). text: the caption / edit prompt. label: dpo's label_0.
struct Example {
  std::string key, source;
  std::vector<torch::Tensor> images;
  std::string text;
  double label = 0;
};

// The result of processing one record: an example, a filtered record, or a bad one.
struct Processed {
  enum class Status { kOk, kFiltered, kBad } status = Status::kOk;
  Example example;
  std::string problem;  // kBad: what is wrong; kFiltered: which filter
};

// Reads the record's files, checks its fields, decodes and transforms. Never throws for bad
// data (returns kBad with the reason); `seed` fixes the random draws of this sample.
Processed process_record(const Record& record, const DataOptions& options, std::uint64_t seed);

// The source `options` describe (train_data_dir or train_shards).
std::unique_ptr<RecordSource> make_source(const DataOptions& options);

}  // namespace lisadiff::data
