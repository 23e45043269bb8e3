#include "data/loader.h"

#include <spdlog/spdlog.h>

#include "config/json_number.h"
#include "core/error.h"

namespace lisadiff::data {

nlohmann::json LoaderStats::to_json() const {
  return {{"records", records}, {"examples", examples}, {"bad", bad},
          {"filtered", filtered}, {"dropped", dropped}, {"epoch", epoch}};
}

DataLoader::DataLoader(DataOptions options, torch::Device device)
    : options_(std::move(options)), device_(device), source_(make_source(options_)),
      stream_seed_(mix_seed(options_.seed, 0xDA7Aull + static_cast<std::uint64_t>(options_.rank))),
      window_(static_cast<std::int64_t>(options_.prefetch_batches) * options_.batch_size *
              std::max(1, options_.num_workers)) {}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  work_cv_.notify_all();
  result_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

DataLoader::Result DataLoader::fetch_and_process(std::int64_t& index) {
  Record record;
  {
    std::lock_guard<std::mutex> lock(source_mutex_);
    index = fetched_.load();
    if (!source_->next(record)) throw Error(source_->describe() + ": the data ran out");
    fetched_ = index + 1;
  }
  Result r;
  r.epoch = record.epoch;
  r.last_in_epoch = record.last_in_epoch;
  r.processed = process_record(record, options_, mix_seed(stream_seed_, static_cast<std::uint64_t>(index)));
  return r;
}

void DataLoader::worker_loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_cv_.wait(lock, [&] { return stop_ || fatal_ || fetched_.load() < consumed_.load() + window_; });
      if (stop_ || fatal_) return;
    }
    std::int64_t index = -1;
    try {
      auto result = fetch_and_process(index);
      std::lock_guard<std::mutex> lock(mutex_);
      results_.emplace(index, std::move(result));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!fatal_) {
        fatal_ = std::current_exception();
        fatal_index_ = index;
      }
    }
    result_cv_.notify_all();
  }
}

void DataLoader::start_workers() {
  started_ = true;
  for (int i = 0; i < options_.num_workers; ++i) workers_.emplace_back([this] { worker_loop(); });
}

DataLoader::Result DataLoader::take(std::int64_t index) {
  if (options_.num_workers == 0) {
    std::int64_t got = -1;
    auto result = fetch_and_process(got);
    consumed_ = index + 1;
    return result;
  }
  // A failure surfaces only when the stream reaches it: records before it are still handed
  // out, as they would be without workers.
  std::unique_lock<std::mutex> lock(mutex_);
  result_cv_.wait(lock, [&] { return results_.count(index) != 0 || (fatal_ && fatal_index_ <= index); });
  const auto it = results_.find(index);
  if (it == results_.end()) std::rethrow_exception(fatal_);
  Result r = std::move(it->second);
  results_.erase(it);
  consumed_ = index + 1;
  lock.unlock();
  work_cv_.notify_all();
  return r;
}

void DataLoader::count_bad(const Result& r) {
  ++stats_.bad;
  const auto& ex = r.processed.example;
  const auto seen = stats_.records;
  spdlog::warn("data: skipping bad sample '{}' in {}: {} ({} bad of {} samples so far)", ex.key, ex.source,
               r.processed.problem, stats_.bad, seen);
  if (seen >= options_.min_samples_for_bad_share &&
      static_cast<double>(stats_.bad) > options_.max_bad_share * static_cast<double>(seen)) {
    throw Error("data: " + std::to_string(stats_.bad) + " of " + std::to_string(seen) +
                " samples are bad, more than max_bad_share = " + std::to_string(options_.max_bad_share) + " (last: '" +
                ex.key + "' in " + ex.source + ": " + r.processed.problem + ")");
  }
}

Batch DataLoader::next() {
  if (!started_) start_workers();
  std::vector<Result> items;
  while (true) {
    Result r = take(stats_.records);
    ++stats_.records;
    stats_.epoch = r.epoch;
    switch (r.processed.status) {
      case Processed::Status::kOk:
        ++good_in_epoch_;
        items.push_back(std::move(r));
        break;
      case Processed::Status::kFiltered:
        ++stats_.filtered;
        spdlog::debug("data: '{}' in {} filtered out: {}", r.processed.example.key, r.processed.example.source,
                      r.processed.problem);
        break;
      case Processed::Status::kBad: count_bad(r); break;
    }
    if (r.processed.status != Processed::Status::kOk) {
      last_unusable_ = "'" + r.processed.example.key + "': " + r.processed.problem;
    }
    if (r.processed.status == Processed::Status::kOk) {
      unusable_in_a_row_ = 0;
    } else if (++unusable_in_a_row_ > options_.max_unusable_in_a_row) {
      // Endless (resampled) streams have no epoch end to check; this bounds them.
      throw Error("data: " + std::to_string(unusable_in_a_row_) + " samples in a row from " + source_->describe() +
                  " were bad or filtered out (" + std::to_string(stats_.bad) + " bad, " +
                  std::to_string(stats_.filtered) + " filtered so far; last: '" + r.processed.example.key + "': " +
                  r.processed.problem + ")");
    }
    const bool epoch_end = r.last_in_epoch;
    if (epoch_end) {
      if (good_in_epoch_ == 0) {
        throw Error("data: epoch " + std::to_string(r.epoch) + " of " + source_->describe() +
                    " has no usable sample (" + std::to_string(stats_.bad) + " bad, " +
                    std::to_string(stats_.filtered) + " filtered so far; last: " + last_unusable_ + ")");
      }
      good_in_epoch_ = 0;
    }
    const auto n = static_cast<std::int64_t>(items.size());
    if (n == options_.batch_size || (epoch_end && n > 0)) {
      if (n < options_.batch_size && options_.drop_last) {
        stats_.dropped += n;
        items.clear();
        continue;
      }
      stats_.examples += n;
      return collate(items, epoch_end);
    }
  }
}

Batch DataLoader::collate(std::vector<Result>& items, bool end_of_epoch) const {
  Batch b;
  b.epoch = items.back().epoch;
  b.end_of_epoch = end_of_epoch;
  const auto slots = items.front().processed.example.images.size();
  std::vector<std::vector<torch::Tensor>> per_slot(slots);
  std::vector<float> labels;
  for (auto& item : items) {
    auto& ex = item.processed.example;
    b.keys.push_back(ex.key);
    b.sources.push_back(ex.source);
    b.texts.push_back(std::move(ex.text));
    labels.push_back(static_cast<float>(ex.label));
    for (std::size_t s = 0; s < slots; ++s) per_slot[s].push_back(std::move(ex.images[s]));
  }
  const bool cuda = device_.is_cuda();
  for (auto& images : per_slot) {
    auto stacked = torch::stack(images);
    if (cuda) stacked = stacked.pin_memory().to(device_, /*non_blocking=*/true);
    else if (device_ != stacked.device()) stacked = stacked.to(device_);
    b.images.push_back(std::move(stacked));
  }
  b.labels = torch::tensor(labels, torch::kFloat32).to(device_);
  return b;
}

nlohmann::json DataLoader::state() const {
  auto s = stats_.to_json();
  s["good_in_epoch"] = good_in_epoch_;
  s["fingerprint"] = options_.fingerprint();
  s["order"] = options_.order_fingerprint();
  s["world_size"] = options_.world_size;
  return s;
}

void DataLoader::load_state(const nlohmann::json& state) {
  if (started_) throw Error("data loader: load_state must come before the first batch");
  constexpr const char* kWhat = "data loader state";
  try {
    auto records = config::whole_number_at(state, "records", kWhat);
    if (state.at("fingerprint").get<std::string>() != options_.fingerprint()) {
      // Another number of processes over the same data: the examples the old run read in all
      // are skipped where the source can place them (image folders).
      const auto world = state.find("world_size");
      const int saved_world =
          world == state.end() ? 0 : static_cast<int>(config::whole_number(*world, 0, INT32_MAX).value_or(0));
      const auto position = state.value("order", std::string()) == options_.order_fingerprint() && saved_world > 0
                                ? source_->position_after(records, saved_world)
                                : -1;
      if (position < 0) {
        spdlog::warn(
            "data: the data settings differ from the checkpoint's (dataset, seed, shuffle, filters{}); the loader "
            "starts this data from its beginning",
            saved_world != options_.world_size ? ", or the number of processes with shards" : "");
        return;
      }
      spdlog::info("data: the checkpoint was written by {} process(es), this run has {}: rank {} continues at record "
                   "{} of its share", saved_world, options_.world_size, options_.rank, position);
      records = position;
    }
    source_->skip(records);
    fetched_ = records;
    consumed_ = records;
    stats_.records = records;
    stats_.examples = config::whole_number_at(state, "examples", kWhat);
    stats_.bad = config::whole_number_at(state, "bad", kWhat);
    stats_.filtered = config::whole_number_at(state, "filtered", kWhat);
    stats_.dropped = config::whole_number_at(state, "dropped", kWhat);
    stats_.epoch = config::whole_number_at(state, "epoch", kWhat);
    good_in_epoch_ = config::whole_number_at(state, "good_in_epoch", kWhat);
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("data loader state: malformed (") + e.what() + ")");
  }
}

std::int64_t DataLoader::batches_per_epoch() const {
  const auto n = source_->epoch_size();
  if (n < 0) return -1;
  return options_.drop_last ? n / options_.batch_size : (n + options_.batch_size - 1) / options_.batch_size;
}

std::string DataLoader::describe() const {
  return std::string(kind_name(options_.kind)) + " data from " + source_->describe() + "; " +
         options_.transform.summary() + "; batch " + std::to_string(options_.batch_size) + ", " +
         std::to_string(options_.num_workers) + " worker(s)";
}

}  // namespace lisadiff::data
