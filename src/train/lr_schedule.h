// Learning-rate schedules as pure functions of the global optimizer step.
//
// The multipliers are those of diffusers' `get_scheduler` (src/diffusers/optimization.py),
// which wraps each one in a torch LambdaLR: lr(s) = base_lr * multiplier(s), where s is the
// number of optimizer updates already taken. Update k+1 therefore uses lr(k); the first
// update uses lr(0), which is 0 for every schedule with warmup W > 0 (recipes.md §1.4).
//
// Units: optimizer steps (one per gradient-accumulation window), never micro-batches, and
// never multiplied by the number of processes (see OriginalScheduling below for why the
// curve is still the originals').
//
// There is no state: every parameter's lr follows the *global* step. A tensor that LISA
// activates at step 5000 simply gets lr(5000); it does not re-run warmup from lr(0) as the
// original's per-tensor LambdaLR objects do (lisa.md §3).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config/json_fields.h"

namespace lisadiff::train {

enum class LrScheduleType {
  kConstant,            // 1, ignores warmup (as diffusers: the default lr_warmup_steps=500 has no effect)
  kConstantWithWarmup,  // s/W during warmup, then 1
  kLinear,              // warmup, then linear decay to 0 at T
  kCosine,              // warmup, then half a cosine to 0 at T (diffusers' num_cycles 0.5, fixed)
  kCosineWithRestarts,  // warmup, then num_cycles hard-restarted cosines, 0 from T on
  kPolynomial,          // warmup, then (lr - lr_end) * remaining^power + lr_end; lr_end after T
};

// Field names are those of the diffusers scripts' flags, which the recipe configs reuse.
struct LrSchedule {
  LrScheduleType type = LrScheduleType::kConstant;  // "lr_scheduler"
  double base_lr = 1e-4;                            // "learning_rate"
  std::int64_t warmup_steps = 500;                  // "lr_warmup_steps" (the scripts' default)
  // "max_train_steps": required by linear, cosine, cosine_with_restarts and polynomial.
  std::optional<std::int64_t> total_steps;
  int num_cycles = 1;     // "lr_num_cycles": cosine_with_restarts only
  double power = 1.0;     // "lr_power": polynomial only
  double lr_end = 1e-7;   // "lr_end": polynomial only; diffusers' scripts cannot change it

  // "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial".
  static const std::vector<std::string>& known_names();
  // The type for a diffusers scheduler name. Throws lisadiff::Error listing the known names
  // for an unknown one, and saying that "piecewise_constant" is not supported.
  static LrScheduleType type_from_name(const std::string& name);
  static std::string name_of(LrScheduleType type);
  // A schedule of that type with the other fields at their defaults (not validated: a
  // decaying type still needs total_steps).
  static LrSchedule from_name(const std::string& name);

  // Reads the schedule's keys from `json` (an object; keys it does not know are reported in
  // one warning) and validates. Errors name `source`, the key and the problem.
  static LrSchedule from_json(const config::Json& json, const std::string& source);
  // The same from a reader shared with a bigger config (a recipe), which claims the keys;
  // the caller reports the keys nobody claimed. Validates.
  static LrSchedule read(config::FieldReader& reader);
  config::Json to_json() const;

  std::string name() const { return name_of(type); }
  // Throws lisadiff::Error "<source>: field '<key>': <problem>" (source "LR schedule" when
  // empty) for negative steps, a missing or too short total for the decaying schedules,
  // lr <= lr_end for polynomial, a non-positive or non-finite lr, num_cycles < 1, power <= 0.
  // Warns when constant_with_warmup's warmup is longer than the run.
  void validate(const std::string& source = "") const;

  // The LambdaLR multiplier after `step` optimizer updates (step >= 0, may exceed the total).
  // Computed with the same double operations, in the same order, as diffusers' lambdas, so
  // it matches them to the last bit on the same libm. Throws lisadiff::Error for step < 0.
  double multiplier(std::int64_t step) const;
  // base_lr * multiplier(step): the lr of update step+1 (what get_last_lr() logs after `step`).
  double lr(std::int64_t step) const { return base_lr * multiplier(step); }

  std::string summary() const;
};

// How the Python originals drive their LambdaLR under accelerate with N processes
// (recipes.md §1.1), for comparing curves. lisadiff's schedules count optimizer steps, so
// lisadiff never multiplies warmup/total by num_processes: the originals multiply W and T
// by N *and* the accelerate wrapper advances the LambdaLR N times per optimizer update, so
// their per-update curve is exactly lisadiff's LrSchedule::multiplier(k) for any N.
// The one combination that differs is L-LCM's: split_batches (one scheduler step per
// update) with W·N and T·N, which stretches the curve by N, a defect lisadiff does not copy.
struct OriginalScheduling {
  int num_processes = 1;
  bool split_batches = false;       // LCM: the wrapper steps once per update, not N times
  bool script_scales_steps = true;  // IP2P, DPO and every LISA variant pass W·N and T·N
};

// The multiplier that the original applies to optimizer update k+1 (k updates taken) when
// it builds `schedule` and runs as `how` says. Throws lisadiff::Error for num_processes < 1.
double original_multiplier(const LrSchedule& schedule, std::int64_t k, const OriginalScheduling& how);

}  // namespace lisadiff::train
