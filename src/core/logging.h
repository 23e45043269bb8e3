// Logging through spdlog: one stderr logger for every executable, so stdout carries only
// a command's actual output (e.g. `lisadiff inspect --json`).
#pragma once

#include <string>

namespace lisadiff {

// level: trace, debug, info, warn, error, off. Throws lisadiff::Error for any other name.
void init_logging(const std::string& level = "info");

}  // namespace lisadiff
