// What the sampling-scheduler tests share: the fixtures scripts/make_scheduler_fixtures.py
// writes (tests/fixtures/schedulers/sampling.*), the error measure they record, and the
// script's seeded generators.
#pragma once

#include <fmt/format.h>

#include <ATen/CPUGeneratorImpl.h>

#include <numeric>
#include <string>

#include "io/safetensors.h"
#include "test_util.h"

namespace lisadiff::testing {

inline const io::SafetensorsReader& sampling_ref() {
  static io::SafetensorsReader r(fixtures_dir() / "schedulers/sampling.safetensors");
  return r;
}

// sampling.json: one object per scheduler ("ddim", "euler", "lcm"), keyed by case name.
inline const nlohmann::ordered_json& sampling_json() {
  static const auto json = read_json(fixtures_dir() / "schedulers/sampling.json");
  return json;
}

inline double max_abs_error(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// Measured errors are recorded as test properties (see --gtest_output=json).
inline std::string show(double error) { return fmt::format("{:.3g}", error); }

// The fixture script's seeded(): a CPU generator seeded with the sum of the name's
// characters. Must match scripts/make_scheduler_fixtures.py.
inline at::Generator seeded(const std::string& name) {
  return at::detail::createCPUGenerator(std::accumulate(name.begin(), name.end(), uint64_t{0}));
}

}  // namespace lisadiff::testing
