#include "data/sources.h"

#include <sys/wait.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <numeric>

#include <archive.h>
#include <archive_entry.h>
#include <spdlog/spdlog.h>

#include "core/error.h"

namespace lisadiff::data {
namespace {

// No member of a sample may be larger (an image of PIL's maximum size is well below this).
constexpr la_int64_t kMaxMemberBytes = la_int64_t{1} << 30;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// Expands the first brace group of `spec` and recurses on the results.
void expand_one(const std::string& spec, std::vector<std::string>& out) {
  const auto open = spec.find('{');
  if (open == std::string::npos) {
    if (spec.find('}') != std::string::npos) throw Error("shard spec '" + spec + "': '}' without '{'");
    out.push_back(spec);
    return;
  }
  const auto close = spec.find('}', open);
  if (close == std::string::npos) throw Error("shard spec '" + spec + "': '{' without '}'");
  const auto body = spec.substr(open + 1, close - open - 1);
  const auto head = spec.substr(0, open), tail = spec.substr(close + 1);
  std::vector<std::string> items;
  const auto dots = body.find("..");
  if (dots != std::string::npos) {
    const auto a = body.substr(0, dots), b = body.substr(dots + 2);
    const auto digits = [](const std::string& s) {
      return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
    };
    if (!digits(a) || !digits(b)) throw Error("shard spec '" + spec + "': range {" + body + "} is not {N..M}");
    const auto lo = std::stoll(a), hi = std::stoll(b);
    if (hi < lo) throw Error("shard spec '" + spec + "': range {" + body + "} goes backwards");
    if (hi - lo > 10'000'000) throw Error("shard spec '" + spec + "': range {" + body + "} is too long");
    const auto width = std::max(a.size(), b.size());
    for (auto i = lo; i <= hi; ++i) {
      auto s = std::to_string(i);
      if (a.size() > 1 && a[0] == '0' && s.size() < width) s.insert(0, width - s.size(), '0');
      else if (a.size() == b.size() && s.size() < width) s.insert(0, width - s.size(), '0');
      items.push_back(s);
    }
  } else {
    std::size_t start = 0;
    while (true) {
      const auto comma = body.find(',', start);
      items.push_back(body.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  for (const auto& item : items) expand_one(head + item + tail, out);
}

}  // namespace

std::vector<std::string> expand_braces(const std::string& spec) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    const auto sep = spec.find("::", start);
    const auto part = spec.substr(start, sep == std::string::npos ? std::string::npos : sep - start);
    if (!part.empty()) expand_one(part, out);
    if (sep == std::string::npos) break;
    start = sep + 2;
  }
  return out;
}

std::vector<std::int64_t> seeded_permutation(std::int64_t n, std::uint64_t seed) {
  std::vector<std::int64_t> p(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = i;
  TransformDraws draws(seed);
  for (std::int64_t i = n - 1; i > 0; --i) std::swap(p[static_cast<std::size_t>(i)], p[static_cast<std::size_t>(draws.uniform_int(i))]);
  return p;
}

// ---------------------------------------------------------------------------------------
// Image folder

FolderSource::FolderSource(const DataOptions& options)
    : dir_(options.train_data_dir), shuffle_(options.shuffle), seed_(options.seed), rank_(options.rank),
      world_(options.world_size) {
  const auto manifest = dir_ / "metadata.jsonl";
  if (!std::filesystem::is_directory(dir_)) throw Error(dir_.string() + ": train_data_dir is not a folder");
  std::ifstream in(manifest);
  if (!in) throw Error(manifest.string() + ": missing (an image folder needs metadata.jsonl, see docs/data.md)");
  std::string line;
  std::int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Record row;
    row.key = "line " + std::to_string(number);
    row.source = manifest.string();
    nlohmann::json object;
    try {
      object = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      row.problem = "metadata.jsonl line " + std::to_string(number) + " is not valid JSON (" + e.what() + ")";
    }
    if (row.problem.empty() && !object.is_object()) row.problem = "metadata.jsonl line is not a JSON object";
    if (row.problem.empty()) {
      row.values = nlohmann::json::object();
      for (auto it = object.begin(); it != object.end(); ++it) {
        const auto& k = it.key();
        // `file_name`, or `<column>_file_name`, as the datasets library reads imagefolders.
        const std::string suffix = "_file_name";
        const bool image_key = k == "file_name" || (k.size() > suffix.size() &&
                                                    k.compare(k.size() - suffix.size(), suffix.size(), suffix) == 0);
        if (image_key) {
          const auto column = k == "file_name" ? std::string("image") : k.substr(0, k.size() - suffix.size());
          if (!it->is_string() || it->get<std::string>().empty()) {
            row.problem = "'" + k + "' is not a file name";
            break;
          }
          row.files[column] = dir_ / it->get<std::string>();
          // The key names the example's image file (the first image column's otherwise).
          if (column == "image" || row.key.rfind("line ", 0) == 0) row.key = it->get<std::string>();
        } else {
          row.values[k] = *it;
        }
      }
      if (row.problem.empty() && row.files.empty()) row.problem = "no file_name or <column>_file_name key";
      if (!row.files.empty()) row.key += " (line " + std::to_string(number) + ")";
    }
    rows_.push_back(std::move(row));
  }
  if (rows_.empty()) throw Error(manifest.string() + ": no examples");
  const auto n = static_cast<std::int64_t>(rows_.size());
  if (options.max_train_samples > 0 && options.max_train_samples < n) {
    // dataset.shuffle(seed).select(range(max_train_samples)): a fixed seeded subset.
    auto p = seeded_permutation(n, mix_seed(seed_, 0x5E1EC7ull));
    subset_.assign(p.begin(), p.begin() + options.max_train_samples);
  } else {
    for (std::int64_t i = 0; i < n; ++i) subset_.push_back(i);
  }
  const auto m = static_cast<std::int64_t>(subset_.size());
  // Every rank reads as many records per epoch (accelerate's even_batches): the last round
  // wraps to the start of the epoch's order, so that no rank ends its epoch a batch early
  // (the ranks' accumulation windows and collectives stay in step).
  if (m < world_) {
    throw Error(manifest.string() + ": " + std::to_string(m) + " examples are too few for " + std::to_string(world_) +
                " processes");
  }
  per_rank_ = (m + world_ - 1) / world_;
}

std::int64_t FolderSource::position_after(std::int64_t records, int world_size) const {
  // The saved rank read `records` records of epochs of ceil(m / W) per rank; all W ranks
  // together read the first W * j records of the epoch's order. This rank skips the ones
  // of its own share among them.
  const auto m = static_cast<std::int64_t>(subset_.size());
  const std::int64_t old_per_rank = (m + world_size - 1) / world_size;
  const std::int64_t epoch = records / old_per_rank, j = records % old_per_rank;
  const std::int64_t global = std::min(m, j * world_size);
  const std::int64_t mine = global > rank_ ? (global - rank_ + world_ - 1) / world_ : 0;
  return epoch * per_rank_ + std::min(mine, per_rank_);
}

const std::vector<std::int64_t>& FolderSource::order_of(std::int64_t epoch) {
  if (epoch != cached_epoch_) {
    const auto m = static_cast<std::int64_t>(subset_.size());
    if (shuffle_) {
      const auto p = seeded_permutation(m, mix_seed(seed_, static_cast<std::uint64_t>(epoch)));
      order_.resize(p.size());
      for (std::size_t i = 0; i < p.size(); ++i) order_[i] = subset_[static_cast<std::size_t>(p[i])];
    } else {
      order_ = subset_;
    }
    cached_epoch_ = epoch;
  }
  return order_;
}

bool FolderSource::next(Record& record) {
  const auto epoch = position_ / per_rank_, j = position_ % per_rank_;
  const auto& order = order_of(epoch);
  const auto m = static_cast<std::int64_t>(order.size());
  record = rows_[static_cast<std::size_t>(order[static_cast<std::size_t>((j * world_ + rank_) % m)])];
  record.epoch = epoch;
  record.last_in_epoch = j == per_rank_ - 1;
  ++position_;
  return true;
}

std::string FolderSource::describe() const {
  return dir_.string() + " (" + std::to_string(subset_.size()) + " examples" +
         (world_ > 1 ? ", " + std::to_string(per_rank_) + " for rank " + std::to_string(rank_) : std::string()) + ")";
}

// ---------------------------------------------------------------------------------------
// Tar shards

TarSamples::TarSamples(std::string shard) : shard_(std::move(shard)) {
  archive_ = archive_read_new();
  archive_read_support_format_tar(archive_);
  archive_read_support_format_gnutar(archive_);
  archive_read_support_filter_all(archive_);
  int rc;
  if (shard_.rfind("pipe:", 0) == 0) {
    pipe_ = ::popen(shard_.substr(5).c_str(), "r");
    if (pipe_ == nullptr) {
      error_ = "cannot start the command";
      done_ = true;
      return;
    }
    rc = archive_read_open_fd(archive_, fileno(pipe_), 1 << 16);
  } else {
    rc = archive_read_open_filename(archive_, shard_.c_str(), 1 << 16);
  }
  if (rc != ARCHIVE_OK) {
    error_ = archive_error_string(archive_) ? archive_error_string(archive_) : "cannot open";
    done_ = true;
  }
}

TarSamples::~TarSamples() { close(); }

void TarSamples::close() {
  if (archive_ != nullptr) {
    archive_read_free(archive_);
    archive_ = nullptr;
  }
  if (pipe_ != nullptr) {
    const int status = ::pclose(pipe_);
    pipe_ = nullptr;
    if (status != 0 && error_.empty()) {
      if (WIFSIGNALED(status)) spdlog::warn("{}: the command was killed by signal {}", shard_, WTERMSIG(status));
      else spdlog::warn("{}: the command exited with status {}", shard_, WIFEXITED(status) ? WEXITSTATUS(status) : status);
    }
  }
}

// Reads the next regular member with a "<key>.<field>" name into member_*; false at the
// end or on an error (error_ set).
bool TarSamples::read_member() {
  try {
    return read_member_unguarded();
  } catch (const std::exception& e) {  // e.g. std::bad_alloc: the shard ends as unreadable
    error_ = e.what();
    done_ = true;
    return false;
  }
}

bool TarSamples::read_member_unguarded() {
  while (!done_) {
    archive_entry* entry = nullptr;
    const int rc = archive_read_next_header(archive_, &entry);
    if (rc == ARCHIVE_EOF) {
      done_ = true;
      return false;
    }
    if (rc < ARCHIVE_WARN) {
      error_ = archive_error_string(archive_) ? archive_error_string(archive_) : "unreadable tar";
      done_ = true;
      return false;
    }
    if (archive_entry_filetype(entry) != AE_IFREG) continue;
    const std::string name = archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "";
    const auto slash = name.rfind('/');
    const auto dot = name.find('.', slash == std::string::npos ? 0 : slash + 1);
    const auto base_start = slash == std::string::npos ? 0 : slash + 1;
    if (dot == std::string::npos || dot == base_start) continue;
    // webdataset's meta members (__key__, __url__, ...) are not samples.
    if (dot - base_start >= 4 && name.compare(base_start, 2, "__") == 0 && name.compare(dot - 2, 2, "__") == 0) continue;
    member_key_ = name.substr(0, dot);
    member_field_ = lower(name.substr(dot + 1));
    member_data_.clear();
    const auto size = archive_entry_size_is_set(entry) ? archive_entry_size(entry) : 0;
    if (size > kMaxMemberBytes) {
      // A corrupt header or an absurd member: end this shard as unreadable rather than
      // allocating what the header claims.
      error_ = "member " + name + " claims " + std::to_string(size) + " bytes (more than the " +
               std::to_string(kMaxMemberBytes >> 20) + " MiB a sample member may have)";
      done_ = true;
      return false;
    }
    member_data_.reserve(static_cast<std::size_t>(std::clamp<la_int64_t>(size, 0, 64 << 20)));
    char chunk[1 << 16];
    while (true) {
      const auto n = archive_read_data(archive_, chunk, sizeof(chunk));
      if (n == 0) break;
      if (n < 0) {
        error_ = archive_error_string(archive_) ? archive_error_string(archive_) : "unreadable member";
        error_ += " (in member " + name + ")";
        done_ = true;
        return false;
      }
      if (static_cast<la_int64_t>(member_data_.size()) + n > kMaxMemberBytes) {
        error_ = "member " + name + " is larger than " + std::to_string(kMaxMemberBytes >> 20) + " MiB";
        done_ = true;
        return false;
      }
      member_data_.append(chunk, static_cast<std::size_t>(n));
    }
    return true;
  }
  return false;
}

bool TarSamples::next(Record& record) {
  if (!have_member_) have_member_ = read_member();
  if (!have_member_) {
    if (!error_.empty()) {
      // Report the failure once, as a bad record.
      record = Record{};
      record.key = "(end of shard)";
      record.source = shard_;
      record.problem = "truncated or unreadable tar: " + error_;
      error_.clear();
      close();
      return true;
    }
    close();
    return false;
  }
  record = Record{};
  record.key = member_key_;
  record.source = shard_;
  while (have_member_ && member_key_ == record.key && !record.bytes.count(member_field_)) {
    record.bytes[member_field_] = std::move(member_data_);
    have_member_ = read_member();
  }
  if (!have_member_ && !error_.empty()) {
    // The tar broke inside this sample (or right after it): the sample may be incomplete.
    record.problem = "truncated or unreadable tar: " + error_;
    error_.clear();
  }
  const auto json = record.bytes.find("json");
  if (json != record.bytes.end()) {
    try {
      record.values = nlohmann::json::parse(json->second);
      if (!record.values.is_object()) record.values = nlohmann::json::object({{"json", record.values}});
    } catch (const nlohmann::json::exception&) {
      if (record.problem.empty()) record.problem = "the .json member is not valid JSON";
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// Webdataset

WdsSource::WdsSource(const DataOptions& options)
    : shards_(expand_braces(options.train_shards)), resample_(options.resample_shards), shuffle_(options.shuffle),
      seed_(options.seed), buffer_size_(options.shuffle ? static_cast<std::size_t>(std::max<std::int64_t>(options.shuffle_buffer, 1)) : 1),
      rng_(mix_seed(options.seed, 0x3A2Dull + static_cast<std::uint64_t>(options.rank))) {
  if (shards_.empty()) throw Error("train_shards_path_or_url '" + options.train_shards + "': no shards");
  // Missing local shards are dropped up front with one warning (a spec like {0000..0999}
  // often reaches past the last shard written); a shard that fails later is a bad record.
  std::vector<std::string> present, missing;
  for (const auto& s : shards_) (s.rfind("pipe:", 0) == 0 || std::filesystem::exists(s) ? present : missing).push_back(s);
  if (present.empty()) {
    throw Error("train_shards_path_or_url '" + options.train_shards + "': none of the " + std::to_string(shards_.size()) +
                " shards exists (first: " + shards_.front() + ")");
  }
  if (!missing.empty()) {
    spdlog::warn("train_shards_path_or_url '{}': {} of {} shards do not exist and are skipped (first: {})",
                 options.train_shards, missing.size(), shards_.size(), missing.front());
    shards_ = present;
  }
  if (resample_) {
    my_shards_ = shards_;  // every process draws its own stream (seeded by rank)
  } else {
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      if (static_cast<int>(i % static_cast<std::size_t>(options.world_size)) == options.rank) my_shards_.push_back(shards_[i]);
    }
    if (my_shards_.empty()) {
      throw Error("train_shards_path_or_url: " + std::to_string(shards_.size()) + " shards are too few for " +
                  std::to_string(options.world_size) + " processes (each needs at least one)");
    }
  }
}

bool WdsSource::open_next_shard() {
  if (resample_) {
    const auto i = static_cast<std::size_t>(TransformDraws(rng_()).uniform_int(static_cast<std::int64_t>(my_shards_.size()) - 1));
    tar_ = std::make_unique<TarSamples>(my_shards_[i]);
    return true;
  }
  if (shard_order_.empty()) {
    shard_order_.resize(my_shards_.size());
    std::iota(shard_order_.begin(), shard_order_.end(), std::size_t{0});
    if (shuffle_) {
      const auto p = seeded_permutation(static_cast<std::int64_t>(my_shards_.size()),
                                        mix_seed(seed_, 0x5A4Dull + static_cast<std::uint64_t>(epoch_)));
      for (std::size_t i = 0; i < p.size(); ++i) shard_order_[i] = static_cast<std::size_t>(p[i]);
    }
    shard_cursor_ = 0;
  }
  if (shard_cursor_ >= shard_order_.size()) return false;
  tar_ = std::make_unique<TarSamples>(my_shards_[shard_order_[shard_cursor_++]]);
  return true;
}

bool WdsSource::next_raw(Record& record) {
  // Shards that yield nothing in a row: bounded, so that an endless (resampled) stream over
  // empty tars ends in an error instead of a hang.
  std::size_t empty_in_a_row = 0;
  while (true) {
    if (!tar_ && !open_next_shard()) return false;
    if (tar_->next(record)) return true;
    tar_.reset();
    if (resample_ && ++empty_in_a_row > 4 * my_shards_.size() + 16) {
      throw Error(describe() + ": the shards hold no samples");
    }
  }
}

bool WdsSource::next(Record& record) {
  // A shuffle buffer: fill to buffer_size_, then hand out a random element and refill its
  // slot. At an epoch's end the buffer drains before the next epoch starts.
  while (true) {
    if (!draining_) {
      while (buffer_.size() < buffer_size_) {
        Record r;
        if (!next_raw(r)) {
          draining_ = true;
          break;
        }
        buffer_.push_back(std::move(r));
      }
    }
    if (!buffer_.empty()) {
      const auto i = static_cast<std::size_t>(
          buffer_size_ > 1 ? TransformDraws(rng_()).uniform_int(static_cast<std::int64_t>(buffer_.size()) - 1) : 0);
      record = std::move(buffer_[i]);
      buffer_[i] = std::move(buffer_.back());
      buffer_.pop_back();
      // Refill now, so that the epoch's last record knows it is the last.
      if (!draining_) {
        Record r;
        if (next_raw(r)) buffer_.push_back(std::move(r));
        else draining_ = true;
      }
      record.epoch = epoch_;
      record.last_in_epoch = draining_ && buffer_.empty();
      empty_epochs_ = 0;
      return true;
    }
    // The epoch ended with an empty buffer: start the next one.
    if (resample_ || ++empty_epochs_ > 1) {
      if (resample_) throw Error(describe() + ": no samples could be read from any shard");
      throw Error(describe() + ": an epoch yielded no samples (all shards empty or unreadable)");
    }
    ++epoch_;
    shard_order_.clear();
    draining_ = false;
  }
}

std::string WdsSource::describe() const {
  return std::to_string(shards_.size()) + " webdataset shard(s) " + shards_.front() +
         (shards_.size() > 1 ? " .. " + shards_.back() : std::string()) + (resample_ ? " (resampled)" : "");
}

}  // namespace lisadiff::data
