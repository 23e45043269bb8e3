// safetensors reader and writer: round trips, zero-copy, conversion, and every kind of
// malformed file, each built here from a valid one.
#include <cstring>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace lisadiff::io {
namespace {

using lisadiff::testing::dtype_sample;
using lisadiff::testing::read_file;
using lisadiff::testing::same_tensor;
using lisadiff::testing::TempDir;
using lisadiff::testing::write_file;

// A file from a header text (padded with spaces to 8 bytes) and a data buffer.
std::string make_file(const std::string& header, const std::string& data) {
  std::string text = header;
  text.append((8 - text.size() % 8) % 8, ' ');
  const std::uint64_t n = text.size();
  return std::string(reinterpret_cast<const char*>(&n), 8) + text + data;
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, int begin, int end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

class SafetensorsTest : public ::testing::Test {
 protected:
  // Writes `bytes` to bad.safetensors and expects the reader to reject it with a message
  // that names the file and contains every `parts`.
  template <class... Parts>
  void expect_rejected(const std::string& bytes, const Parts&... parts) {
    const auto path = dir_ / "bad.safetensors";
    write_file(path, bytes);
    EXPECT_THROW_WITH(SafetensorsReader{path}, path.string(), parts...);
  }
  TempDir dir_;
};

TEST_F(SafetensorsTest, RoundTripsEveryDtype) {
  const auto sample = dtype_sample();
  const auto path = dir_ / "all.safetensors";
  write_safetensors(path, sample, {{"format", "pt"}, {"note", "round trip"}});
  const SafetensorsReader reader(path);
  ASSERT_EQ(reader.size(), sample.size());
  for (const auto& [name, tensor] : sample) EXPECT_TRUE(same_tensor(reader.tensor(name), tensor)) << name;
  EXPECT_EQ(reader.metadata().at("note"), "round trip");
  EXPECT_EQ(reader.metadata().at("format"), "pt");
}

TEST_F(SafetensorsTest, WriterOrdersByDtypeThenNameAndAlignsData) {
  const auto path = dir_ / "order.safetensors";
  write_safetensors(path, {{"b", torch::zeros({2}, torch::kHalf)},
                           {"a", torch::zeros({2}, torch::kHalf)},
                           {"z", torch::zeros({1}, torch::kLong)},
                           {"m", torch::zeros({3})}});
  const SafetensorsReader reader(path);
  std::vector<std::string> names;
  for (const auto& e : reader.entries()) names.push_back(e.name);
  EXPECT_EQ(names, (std::vector<std::string>{"z", "m", "a", "b"}));  // I64 > F32 > F16, then by name
  const auto bytes = read_file(path);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
}

TEST_F(SafetensorsTest, ZeroCopyTensorsShareTheMappingAndNeverWriteTheFile) {
  const auto path = dir_ / "f32.safetensors";
  write_safetensors(path, {{"w", torch::arange(6, torch::kFloat)}});
  const auto before = read_file(path);
  const SafetensorsReader reader(path);
  auto first = reader.tensor("w");
  auto second = reader.tensor("w");
  EXPECT_EQ(first.data_ptr(), second.data_ptr());  // both point into the mapping
  first.mul_(10);                                  // copy-on-write: this process only
  EXPECT_EQ(read_file(path), before);
  EXPECT_FLOAT_EQ(SafetensorsReader(path).tensor("w")[5].item<float>(), 5.0f);
}

TEST_F(SafetensorsTest, TensorsOutliveTheReader) {
  const auto path = dir_ / "keep.safetensors";
  write_safetensors(path, {{"w", torch::arange(4, torch::kFloat)}});
  torch::Tensor t;
  {
    const SafetensorsReader reader(path);
    t = reader.tensor("w");
  }
  EXPECT_FLOAT_EQ(t.sum().item<float>(), 6.0f);
}

TEST_F(SafetensorsTest, UnalignedDataIsCopied) {
  // A 9-byte header puts the data buffer at byte 17: not aligned for float32.
  const float values[2] = {1.5f, -2.0f};
  std::string header = "{" + entry("w", "F32", "[2]", 0, 8) + "}";
  const std::uint64_t n = header.size();
  const std::string bytes =
      std::string(reinterpret_cast<const char*>(&n), 8) + header + std::string(reinterpret_cast<const char*>(values), 8);
  ASSERT_NE((8 + n) % 4, 0u);
  const auto path = dir_ / "unaligned.safetensors";
  write_file(path, bytes);
  const SafetensorsReader reader(path);
  const auto t = reader.tensor("w");
  EXPECT_NE(t.data_ptr(), reader.tensor("w").data_ptr());  // a fresh copy each time
  EXPECT_FLOAT_EQ(t[0].item<float>(), 1.5f);
  EXPECT_FLOAT_EQ(t[1].item<float>(), -2.0f);
}

TEST_F(SafetensorsTest, ConvertsToTheRequestedDtype) {
  const auto stored = torch::tensor({0.1f, 2.5f, -3.25f}).to(torch::kHalf);
  const auto path = dir_ / "f16.safetensors";
  write_safetensors(path, {{"h", stored}});
  const SafetensorsReader reader(path);
  EXPECT_TRUE(same_tensor(reader.tensor("h", torch::kFloat), stored.to(torch::kFloat)));
  EXPECT_TRUE(same_tensor(reader.tensor("h", torch::kBFloat16), stored.to(torch::kBFloat16)));
  EXPECT_EQ(reader.tensor("h", torch::kHalf).data_ptr(), reader.tensor("h").data_ptr());
}

TEST_F(SafetensorsTest, WritesNonContiguousTensors) {
  const auto t = torch::arange(6, torch::kFloat).reshape({2, 3}).t();
  const auto path = dir_ / "t.safetensors";
  write_safetensors(path, {{"t", t}});
  EXPECT_TRUE(same_tensor(SafetensorsReader(path).tensor("t"), t.contiguous()));
}

TEST_F(SafetensorsTest, UnknownTensorNameIsAnError) {
  const auto path = dir_ / "one.safetensors";
  write_safetensors(path, {{"w", torch::zeros({1})}});
  const SafetensorsReader reader(path);
  EXPECT_FALSE(reader.contains("nope"));
  EXPECT_THROW_WITH(reader.entry("nope"), path.string(), "tensor 'nope'", "no such tensor");
}

TEST_F(SafetensorsTest, RejectsFilesTruncatedAnywhere) {
  const auto path = dir_ / "good.safetensors";
  write_safetensors(path, {{"a", torch::ones({4, 4})}, {"b", torch::ones({3})}});
  const auto good = read_file(path);
  std::uint64_t n = 0;
  std::memcpy(&n, good.data(), 8);
  for (const std::size_t cut : {std::size_t{0}, std::size_t{4}, std::size_t{7}, std::size_t{8}, std::size_t{12},
                                static_cast<std::size_t>(8 + n / 2), static_cast<std::size_t>(8 + n),
                                static_cast<std::size_t>(8 + n + 10), good.size() - 1}) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    expect_rejected(good.substr(0, cut), "truncated");
  }
}

TEST_F(SafetensorsTest, RejectsBadHeaderLengths) {
  const std::string body = "{}      ";
  std::uint64_t past_end = 1000;
  expect_rejected(std::string(reinterpret_cast<const char*>(&past_end), 8) + body, "header length 1000",
                  "runs past the end");
  std::uint64_t huge = 200'000'000;
  expect_rejected(std::string(reinterpret_cast<const char*>(&huge), 8) + body, "exceeds the limit");
}

TEST_F(SafetensorsTest, RejectsInvalidHeaders) {
  expect_rejected(make_file("{\"a\": {\"dtype\": ", ""), "not valid JSON");
  expect_rejected(make_file("[1, 2]", ""), "starting with '{'");
  expect_rejected(make_file("{\"__metadata__\":{\"x\":1}}", ""), "__metadata__ entry 'x'", "must be a string");
  expect_rejected(make_file("{\"w\":[1]}", ""), "tensor 'w'", "JSON object");
}

TEST_F(SafetensorsTest, RejectsMissingAndOddFields) {
  const std::string data(8, '\0');
  expect_rejected(make_file("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", data), "tensor 'w'",
                  "missing field 'shape'");
  expect_rejected(make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"foo\":1}}", data),
                  "tensor 'w'", "unexpected field 'foo'");
  expect_rejected(make_file("{\"w\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", data), "tensor 'w'",
                  "'dtype' must be a string");
  expect_rejected(make_file("{" + entry("w", "F32", "[-2]", 0, 8) + "}", data), "tensor 'w'", "non-negative");
  expect_rejected(make_file("{" + entry("w", "F32", "[2.0]", 0, 8) + "}", data), "tensor 'w'", "non-negative");
  expect_rejected(make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}", data),
                  "tensor 'w'", "data_offsets");
  expect_rejected(make_file("{" + entry("w", "F32", "[0]", 8, 0) + "}", data), "tensor 'w'", "end before");
}

TEST_F(SafetensorsTest, RejectsUnknownAndUnsupportedDtypes) {
  const std::string data(8, '\0');
  expect_rejected(make_file("{" + entry("w", "F9", "[2]", 0, 8) + "}", data), "tensor 'w'", "unknown dtype 'F9'");
  expect_rejected(make_file("{" + entry("w", "F4", "[16]", 0, 8) + "}", data), "tensor 'w'", "F4", "not supported");
  expect_rejected(make_file("{" + entry("w", "F6_E2M3", "[8]", 0, 6) + "}", data), "F6_E2M3", "not supported");
}

TEST_F(SafetensorsTest, RejectsSizeThatDisagreesWithShape) {
  expect_rejected(make_file("{" + entry("w", "F32", "[2,3]", 0, 20) + "}", std::string(20, '\0')), "tensor 'w'",
                  "needs 24 bytes", "span 20");
  expect_rejected(make_file("{" + entry("w", "F32", "[4294967296,4294967296,4294967296]", 0, 8) + "}",
                            std::string(8, '\0')),
                  "tensor 'w'", "too large");
  // A zero dimension makes the tensor empty, but the others must still fit in memory terms.
  expect_rejected(make_file("{" + entry("w", "F32", "[0,4611686018427387904,4611686018427387904]", 0, 0) + "}", ""),
                  "tensor 'w'", "too large");
}

TEST_F(SafetensorsTest, RejectsOverlapsGapsAndTrailingBytes) {
  expect_rejected(make_file("{" + entry("a", "F32", "[4]", 0, 16) + "," + entry("b", "F32", "[4]", 8, 24) + "}",
                            std::string(24, '\0')),
                  "tensor 'b'", "overlap tensor 'a'");
  expect_rejected(make_file("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 16, 24) + "}",
                            std::string(24, '\0')),
                  "tensor 'b'", "gap of 8 bytes", "after tensor 'a'");
  expect_rejected(make_file("{" + entry("a", "F32", "[2]", 8, 16) + "}", std::string(16, '\0')), "tensor 'a'",
                  "gap of 8 bytes", "start of the data buffer");
  expect_rejected(make_file("{" + entry("a", "F32", "[2]", 0, 8) + "}", std::string(12, '\0')),
                  "4 bytes after the last tensor");
  expect_rejected(make_file("{" + entry("a", "F32", "[4]", 0, 16) + "}", std::string(8, '\0')), "tensor 'a'",
                  "truncated", "which has");
}

TEST_F(SafetensorsTest, RejectsDuplicateNamesAndFields) {
  expect_rejected(make_file("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("a", "F32", "[2]", 8, 16) + "}",
                            std::string(16, '\0')),
                  "tensor 'a' appears twice");
  expect_rejected(make_file("{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}",
                            std::string(4, '\0')),
                  "field 'dtype' appears twice");
}

TEST_F(SafetensorsTest, RejectsNulBytesInTheHeader) {
  std::string header = "{" + entry("a", "F32", "[2]", 0, 8) + "}";
  header += std::string(8 - header.size() % 8, '\0');  // NUL padding instead of spaces
  const std::uint64_t n = header.size();
  expect_rejected(std::string(reinterpret_cast<const char*>(&n), 8) + header + std::string(8, '\0'), "NUL byte");
}

TEST_F(SafetensorsTest, AcceptsScalarsAndEmptyTensors) {
  const auto path = dir_ / "edge.safetensors";
  write_safetensors(path, {{"s", torch::tensor(2.0)}, {"e", torch::zeros({0, 5})}, {"e2", torch::zeros({3, 0})}});
  const SafetensorsReader reader(path);
  EXPECT_EQ(reader.tensor("s").dim(), 0);
  EXPECT_DOUBLE_EQ(reader.tensor("s").item<double>(), 2.0);
  EXPECT_EQ(reader.tensor("e").sizes(), (std::vector<std::int64_t>{0, 5}));
  EXPECT_EQ(reader.tensor("e2").numel(), 0);
}

TEST_F(SafetensorsTest, OpenErrorsNameTheFile) {
  EXPECT_THROW_WITH(SafetensorsReader{dir_ / "missing.safetensors"}, "missing.safetensors", "cannot open");
  EXPECT_THROW_WITH(SafetensorsReader{dir_.path()}, dir_.path().string(), "not a regular file");
}

TEST_F(SafetensorsTest, WriterRejectsBadInputAndKeepsThePreviousFile) {
  const auto path = dir_ / "keep.safetensors";
  write_safetensors(path, {{"w", torch::ones({2})}});
  const auto before = read_file(path);
  EXPECT_THROW_WITH(write_safetensors(path, {{"a", torch::ones({1})}, {"a", torch::ones({1})}}), "tensor 'a'",
                    "twice");
  EXPECT_THROW_WITH(write_safetensors(path, {{"u", torch::Tensor()}}), "tensor 'u'", "undefined");
  EXPECT_THROW_WITH(write_safetensors(path, {{"c", torch::zeros({1}, torch::kComplexDouble)}}), "tensor 'c'",
                    "cannot be stored");
  EXPECT_THROW_WITH(write_safetensors(path, {{"bad\xff", torch::ones({1})}}), path.string(), "cannot encode");
  EXPECT_EQ(read_file(path), before);
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& f : std::filesystem::directory_iterator(dir_.path())) ++files;
  EXPECT_EQ(files, 1u);  // no temporary left behind
  EXPECT_THROW_WITH(write_safetensors(dir_ / "no/such/dir/x.safetensors", {{"w", torch::ones({1})}}),
                    "x.safetensors", "cannot create temporary file");
}

TEST(AtomicFileWriter, UncommittedWritesNeverReachTheTarget) {
  TempDir dir;
  const auto target = dir / "state.json";
  write_file_atomic(target, "old");
  {
    AtomicFileWriter out(target);
    out.write("new, half written");
    ASSERT_TRUE(std::filesystem::exists(out.temp_path()));
    // No commit(): as if the process failed here.
  }
  EXPECT_EQ(read_file(target), "old");
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& f : std::filesystem::directory_iterator(dir.path())) ++files;
  EXPECT_EQ(files, 1u);
  write_file_atomic(target, "new");
  EXPECT_EQ(read_file(target), "new");
}

}  // namespace
}  // namespace lisadiff::io
