// Against the reference implementation: files written by the Python safetensors package
// (tests/fixtures/safetensors/, made by scripts/make_fixtures.py) read back exactly, the C++
// writer produces the same bytes, and the Python package reads what the C++ writer wrote.
#include "io/safetensors.h"
#include "test_util.h"

namespace lisadiff::io {
namespace {

using lisadiff::testing::dtype_sample;
using lisadiff::testing::fixtures_dir;
using lisadiff::testing::read_file;
using lisadiff::testing::same_tensor;
using lisadiff::testing::TempDir;

std::filesystem::path python_file() { return fixtures_dir() / "safetensors" / "all_dtypes.safetensors"; }

TEST(SafetensorsParity, ReadsEveryDtypeThePythonPackageWrites) {
  const SafetensorsReader reader(python_file());
  const auto sample = dtype_sample();
  ASSERT_EQ(reader.size(), sample.size());
  for (const auto& [name, expected] : sample) EXPECT_TRUE(same_tensor(reader.tensor(name), expected)) << name;
  EXPECT_EQ(reader.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
}

TEST(SafetensorsParity, WriterOutputIsByteIdenticalToThePythonPackage) {
  TempDir dir;
  write_safetensors(dir / "cpp.safetensors", dtype_sample(), {{"format", "pt"}});
  EXPECT_TRUE(read_file(dir / "cpp.safetensors") == read_file(python_file()));
}

TEST(SafetensorsParity, PythonPackageReadsWriterOutput) {
  const std::string python = lisadiff::testing::test_python();
  TempDir dir;
  const auto path = dir / "cpp.safetensors";
  write_safetensors(path, dtype_sample(), {{"format", "pt"}, {"writer", "lisadiff"}});
  const auto [rc, output] = lisadiff::testing::run_command(
      python + " " + (lisadiff::testing::tests_dir() / "io/check_python_reads.py").string() + " " + path.string());
  EXPECT_EQ(rc, 0) << output;
  EXPECT_NE(output.find("python read 21 tensors"), std::string::npos) << output;
}

}  // namespace
}  // namespace lisadiff::io
