// Whole numbers from JSON values, checked. Checkpoint state (training_state.json) is read with
// them: nlohmann's get<int64_t>() converts a float or an out-of-range number without a check
// (2e20 into an int64 is undefined behaviour; 2.5 silently becomes 2).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"

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

// object[key] as a whole number in [min, max]; otherwise an Error
// "<what>: <key> is 2.5, not a whole number >= 0" (or "in [min, max]"). A missing key throws
// nlohmann's out_of_range, as object.at(key) does.
template <class J>
std::int64_t whole_number_at(const J& object, const char* key, const std::string& what, std::int64_t min = 0,
                             std::int64_t max = INT64_MAX) {
  const auto& v = object.at(key);
  if (const auto x = whole_number(v, min, max)) return *x;
  const std::string range = max == INT64_MAX ? fmt::format(">= {}", min) : fmt::format("in [{}, {}]", min, max);
  throw Error(fmt::format("{}: {} is {}, not a whole number {}", what, key, v.dump(), range));
}

// object[key] as a list of whole numbers >= 0; otherwise an Error naming the key.
template <class J>
std::vector<std::int64_t> whole_numbers_at(const J& object, const char* key, const std::string& what) {
  const auto& v = object.at(key);
  if (!v.is_array()) throw Error(fmt::format("{}: {} is {}, not a list", what, key, v.type_name()));
  std::vector<std::int64_t> out;
  for (const auto& item : v) {
    const auto x = whole_number(item, 0, INT64_MAX);
    if (!x) throw Error(fmt::format("{}: {} holds {}, not a whole number >= 0", what, key, item.dump()));
    out.push_back(*x);
  }
  return out;
}

}  // namespace lisadiff::config
