// The lcm_distill executable and its step: see below.
#include <gtest/gtest.h>

#include "recipes/lcm_distill.h"
#include "test_util.h"

namespace lisadiff {
namespace {

TEST(LcmDistillLoss, HuberAndL2) {
  const auto a = torch::tensor({0.0f, 0.0f}), b = torch::tensor({1e-3f, 0.1f});
  EXPECT_NEAR(recipes::lcm_loss(a, b, recipes::LcmLossType::kHuber, 1e-3).item<double>(),
              (4.1421356e-4 + 0.09900500) / 2, 1e-8);
  EXPECT_NEAR(recipes::lcm_loss(a, b, recipes::LcmLossType::kL2, 1e-3).item<double>(), (1e-6 + 1e-2) / 2, 1e-9);
}

}  // namespace
}  // namespace lisadiff
