#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "core/error.h"

namespace lisadiff::train {
namespace {

// Python's math.pi (the same double).
constexpr double kPi = 3.141592653589793;

struct NamedType {
  const char* name;
  LrScheduleType type;
};
constexpr NamedType kTypes[] = {
    {"constant", LrScheduleType::kConstant},
    {"constant_with_warmup", LrScheduleType::kConstantWithWarmup},
    {"linear", LrScheduleType::kLinear},
    {"cosine", LrScheduleType::kCosine},
    {"cosine_with_restarts", LrScheduleType::kCosineWithRestarts},
    {"polynomial", LrScheduleType::kPolynomial},
};

bool needs_total(LrScheduleType type) {
  return type != LrScheduleType::kConstant && type != LrScheduleType::kConstantWithWarmup;
}

std::string source_or_default(const std::string& source) { return source.empty() ? "LR schedule" : source; }

// Steps are read as JSON integers up to 2^31 - 1 (the shared reader's integer type).
template <class Visitor>
void read_steps(Visitor& reader, const char* key, std::int64_t& steps) {
  int value = static_cast<int>(std::min<std::int64_t>(steps, INT32_MAX));
  reader(key, value);
  steps = value;
}

}  // namespace

const std::vector<std::string>& LrSchedule::known_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& t : kTypes) out.emplace_back(t.name);
    return out;
  }();
  return names;
}

LrScheduleType LrSchedule::type_from_name(const std::string& name) {
  for (const auto& t : kTypes) {
    if (name == t.name) return t.type;
  }
  if (name == "piecewise_constant") {
    throw Error(fmt::format("lr_scheduler \"piecewise_constant\" is not supported: none of the diffusers scripts "
                            "has a flag for its step_rules; use one of {}",
                            fmt::join(known_names(), ", ")));
  }
  throw Error(fmt::format("unknown lr_scheduler \"{}\"; expected one of {}", name, fmt::join(known_names(), ", ")));
}

std::string LrSchedule::name_of(LrScheduleType type) {
  for (const auto& t : kTypes) {
    if (type == t.type) return t.name;
  }
  throw Error(fmt::format("invalid LrScheduleType {}", static_cast<int>(type)));
}

LrSchedule LrSchedule::from_name(const std::string& name) {
  LrSchedule schedule;
  schedule.type = type_from_name(name);
  return schedule;
}

LrSchedule LrSchedule::read(config::FieldReader& reader) {
  LrSchedule s;
  std::string name = s.name();
  reader("lr_scheduler", name);
  try {
    s.type = type_from_name(name);
  } catch (const Error& e) {
    config::field_error(reader.source(), "lr_scheduler", e.problem());
  }
  reader("learning_rate", s.base_lr);
  read_steps(reader, "lr_warmup_steps", s.warmup_steps);
  std::optional<int> total;
  reader("max_train_steps", total);
  if (total) s.total_steps = *total;
  reader("lr_num_cycles", s.num_cycles);
  reader("lr_power", s.power);
  reader("lr_end", s.lr_end);
  s.validate(reader.source());
  return s;
}

LrSchedule LrSchedule::from_json(const config::Json& json, const std::string& source) {
  config::FieldReader reader(json, source);
  LrSchedule s = read(reader);
  reader.warn_unclaimed();
  return s;
}

config::Json LrSchedule::to_json() const {
  config::Json json;
  json["lr_scheduler"] = name();
  json["learning_rate"] = base_lr;
  json["lr_warmup_steps"] = warmup_steps;
  json["max_train_steps"] = total_steps ? config::Json(*total_steps) : config::Json(nullptr);
  json["lr_num_cycles"] = num_cycles;
  json["lr_power"] = power;
  json["lr_end"] = lr_end;
  return json;
}

void LrSchedule::validate(const std::string& source_in) const {
  const std::string source = source_or_default(source_in);
  const auto fail = [&](const char* key, const std::string& problem) { config::field_error(source, key, problem); };
  if (!(std::isfinite(base_lr) && base_lr > 0)) fail("learning_rate", fmt::format("must be positive, found {}", base_lr));
  if (warmup_steps < 0) fail("lr_warmup_steps", fmt::format("must be >= 0, found {}", warmup_steps));
  if (total_steps && *total_steps < 0) fail("max_train_steps", fmt::format("must be >= 0, found {}", *total_steps));
  if (needs_total(type)) {
    if (!total_steps) fail("max_train_steps", fmt::format("lr_scheduler \"{}\" needs the total number of steps", name()));
    // diffusers does not check this; its curves are then meaningless (cosine alternates
    // between 1 and 0 after warmup, linear drops from 1 to 0 in one step).
    if (warmup_steps > *total_steps) {
      fail("lr_warmup_steps", fmt::format("{} is longer than max_train_steps {}: lr_scheduler \"{}\" would never "
                                          "decay",
                                          warmup_steps, *total_steps, name()));
    }
  }
  if (type == LrScheduleType::kCosineWithRestarts && num_cycles < 1) {
    fail("lr_num_cycles", fmt::format("must be >= 1, found {}", num_cycles));
  }
  if (type == LrScheduleType::kPolynomial) {
    if (!(std::isfinite(power) && power > 0)) fail("lr_power", fmt::format("must be positive, found {}", power));
    if (!(std::isfinite(lr_end) && lr_end >= 0)) fail("lr_end", fmt::format("must be >= 0, found {}", lr_end));
    // The same check and wording as diffusers' get_polynomial_decay_schedule_with_warmup.
    if (!(base_lr > lr_end)) {
      fail("learning_rate", fmt::format("lr_end ({}) must be smaller than initial lr ({})", lr_end, base_lr));
    }
    // diffusers divides by T - W, so W == T raises ZeroDivisionError at step T.
    if (warmup_steps == *total_steps) {
      fail("lr_warmup_steps", fmt::format("equals max_train_steps {}: the polynomial decay needs at least one step",
                                          *total_steps));
    }
  }
  if (type == LrScheduleType::kConstantWithWarmup && total_steps && warmup_steps > *total_steps) {
    spdlog::warn("{}: lr_warmup_steps {} is longer than max_train_steps {}: the lr never reaches learning_rate",
                 source, warmup_steps, *total_steps);
  }
}

double LrSchedule::multiplier(std::int64_t step) const {
  if (step < 0) throw Error(fmt::format("LR schedule: step must be >= 0, found {}", step));
  // Each branch mirrors diffusers' lambda, operation for operation, in double precision.
  if (type == LrScheduleType::kConstant) return 1.0;
  if (step < warmup_steps) return static_cast<double>(step) / static_cast<double>(std::max<std::int64_t>(1, warmup_steps));
  if (type == LrScheduleType::kConstantWithWarmup) return 1.0;
  if (!total_steps) throw Error(fmt::format("LR schedule: lr_scheduler \"{}\" needs max_train_steps", name()));
  const std::int64_t total = *total_steps;
  const auto progress_since_warmup = [&] {
    return static_cast<double>(step - warmup_steps) / static_cast<double>(std::max<std::int64_t>(1, total - warmup_steps));
  };
  switch (type) {
    case LrScheduleType::kLinear: {
      const double progress =
          static_cast<double>(total - step) / static_cast<double>(std::max<std::int64_t>(1, total - warmup_steps));
      return 0.0 + (1.0 - 0.0) * std::max(0.0, progress);  // f_min = 0, f_max = 1
    }
    case LrScheduleType::kCosine: {
      const double num_cycles_cosine = 0.5;  // get_scheduler never passes num_cycles to cosine
      return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * num_cycles_cosine * 2.0 * progress_since_warmup())));
    }
    case LrScheduleType::kCosineWithRestarts: {
      const double progress = progress_since_warmup();
      if (progress >= 1.0) return 0.0;
      // Python's % equals fmod for the non-negative operands here.
      return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * std::fmod(static_cast<double>(num_cycles) * progress, 1.0))));
    }
    case LrScheduleType::kPolynomial: {
      if (step > total) return lr_end / base_lr;
      const double lr_range = base_lr - lr_end;
      const std::int64_t decay_steps = total - warmup_steps;
      if (decay_steps <= 0) throw Error("LR schedule: polynomial decay with lr_warmup_steps >= max_train_steps");
      const double pct_remaining = 1.0 - static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps);
      const double decay = lr_range * std::pow(pct_remaining, power) + lr_end;
      return decay / base_lr;
    }
    default:
      break;
  }
  throw Error(fmt::format("LR schedule: unhandled lr_scheduler \"{}\"", name()));
}

std::string LrSchedule::summary() const {
  std::string text = fmt::format("{}, lr {}", name(), base_lr);
  if (type != LrScheduleType::kConstant) text += fmt::format(", warmup {}", warmup_steps);
  if (needs_total(type) && total_steps) text += fmt::format(", total {}", *total_steps);
  if (type == LrScheduleType::kCosineWithRestarts) text += fmt::format(", cycles {}", num_cycles);
  if (type == LrScheduleType::kPolynomial) text += fmt::format(", power {}, lr_end {}", power, lr_end);
  return text;
}

double original_multiplier(const LrSchedule& schedule, std::int64_t k, const OriginalScheduling& how) {
  if (how.num_processes < 1) throw Error(fmt::format("num_processes must be >= 1, found {}", how.num_processes));
  const std::int64_t n = how.num_processes;
  LrSchedule built = schedule;
  if (how.script_scales_steps) {
    built.warmup_steps *= n;
    if (built.total_steps) *built.total_steps *= n;
  }
  // accelerate's AcceleratedScheduler.step(): once per update with split_batches, else N times.
  const std::int64_t scheduler_steps = how.split_batches ? k : k * n;
  return built.multiplier(scheduler_steps);
}

}  // namespace lisadiff::train
