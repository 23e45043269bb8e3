#include "config/config_checks.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "config/json_fields.h"

namespace lisadiff::config {

void require_positive(const std::string& source, const std::string& key, int value) {
  if (value <= 0) field_error(source, key, fmt::format("expected a positive integer, found {}", value));
}

void require_positive(const std::string& source, const std::string& key, double value) {
  if (!(value > 0.0)) field_error(source, key, fmt::format("expected a positive number, found {}", value));
}

void require_one_of(const std::string& source, const std::string& key, const std::string& value,
                    const std::vector<std::string>& allowed) {
  if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
    field_error(source, key, fmt::format("expected one of {}, found \"{}\"", fmt::join(allowed, ", "), value));
  }
}

void require_odd_kernel(const std::string& source, const std::string& key, int value) {
  if (value <= 0 || value % 2 == 0) {
    field_error(source, key, fmt::format("expected an odd positive kernel size, found {}", value));
  }
}

void require_block_types(const std::string& source, const std::string& key, const std::vector<std::string>& types,
                         const std::vector<std::string>& supported) {
  for (std::size_t i = 0; i < types.size(); ++i) {
    if (std::find(supported.begin(), supported.end(), types[i]) == supported.end()) {
      field_error(source, fmt::format("{}[{}]", key, i),
                  fmt::format("unknown block type \"{}\" (supported: {})", types[i], fmt::join(supported, ", ")));
    }
  }
}

void require_length(const std::string& source, const std::string& key, std::size_t found, std::size_t expected,
                    const std::string& other_key) {
  if (found != expected) {
    field_error(source, key,
                fmt::format("expected {} entries (as many as {}), found {}", expected, other_key, found));
  }
}

void require_divisible_channels(const std::string& source, const std::vector<int>& block_out_channels, int groups) {
  for (std::size_t i = 0; i < block_out_channels.size(); ++i) {
    if (block_out_channels[i] <= 0 || block_out_channels[i] % groups != 0) {
      field_error(source, fmt::format("block_out_channels[{}]", i),
                  fmt::format("expected a positive multiple of norm_num_groups ({}), found {}", groups,
                              block_out_channels[i]));
    }
  }
}

}  // namespace lisadiff::config
