#include "train/training_state.h"

#include <fmt/format.h>

#include "config/json_number.h"
#include "core/error.h"

namespace lisadiff::train {

namespace {

using Json = nlohmann::json;

const Json& field(const Json& state, const char* key, const std::string& file) {
  const auto it = state.find(key);
  if (it == state.end()) throw Error(file, field_key(key), "missing");
  return *it;
}

std::int64_t integer(const Json& state, const char* key, const std::string& file, std::int64_t min, std::int64_t max) {
  const Json& v = field(state, key, file);
  if (!v.is_number_integer()) throw Error(file, field_key(key), "is " + std::string(v.type_name()) + ", not an integer");
  const auto x = config::whole_number(v, min, max);
  if (!x) throw Error(file, field_key(key), fmt::format("{} is outside [{}, {}]", v.dump(), min, max));
  return *x;
}

const Json& object(const Json& state, const char* key, const std::string& file) {
  const Json& v = field(state, key, file);
  if (!v.is_object()) throw Error(file, field_key(key), "is " + std::string(v.type_name()) + ", not an object");
  return v;
}

std::string text(const Json& state, const char* key, const std::string& file) {
  const Json& v = field(state, key, file);
  if (!v.is_string()) throw Error(file, field_key(key), "is " + std::string(v.type_name()) + ", not a string");
  return v.get<std::string>();
}

}  // namespace

SavedTrainingState parse_training_state(const Json& state, const std::string& file) {
  if (!state.is_object()) throw Error(file, "is " + std::string(state.type_name()) + ", not a JSON object");
  SavedTrainingState s;
  constexpr std::int64_t kMax = INT64_MAX;
  s.format = static_cast<int>(integer(state, "format", file, 0, INT32_MAX));
  if (s.format != kTrainingStateFormat) {
    throw Error(file, fmt::format("state format {} is not {}: written by {} lisadiff", s.format, kTrainingStateFormat,
                                  s.format < kTrainingStateFormat ? "an older" : "a newer"));
  }
  s.global_step = integer(state, "global_step", file, 0, kMax);
  s.schedule_step = integer(state, "schedule_step", file, 0, s.global_step);
  s.micro_batches = integer(state, "micro_batches", file, 0, kMax);
  s.method = text(state, "method", file);
  s.model = text(state, "model", file);
  s.mixed_precision = text(state, "mixed_precision", file);
  if (state.contains("recipe")) s.recipe = text(state, "recipe", file);
  s.gradient_accumulation_steps = static_cast<int>(integer(state, "gradient_accumulation_steps", file, 1, INT32_MAX));
  s.world_size = state.contains("world_size") ? static_cast<int>(integer(state, "world_size", file, 1, 1 << 20)) : 1;
  if (state.contains("lisa")) s.lisa = object(state, "lisa", file);
  s.parts = object(state, "parts", file);
  if (state.contains("rank_parts")) {
    s.rank_parts = state.at("rank_parts");
    if (!s.rank_parts.is_array() || s.rank_parts.size() != static_cast<std::size_t>(s.world_size)) {
      throw Error(file, field_key("rank_parts"), fmt::format("is not a list of {} objects (world_size)", s.world_size));
    }
    for (const auto& p : s.rank_parts) {
      if (!p.is_object()) throw Error(file, field_key("rank_parts"), "holds " + std::string(p.type_name()) + ", not objects");
    }
  }
  return s;
}

}  // namespace lisadiff::train
