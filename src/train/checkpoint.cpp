#include "train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "config/json_fields.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace lisadiff::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "checkpoint-";
constexpr const char* kMarker = "checkpoint.json";

// The step of a "checkpoint-<digits>" name: canonical decimal (no leading zeros), fits int64.
std::optional<int64_t> checkpoint_step(const std::string& name) {
  if (name.rfind(kPrefix, 0) != 0) return std::nullopt;
  const char* begin = name.data() + std::strlen(kPrefix);
  const char* end = name.data() + name.size();
  if (begin == end || (*begin == '0' && end - begin > 1)) return std::nullopt;
  int64_t step = 0;
  const auto [ptr, ec] = std::from_chars(begin, end, step);
  if (ec != std::errc() || ptr != end) return std::nullopt;
  return step;
}

}  // namespace

CheckpointManager::CheckpointManager(fs::path output_dir, std::optional<int> total_limit)
    : output_dir_(std::move(output_dir)), total_limit_(total_limit) {
  if (total_limit_ && *total_limit_ < 1) {
    throw Error(fmt::format("checkpoints_total_limit must be at least 1, found {}", *total_limit_));
  }
}

std::vector<std::pair<int64_t, fs::path>> CheckpointManager::list() const {
  std::vector<std::pair<int64_t, fs::path>> out;
  if (!fs::is_directory(output_dir_)) return out;
  for (const auto& e : fs::directory_iterator(output_dir_)) {
    const auto name = e.path().filename().string();
    if (!e.is_directory() || name.rfind(kPrefix, 0) != 0) continue;
    const auto step = checkpoint_step(name);
    if (!step) {
      spdlog::warn("{}: not a checkpoint name (checkpoint-<step>); ignored", e.path().string());
      continue;
    }
    if (!fs::exists(e.path() / kMarker)) {
      spdlog::warn("{}: no {} (an interrupted save?); not a checkpoint", e.path().string(), kMarker);
      continue;
    }
    out.emplace_back(*step, e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

int64_t CheckpointManager::step_of(const fs::path& checkpoint) {
  const auto json = config::read_json_file(checkpoint / kMarker);
  if (!json.contains("global_step") || !json["global_step"].is_number_integer()) {
    throw Error((checkpoint / kMarker).string(), "field 'global_step': expected an integer");
  }
  return json["global_step"].get<int64_t>();
}

std::optional<fs::path> CheckpointManager::find(const std::string& resume_from) const {
  const auto all = list();
  if (resume_from == "latest") {
    if (all.empty()) return std::nullopt;
    return all.back().second;
  }
  const auto name = fs::path(resume_from).filename().string();
  for (const auto& [step, path] : all) {
    if (path.filename() == name) return path;
  }
  return std::nullopt;
}

fs::path CheckpointManager::save(int64_t step, const std::function<void(const fs::path& dir)>& write) {
  fs::create_directories(output_dir_);
  // Leftovers of interrupted saves (of any process) go first.
  for (const auto& e : fs::directory_iterator(output_dir_)) {
    const auto name = e.path().filename().string();
    if (name.rfind(".checkpoint-", 0) == 0 &&
        (name.find(".tmp-") != std::string::npos || name.find(".old-") != std::string::npos)) {
      spdlog::warn("removing {} (left by an interrupted checkpoint save)", e.path().string());
      fs::remove_all(e.path());
    }
  }
  const fs::path final_dir = output_dir_ / (kPrefix + std::to_string(step));
  const fs::path tmp = output_dir_ / fmt::format(".{}{}.tmp-{}", kPrefix, step, ::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    write(tmp);
    nlohmann::json files = nlohmann::json::array();
    for (const auto& e : fs::recursive_directory_iterator(tmp)) {
      if (e.is_regular_file()) files.push_back(fs::relative(e.path(), tmp).string());
    }
    std::sort(files.begin(), files.end());
    const auto now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
    io::write_file_atomic(tmp / kMarker,
                          nlohmann::json{{"global_step", step}, {"saved_at_unix", now.count()}, {"files", files}}.dump(1) + "\n");
    // A re-save of the same step: the old folder moves aside first and goes only once the
    // new one is in place, so a crash in between leaves one of them.
    const fs::path old = output_dir_ / fmt::format(".{}{}.old-{}", kPrefix, step, ::getpid());
    if (fs::exists(final_dir)) fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    io::fsync_directory(output_dir_);
    fs::remove_all(old);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
  // Rotation once the new checkpoint is safely in place (diffusers rotates before saving,
  // which leaves nothing when the save then fails): keep the newest `total_limit`.
  if (total_limit_) {
    auto existing = list();
    while (static_cast<int>(existing.size()) > *total_limit_) {
      spdlog::info("checkpoints_total_limit {}: removing {}", *total_limit_, existing.front().second.string());
      fs::remove_all(existing.front().second);
      existing.erase(existing.begin());
    }
  }
  spdlog::info("saved {}", final_dir.string());
  return final_dir;
}

void save_optimizer_state(const FusedOptimizer& optimizer, const fs::path& file) {
  io::NamedTensors tensors;
  for (auto& [k, t] : optimizer.state_tensors()) tensors.emplace_back(k, t.contiguous());
  io::write_safetensors(file, tensors, {{"format", "pt"}});
}

void load_optimizer_state(FusedOptimizer& optimizer, const fs::path& file) {
  io::SafetensorsReader reader(file);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& e : reader.entries()) tensors.emplace_back(e.name, reader.tensor(e.name));
  optimizer.load_state_tensors(tensors, file.string());
}

namespace {
io::NamedTensors rng_states() {
  io::NamedTensors states;
  auto cpu = at::detail::getDefaultCPUGenerator();
  {
    std::lock_guard<std::mutex> lock(cpu.mutex());
    states.emplace_back("cpu", cpu.get_state());
  }
  if (torch::cuda::is_available()) {
    for (int64_t d = 0; d < static_cast<int64_t>(torch::cuda::device_count()); ++d) {
      auto gen = at::globalContext().defaultGenerator(torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(d)));
      std::lock_guard<std::mutex> lock(gen.mutex());
      states.emplace_back("cuda:" + std::to_string(d), gen.get_state());
    }
  }
  return states;
}
}  // namespace

void save_rng_states(const fs::path& file) { io::write_safetensors(file, rng_states(), {{"format", "pt"}}); }

// Layout: per state, the name's length (4 bytes), the name, the state's length (8 bytes), the
// state (uint8), host byte order (the bytes never leave the run's machines of one kind).
std::string rng_states_bytes() {
  std::string out;
  for (const auto& [name, state] : rng_states()) {
    const auto bytes = state.contiguous();
    const uint32_t n = static_cast<uint32_t>(name.size());
    const uint64_t m = static_cast<uint64_t>(bytes.numel());
    out.append(reinterpret_cast<const char*>(&n), sizeof n).append(name);
    out.append(reinterpret_cast<const char*>(&m), sizeof m);
    out.append(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), m);
  }
  return out;
}

void write_rng_states(const fs::path& file, const std::string& bytes) {
  io::NamedTensors states;
  std::size_t at = 0;
  const auto take = [&](void* dst, std::size_t k) {
    if (at + k > bytes.size()) throw Error(file.string(), "random states: truncated payload from a peer");
    std::memcpy(dst, bytes.data() + at, k);
    at += k;
  };
  while (at < bytes.size()) {
    uint32_t n = 0;
    uint64_t m = 0;
    take(&n, sizeof n);
    std::string name(n, '\0');
    take(name.data(), n);
    take(&m, sizeof m);
    auto state = torch::empty({static_cast<int64_t>(m)}, torch::kUInt8);
    take(state.data_ptr<uint8_t>(), m);
    states.emplace_back(name, state);
  }
  io::write_safetensors(file, states, {{"format", "pt"}});
}

void load_rng_states(const fs::path& file) {
  io::SafetensorsReader reader(file);
  for (const auto& e : reader.entries()) {
    at::Generator gen;
    if (e.name == "cpu") {
      gen = at::detail::getDefaultCPUGenerator();
    } else if (e.name.rfind("cuda:", 0) == 0) {
      int64_t d = -1;
      const auto digits = e.name.substr(5);
      std::from_chars(digits.data(), digits.data() + digits.size(), d);
      if (d < 0) throw Error(file.string(), tensor_key(e.name), "not a CUDA device name");
      if (!torch::cuda::is_available() || d >= static_cast<int64_t>(torch::cuda::device_count())) {
        spdlog::warn("{}: RNG state of {} skipped (no such device here)", file.string(), e.name);
        continue;
      }
      gen = at::globalContext().defaultGenerator(torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(d)));
    } else {
      throw Error(file.string(), tensor_key(e.name), "unknown generator");
    }
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(reader.tensor(e.name).clone());
  }
}

}  // namespace lisadiff::train
