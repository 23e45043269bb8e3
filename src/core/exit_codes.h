// Process exit codes shared by every lisadiff executable.
#pragma once

namespace lisadiff::exit_code {

constexpr int kOk = 0;
constexpr int kError = 1;        // bad input, failed I/O, failed validation: the message says which
constexpr int kUsage = 2;        // unknown flag, missing argument, bad flag value
constexpr int kInterrupted = 130;  // SIGINT (128 + 2), as shells report it

}  // namespace lisadiff::exit_code
