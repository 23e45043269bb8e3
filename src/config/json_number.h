// Whole numbers from JSON values, checked. Checkpoint state (training_state.json) is read with
// them: nlohmann's get<int64_t>() converts a float or an out-of-range number without a check
// (2e20 into an int64 is undefined behaviour; 2.5 silently becomes 2).
#pragma once

#include <cstdint>
#include <optional>

namespace lisadiff::config {

// A JSON integer in [min, max], or nullopt for anything else (a float, a string, a number out
// of range). Works for nlohmann::json and ordered_json alike.
template <class J>
std::optional<std::int64_t> whole_number(const J& value, std::int64_t min, std::int64_t max) {
  if (!value.is_number_integer()) return std::nullopt;
  if (value.is_number_unsigned() && value.template get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) {
    return std::nullopt;
  }
  const auto v = value.template get<std::int64_t>();
  if (v < min || v > max) return std::nullopt;
  return v;
}

}  // namespace lisadiff::config
