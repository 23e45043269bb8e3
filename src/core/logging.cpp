#include "core/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "core/error.h"

namespace lisadiff {

void init_logging(const std::string& level) {
  const auto parsed = spdlog::level::from_str(level);
  // from_str maps unknown names to "off"; only "off" itself may mean off.
  if (parsed == spdlog::level::off && level != "off") {
    throw Error("unknown log level '" + level + "' (expected trace, debug, info, warn, error or off)");
  }
  auto logger = spdlog::get("lisadiff");
  if (!logger) {
    logger = spdlog::stderr_color_mt("lisadiff");
    logger->set_pattern("%^%l%$: %v");
    spdlog::set_default_logger(logger);
  }
  logger->set_level(parsed);
}

}  // namespace lisadiff
