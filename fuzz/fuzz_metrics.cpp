// Fuzz target: metrics.jsonl (src/tools/plot.h): parsed as `lisadiff plot` reads it (a bad
// line is a warning, never an error), then drawn when it has few enough records to be quick.
#include <cstdint>
#include <string_view>

#include "fuzz_util.h"
#include "tools/plot.h"

using namespace lisadiff;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::init_quietly();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  fuzz::expect_clean("metrics", [&] {
    const auto log = tools::parse_metrics(text, "metrics.jsonl");
    for (const auto& name : log.names()) {
      if (log.find(name) == nullptr) std::abort();
    }
    if (log.records > 0 && log.records <= 64) {
      tools::PlotOptions options;
      options.width = 320;
      options.log_y = {"lr", "loss"};
      (void)tools::render_metrics(log, options);
    }
  });
  return 0;
}
