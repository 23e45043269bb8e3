// A TensorBoard event-file reader for the tests: each TFRecord's length, both masked CRC-32Cs
// checked, and the Event parsed back with the classes generated from src/io/tfevent.proto.
// Independent of the writer's framing code (it reads the bytes by hand; only the CRC function
// is shared, and test_tensorboard checks that one against CRC-32C's published check value).
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "io/tensorboard.h"
#include "io/tfevent.pb.h"
#include "test_util.h"

namespace lisadiff::testing {

inline std::uint64_t little_endian(const std::string& bytes, std::size_t offset, std::size_t size) {
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < size; ++i) {
    value |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[offset + i])) << (8 * i);
  }
  return value;
}

// Every record of `file`; a failed check is a test failure (and stops the reading).
inline std::vector<io::tfevent::Event> read_events(const std::filesystem::path& file) {
  const std::string bytes = read_file(file);
  std::vector<io::tfevent::Event> events;
  std::size_t offset = 0;
  while (offset < bytes.size()) {
    const std::string where = file.string() + " at byte " + std::to_string(offset);
    if (bytes.size() - offset < 12) {
      ADD_FAILURE() << where << ": truncated record header";
      break;
    }
    const std::uint64_t length = little_endian(bytes, offset, 8);
    EXPECT_EQ(little_endian(bytes, offset + 8, 4), io::masked_crc32c(std::string_view(bytes).substr(offset, 8)))
        << where << ": length CRC";
    if (bytes.size() - offset - 12 < length + 4) {
      ADD_FAILURE() << where << ": truncated record of " << length << " bytes";
      break;
    }
    const std::string data = bytes.substr(offset + 12, length);
    EXPECT_EQ(little_endian(bytes, offset + 12 + length, 4), io::masked_crc32c(data)) << where << ": data CRC";
    io::tfevent::Event event;
    if (!event.ParseFromString(data)) {
      ADD_FAILURE() << where << ": not an Event";
      break;
    }
    events.push_back(std::move(event));
    offset += 12 + length + 4;
  }
  return events;
}

// The event files in `dir`, sorted by name (the order TensorBoard reads them in).
inline std::vector<std::filesystem::path> event_files(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> files;
  if (!std::filesystem::is_directory(dir)) return files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().filename().string().rfind("events.out.tfevents.", 0) == 0) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// The scalars tagged `tag` in the event files of `dir` as TensorBoard's EventAccumulator
// shows them: the files in name order, and a SessionLog START at step s (a resumed run)
// drops the points read so far whose step is >= s.
inline std::vector<std::pair<std::int64_t, float>> tensorboard_scalars(const std::filesystem::path& dir,
                                                                       const std::string& tag) {
  std::vector<std::pair<std::int64_t, float>> points;
  for (const auto& file : event_files(dir)) {
    for (const auto& event : read_events(file)) {
      if (event.has_session_log() && event.session_log().status() == io::tfevent::SessionLog::START) {
        points.erase(std::remove_if(points.begin(), points.end(),
                                    [&](const auto& point) { return point.first >= event.step(); }),
                     points.end());
      }
      if (!event.has_summary()) continue;
      for (const auto& value : event.summary().value()) {
        if (value.tag() == tag && value.has_simple_value()) points.emplace_back(event.step(), value.simple_value());
      }
    }
  }
  return points;
}

}  // namespace lisadiff::testing
