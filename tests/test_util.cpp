#include "test_util.h"

#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <random>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

namespace {

// One intra-op thread per test process (unless OMP_NUM_THREADS says otherwise): ctest runs
// tests in parallel, and LibTorch's OpenMP threads spin while they wait, so two tests with
// two threads each on two cores ran many times slower than with one thread each (the
// training tests: minutes instead of seconds). Python reference checks started by the tests
// inherit the variable.
const bool kSingleThreaded = [] {
  ::setenv("OMP_NUM_THREADS", "1", /*overwrite=*/0);
  at::set_num_threads(std::max(1, std::atoi(std::getenv("OMP_NUM_THREADS"))));
  return true;
}();

}  // namespace

namespace lisadiff::testing {

namespace {

std::string test_path(const char* key) {
  static const nlohmann::json paths = [] {
    const char* file = std::getenv("LISADIFF_TEST_PATHS");
    if (file == nullptr || *file == '\0') {
      throw std::runtime_error("LISADIFF_TEST_PATHS is not set: run the tests through ctest (scripts/test.sh)");
    }
    return nlohmann::json::parse(read_file(file));
  }();
  return paths.at(key).get<std::string>();
}

}  // namespace

std::filesystem::path tests_dir() { return test_path("tests_dir"); }
std::filesystem::path fixtures_dir() { return tests_dir() / "fixtures"; }
std::string test_python() { return test_path("python"); }
std::string cli_path() { return test_path("cli"); }
std::filesystem::path clip_vocab_dir() { return test_path("clip_vocab_dir"); }

TempDir::TempDir() {
  std::random_device rd;
  path_ = std::filesystem::temp_directory_path() /
          ("lisadiff-test-" + std::to_string(getpid()) + "-" + std::to_string(rd()));
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::filesystem::path& path, const std::string& bytes) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

nlohmann::ordered_json read_json(const std::filesystem::path& path) {
  return nlohmann::ordered_json::parse(read_file(path));
}

std::vector<nlohmann::ordered_json> read_jsonl(const std::filesystem::path& path) {
  std::vector<nlohmann::ordered_json> out;
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.push_back(nlohmann::ordered_json::parse(line));
  }
  return out;
}

::testing::AssertionResult close_tensor(const std::string& what, const torch::Tensor& actual,
                                        const torch::Tensor& expected, double atol, double rtol) {
  if (!actual.defined() || !expected.defined()) return ::testing::AssertionFailure() << what << ": undefined tensor";
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << what << ": shape " << actual.sizes() << " vs expected " << expected.sizes();
  }
  const auto a = actual.detach().to(torch::kCPU, torch::kDouble).flatten();
  const auto b = expected.detach().to(torch::kCPU, torch::kDouble).flatten();
  if (a.numel() == 0) return ::testing::AssertionSuccess();
  const auto diff = (a - b).abs();
  const auto excess = diff - (atol + rtol * b.abs());
  const auto worst = excess.argmax().item<int64_t>();
  const double max_abs = diff.max().item<double>();
  const double max_rel = (diff / b.abs().clamp_min(1e-30)).max().item<double>();
  if (excess[worst].item<double>() > 0 || !torch::isfinite(a).all().item<bool>()) {
    return ::testing::AssertionFailure()
           << what << ": max abs error " << max_abs << ", max rel error " << max_rel << "; worst at flat index " << worst
           << " of shape " << actual.sizes() << ": " << a[worst].item<double>() << " vs expected "
           << b[worst].item<double>() << " (atol " << atol << ", rtol " << rtol << ")";
  }
  return ::testing::AssertionSuccess() << what << ": max abs error " << max_abs << ", max rel error " << max_rel;
}

::testing::AssertionResult same_tensor(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type()) {
    return ::testing::AssertionFailure() << "dtype " << a.scalar_type() << " vs " << b.scalar_type();
  }
  if (a.sizes() != b.sizes()) return ::testing::AssertionFailure() << "shape " << a.sizes() << " vs " << b.sizes();
  const auto ca = a.contiguous();
  const auto cb = b.contiguous();
  const auto bytes = static_cast<std::size_t>(ca.numel() * ca.element_size());
  if (bytes > 0 && std::memcmp(ca.data_ptr(), cb.data_ptr(), bytes) != 0) {
    return ::testing::AssertionFailure() << "bytes differ";
  }
  return ::testing::AssertionSuccess();
}

CapturedLog::CapturedLog() : stream_(std::make_shared<std::ostringstream>()) {
  previous_ = spdlog::default_logger();
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(*stream_);
  auto logger = std::make_shared<spdlog::logger>("captured", sink);
  logger->set_pattern("%l: %v");
  spdlog::set_default_logger(logger);
}

CapturedLog::~CapturedLog() {
  spdlog::set_default_logger(std::static_pointer_cast<spdlog::logger>(previous_));
}

std::pair<int, std::string> run_command(const std::string& command) {
  std::string output;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  std::array<char, 4096> buffer{};
  while (std::fgets(buffer.data(), buffer.size(), pipe)) output += buffer.data();
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

}  // namespace lisadiff::testing

namespace lisadiff::testing {

std::vector<std::pair<std::string, torch::Tensor>> dtype_sample() {
  const auto base = torch::arange(12, torch::kDouble).reshape({3, 4}) - 5;
  const std::vector<std::pair<std::string, torch::ScalarType>> types = {
      {"bool", torch::kBool},       {"u8", torch::kByte},          {"i8", torch::kChar},
      {"i16", torch::kShort},       {"u16", torch::kUInt16},       {"f16", torch::kHalf},
      {"bf16", torch::kBFloat16},   {"i32", torch::kInt},          {"u32", torch::kUInt32},
      {"f32", torch::kFloat},       {"f64", torch::kDouble},       {"i64", torch::kLong},
      {"u64", torch::kUInt64},      {"c64", torch::kComplexFloat}, {"f8_e5m2", torch::kFloat8_e5m2},
      {"f8_e4m3", torch::kFloat8_e4m3fn}, {"f8_e8m0", torch::kFloat8_e8m0fnu},
      {"f8_e4m3fnuz", torch::kFloat8_e4m3fnuz}, {"f8_e5m2fnuz", torch::kFloat8_e5m2fnuz},
  };
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, type] : types) {
    torch::Tensor value;
    if (type == torch::kBool) {
      value = base.remainder(3) == 0;
    } else if (name[0] == 'u' || name == "f8_e8m0") {
      value = (base + 5).to(type);  // non-negative
    } else if (c10::isFloatingType(type) || c10::isComplexType(type)) {
      value = (base * 0.25).to(type);
    } else {
      value = base.to(type);
    }
    out.emplace_back(name, value);
  }
  out.emplace_back("scalar", torch::tensor(3.5f));
  out.emplace_back("empty", torch::zeros({0, 3}));
  return out;
}

std::pair<int, std::string> run_reference(const std::string& script, const std::filesystem::path& pipeline,
                                          const std::filesystem::path& inputs, const std::filesystem::path& out) {
  return run_command(test_python() + " " + (tests_dir().parent_path() / "scripts" / script).string() + " --pipeline " +
                     pipeline.string() + " --inputs " + inputs.string() + " --out " + out.string() + " 2>&1");
}

}  // namespace lisadiff::testing
