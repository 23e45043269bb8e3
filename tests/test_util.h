// Helpers shared by the test suites.
#pragma once

#include <filesystem>
#include <memory>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "core/error.h"

namespace lisadiff::testing {

// From the file named by $LISADIFF_TEST_PATHS, which ctest sets (tests/CMakeLists.txt); to
// run a test by hand: LISADIFF_TEST_PATHS=build/test_paths.json build/tests/test_x
std::filesystem::path tests_dir();     // the source tests/ folder
std::filesystem::path fixtures_dir();  // tests_dir() / "fixtures"
std::string test_python();             // the venv's python (reference checks)
std::string cli_path();                // the lisadiff executable
// The full CLIP vocabulary folder (SD1.5's tokenizer files) that scripts/setup.sh builds;
// empty when CMake was configured without LISADIFF_CLIP_VOCAB_DIR.
std::filesystem::path clip_vocab_dir();

// A fresh directory, removed with everything in it when the object goes away.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

std::string read_file(const std::filesystem::path& path);
void write_file(const std::filesystem::path& path, const std::string& bytes);
nlohmann::ordered_json read_json(const std::filesystem::path& path);
// One JSON object per non-empty line (metrics.jsonl).
std::vector<nlohmann::ordered_json> read_jsonl(const std::filesystem::path& path);

// Same dtype, same shape and the same bytes (works for every dtype, float8 and uint included).
::testing::AssertionResult same_tensor(const torch::Tensor& a, const torch::Tensor& b);
// Equal within |a - b| <= atol + rtol * |b| everywhere. A failure names `what` and reports
// the max abs and max relative error, the worst index and both values there.
::testing::AssertionResult close_tensor(const std::string& what, const torch::Tensor& actual,
                                        const torch::Tensor& expected, double atol, double rtol);

// Everything spdlog logs while the object lives, instead of stderr.
class CapturedLog {
 public:
  CapturedLog();
  ~CapturedLog();
  std::string text() const { return stream_->str(); }

 private:
  std::shared_ptr<std::ostringstream> stream_;
  std::shared_ptr<void> previous_;
};

// Runs a shell command; returns its exit status and (stdout + stderr).
std::pair<int, std::string> run_command(const std::string& command);

// A recipe parity test's Python reference: scripts/<script> --pipeline P --inputs DIR --out
// FILE with the venv's python; returns its exit status and output.
std::pair<int, std::string> run_reference(const std::string& script, const std::filesystem::path& pipeline,
                                          const std::filesystem::path& inputs, const std::filesystem::path& out);

}  // namespace lisadiff::testing

// Asserts that `statement` throws lisadiff::Error and its message contains every
// substring given after it.
#define EXPECT_THROW_WITH(statement, ...)                                                  \
  do {                                                                                     \
    try {                                                                                  \
      statement;                                                                           \
      ADD_FAILURE() << "expected lisadiff::Error from: " #statement;                       \
    } catch (const ::lisadiff::Error& error_) {                                            \
      const std::string message_ = error_.what();                                          \
      for (const std::string& expected_ : std::initializer_list<std::string>{__VA_ARGS__}) {  \
        EXPECT_NE(message_.find(expected_), std::string::npos)                             \
            << "message does not contain \"" << expected_ << "\":\n  " << message_;        \
      }                                                                                    \
    }                                                                                      \
  } while (0)

namespace lisadiff::testing {

// One tensor per safetensors dtype (plus a 0-d and an empty one), with the values that
// scripts/make_fixtures.py's dtype_sample() writes into tests/fixtures/safetensors/.
std::vector<std::pair<std::string, torch::Tensor>> dtype_sample();

}  // namespace lisadiff::testing
