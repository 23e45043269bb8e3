// TensorBoard event files (src/io/tensorboard.h): the CRC-32C and the TFRecord framing, the
// file name and the file-version record, scalars and images read back record by record
// (both CRCs checked, the Events parsed with the generated classes, the PNG decoded), the
// SessionLog of a resumed run, new files never touching old ones, and errors that name the path.
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <ctime>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "data/image.h"
#include "io/tensorboard.h"
#include "io/tfevent_reader.h"
#include "test_util.h"

namespace lisadiff::io {
namespace {

namespace fs = std::filesystem;
using lisadiff::testing::event_files;
using lisadiff::testing::read_events;
using lisadiff::testing::read_file;
using lisadiff::testing::TempDir;

TEST(TensorBoard, Crc32cMatchesTheCastagnoliCheckValues) {
  // The published check value of CRC-32C, and RFC 3720's (iSCSI) test vectors.
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  EXPECT_EQ(crc32c(""), 0u);
  const std::uint32_t crc = crc32c("123456789");
  EXPECT_EQ(masked_crc32c("123456789"), ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
}

TEST(TensorBoard, FrameIsLengthCrcDataCrc) {
  const std::string frame = tfrecord_frame("abc");
  ASSERT_EQ(frame.size(), 8u + 4 + 3 + 4);
  EXPECT_EQ(frame.substr(0, 8), std::string("\x03\0\0\0\0\0\0\0", 8));
  EXPECT_EQ(testing::little_endian(frame, 8, 4), masked_crc32c(frame.substr(0, 8)));
  EXPECT_EQ(frame.substr(12, 3), "abc");
  EXPECT_EQ(testing::little_endian(frame, 15, 4), masked_crc32c("abc"));
}

TEST(TensorBoard, FileIsNamedAsTensorFlowDoesAndStartsWithTheVersionRecord) {
  TempDir dir;
  const double before = static_cast<double>(std::time(nullptr));
  TensorBoardWriter writer(dir / "logs" / "run");  // parents are created
  const std::string name = writer.file().filename().string();
  EXPECT_EQ(writer.file().parent_path(), dir / "logs" / "run");
  // events.out.tfevents.<10-digit seconds>.<hostname>.<pid>.<counter>
  ASSERT_EQ(name.rfind("events.out.tfevents.", 0), 0u) << name;
  const std::string rest = name.substr(std::string("events.out.tfevents.").size());
  const double seconds = std::stod(rest.substr(0, 10));
  EXPECT_EQ(rest[10], '.');
  EXPECT_GE(seconds, before);
  EXPECT_LE(seconds, before + 60);
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  EXPECT_NE(rest.find(std::string(".") + host + "." + std::to_string(::getpid()) + "."), std::string::npos) << name;

  const auto events = read_events(writer.file());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(writer.records(), 1);
  EXPECT_EQ(events[0].file_version(), "brain.Event:2");
  EXPECT_GE(events[0].wall_time(), before);
  EXPECT_LE(events[0].wall_time(), before + 60);
}

TEST(TensorBoard, ScalarsReadBackWithTagsStepsValuesAndWallTimes) {
  TempDir dir;
  struct Scalar {
    std::string tag;
    double value;
    std::int64_t step;
  };
  const std::vector<Scalar> written = {
      {"loss", 0.1834, 1},          {"lr", 9.6e-05, 1},       {"loss", 0.25, 2},
      {"train/grad_norm", 1.5, 2},  {"peak_memory", 123456789.0, 3}, {"loss", -3.0, 1LL << 40},
  };
  TensorBoardWriter writer(dir.path());
  for (std::size_t i = 0; i < written.size(); ++i) {
    writer.add_scalar(written[i].tag, written[i].value, written[i].step, 1.7e9 + static_cast<double>(i));
  }
  writer.add_scalar("now", 1.0, 7);  // wall time: now
  writer.flush();

  const auto events = read_events(writer.file());
  ASSERT_EQ(events.size(), written.size() + 2);
  EXPECT_EQ(writer.records(), static_cast<std::int64_t>(events.size()));
  for (std::size_t i = 0; i < written.size(); ++i) {
    const auto& event = events[i + 1];
    SCOPED_TRACE(written[i].tag);
    ASSERT_TRUE(event.has_summary());
    ASSERT_EQ(event.summary().value_size(), 1);
    const auto& value = event.summary().value(0);
    EXPECT_EQ(value.tag(), written[i].tag);
    ASSERT_EQ(value.value_case(), tfevent::Summary::Value::kSimpleValue);
    EXPECT_EQ(value.simple_value(), static_cast<float>(written[i].value));  // float32, as TensorBoard keeps it
    EXPECT_EQ(event.step(), written[i].step);
    EXPECT_EQ(event.wall_time(), 1.7e9 + static_cast<double>(i));
  }
  EXPECT_NEAR(events.back().wall_time(), static_cast<double>(std::time(nullptr)), 60);
}

TEST(TensorBoard, NanAndInfAreWrittenAsTheyAre) {
  TempDir dir;
  TensorBoardWriter writer(dir.path());
  writer.add_scalar("loss", std::numeric_limits<double>::quiet_NaN(), 1);
  writer.add_scalar("loss", std::numeric_limits<double>::infinity(), 2);
  const auto events = read_events(writer.file());
  ASSERT_EQ(events.size(), 3u);
  EXPECT_TRUE(std::isnan(events[1].summary().value(0).simple_value()));
  EXPECT_TRUE(std::isinf(events[2].summary().value(0).simple_value()));
}

TEST(TensorBoard, ImageIsAPngOfTheSamePixels) {
  TempDir dir;
  const int height = 5, width = 7;
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(height) * width * 3);
  for (std::size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<std::uint8_t>((i * 37 + 11) % 256);
  TensorBoardWriter writer(dir.path());
  writer.add_image("validation/grid", rgb.data(), height, width, 40);

  const auto events = read_events(writer.file());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].step(), 40);
  const auto& value = events[1].summary().value(0);
  EXPECT_EQ(value.tag(), "validation/grid");
  ASSERT_EQ(value.value_case(), tfevent::Summary::Value::kImage);
  EXPECT_EQ(value.image().height(), height);
  EXPECT_EQ(value.image().width(), width);
  EXPECT_EQ(value.image().colorspace(), 3);
  const std::string& png = value.image().encoded_image_string();
  ASSERT_EQ(data::sniff_image_format(png), data::ImageFormat::kPng);
  const torch::Tensor decoded = data::decode_image(png, "the summary's PNG");
  const torch::Tensor expected =
      torch::from_blob(rgb.data(), {height, width, 3}, torch::kUInt8).clone();
  EXPECT_TRUE(testing::same_tensor(decoded, expected));
}

TEST(TensorBoard, ImageFromTensorsHwcUint8AndChwFloat) {
  TempDir dir;
  const torch::Tensor hwc = torch::randint(0, 256, {4, 6, 3}, torch::kUInt8);
  const torch::Tensor chw = hwc.permute({2, 0, 1}).to(torch::kFloat32).div(255);
  TensorBoardWriter writer(dir.path());
  writer.add_image("hwc", hwc, 1);
  writer.add_image("chw", chw, 2);
  writer.add_image("chw_out_of_range", chw.mul(4).sub(1), 3);  // clamped to [0, 1]

  const auto events = read_events(writer.file());
  ASSERT_EQ(events.size(), 4u);
  const auto pixels = [&](int i) {
    return data::decode_image(events[static_cast<std::size_t>(i)].summary().value(0).image().encoded_image_string(), "png");
  };
  EXPECT_TRUE(testing::same_tensor(pixels(1), hwc));
  EXPECT_TRUE(testing::same_tensor(pixels(2), hwc));
  const torch::Tensor clamped = chw.mul(4).sub(1).clamp(0, 1).mul(255).round().to(torch::kUInt8).permute({1, 2, 0});
  EXPECT_TRUE(testing::same_tensor(pixels(3), clamped.contiguous()));

  EXPECT_THROW_WITH(writer.add_image("bad", torch::zeros({4, 6}, torch::kUInt8), 4), writer.file().string(),
                    "image 'bad'", "expected uint8 [H, W, 3]");
  EXPECT_THROW_WITH(writer.add_image("gray", torch::zeros({1, 4, 6}), 4), "image 'gray'");
  EXPECT_THROW_WITH(writer.add_image("empty", nullptr, 0, 0, 4), "image 'empty'", "empty image");
  EXPECT_EQ(read_events(writer.file()).size(), 4u);  // failed calls wrote nothing
}

TEST(TensorBoard, SessionStartForAResumedRun) {
  TempDir dir;
  TensorBoardWriter writer(dir.path());
  writer.add_session_start(51);
  const auto events = read_events(writer.file());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].step(), 51);
  ASSERT_TRUE(events[1].has_session_log());
  EXPECT_EQ(events[1].session_log().status(), tfevent::SessionLog::START);
}

TEST(TensorBoard, EveryWriterMakesItsOwnFileAndOldFilesStayAsTheyWere) {
  TempDir dir;
  fs::path first_file;
  std::string first_bytes;
  {
    TensorBoardWriter first(dir.path());
    first.add_scalar("loss", 1.0, 1);
    first_file = first.file();
  }
  // A run that crashed mid-record: its file ends with half a record.
  std::string cut = read_file(first_file);
  cut += tfrecord_frame("half a record").substr(0, 9);
  testing::write_file(first_file, cut);

  TensorBoardWriter second(dir.path());
  TensorBoardWriter third(dir.path());  // the same second: the counter tells them apart
  second.add_scalar("loss", 2.0, 2);
  third.add_scalar("loss", 3.0, 3);
  EXPECT_NE(second.file(), first_file);
  EXPECT_NE(second.file(), third.file());
  EXPECT_EQ(event_files(dir.path()).size(), 3u);
  EXPECT_EQ(read_file(first_file), cut);  // untouched
  const auto events = read_events(second.file());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].summary().value(0).simple_value(), 2.0f);
}

TEST(TensorBoard, MovedWriterKeepsWriting) {
  TempDir dir;
  TensorBoardWriter a(dir.path());
  TensorBoardWriter b = std::move(a);
  b.add_scalar("x", 1, 1);
  EXPECT_EQ(read_events(b.file()).size(), 2u);
}

TEST(TensorBoard, ErrorsNameThePath) {
  TempDir dir;
  testing::write_file(dir / "file", "not a folder");
  EXPECT_THROW_WITH(TensorBoardWriter(dir / "file" / "logs"), (dir / "file" / "logs").string(),
                    "cannot create the TensorBoard log folder");
}

TEST(TensorBoard, AFailedWriteNamesTheFileAndLeavesOnlyWholeRecords) {
  // A full disk, simulated with a file-size limit: the kernel writes up to the limit (half a
  // record), then refuses with EFBIG (SIGXFSZ ignored). The writer cuts the half record back.
  TempDir dir;
  TensorBoardWriter writer(dir.path());
  writer.add_scalar("loss", 1.0, 1);
  const auto whole = static_cast<rlim_t>(fs::file_size(writer.file()));
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto previous_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit limited = saved;
  limited.rlim_cur = whole + 20;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  const std::vector<std::uint8_t> rgb(64 * 64 * 3, 7);
  try {
    writer.add_image("big", rgb.data(), 64, 64, 2);
    ADD_FAILURE() << "expected lisadiff::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(writer.file().string() + ": write failed"), std::string::npos) << e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, previous_handler);
  EXPECT_EQ(fs::file_size(writer.file()), whole);
  writer.add_scalar("loss", 2.0, 2);  // goes on after the space came back
  const auto events = read_events(writer.file());
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2].summary().value(0).simple_value(), 2.0f);
}

}  // namespace
}  // namespace lisadiff::io
