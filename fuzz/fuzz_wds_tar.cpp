// Fuzz target: the webdataset tar reader and the record decoding behind it (src/data/sources.h,
// dataset.h). The last byte picks the kind (t2i, ip2p, dpo) whose columns the samples are
// decoded for; the input is the shard. Contract: TarSamples never throws (a truncated or bad
// tar ends the stream with a record whose `problem` says so) and process_record never throws
// for bad data (it returns kBad with the reason).
#include <cstdint>
#include <string_view>

#include "data/dataset.h"
#include "data/sources.h"
#include "fuzz_util.h"

using namespace lisadiff;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  fuzz::init_quietly();
  const auto kind = static_cast<data::ExampleKind>(data[size - 1] % 3);
  const auto path = fuzz::write_scratch("shard-000000.tar", {reinterpret_cast<const char*>(data), size - 1});
  auto options = data::DataOptions::for_recipe(kind);
  options.transform.resolution = 8;  // small: the decoding, not the resizing, is under test
  fuzz::expect_clean("wds tar", [&] {
    data::TarSamples tar(path.string());
    data::Record record;
    int samples = 0;
    while (tar.next(record) && ++samples < 64) {
      const auto processed = data::process_record(record, options, 1234);
      if (processed.status == data::Processed::Status::kOk && processed.example.images.empty()) std::abort();
      record = data::Record{};
    }
  });
  return 0;
}
