// lisadiff::UsageError: a command-line or config-file mistake (a flag's value, a missing or
// contradictory flag), as opposed to bad input files. The boundary (an app's main) prints it
// like any lisadiff::Error and exits with code 2 instead of 1 (core/exit_codes.h).
#pragma once

#include "core/error.h"

namespace lisadiff {

class UsageError : public Error {
 public:
  using Error::Error;
};

}  // namespace lisadiff
