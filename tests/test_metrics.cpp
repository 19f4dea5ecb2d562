// Sliced Wasserstein-2 and energy distance on sets with known distances.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "cufm/cufm.hpp"

namespace {

using namespace cufm;

std::vector<float> gaussian(int64_t n, int dim, uint64_t seed) {
  std::vector<float> x(n * dim);
  sampler_noise(seed, 0, n, dim, x.data());
  return x;
}

TEST(SlicedW2, ZeroForIdenticalSets) {
  const auto a = gaussian(500, 3, 1);
  EXPECT_EQ(sliced_wasserstein2(a.data(), 500, a.data(), 500, 3), 0.0);
}

TEST(SlicedW2, ShiftGivesNormOverSqrtDim) {
  // Shifting by c moves each projection by u.c: SW2^2 = E[(u.c)^2] = |c|^2 / dim.
  const int dim = 2;
  auto a = gaussian(2000, dim, 3);
  auto b = a;
  for (int64_t i = 0; i < 2000; ++i) {
    b[i * dim] += 3.0f;
    b[i * dim + 1] += 4.0f;
  }
  EXPECT_NEAR(sliced_wasserstein2(a.data(), 2000, b.data(), 2000, dim, 512), 5.0 / std::sqrt(2.0), 0.25);
}

TEST(EnergyDistance, OneDimensionalByHand) {
  // X = {0}, Y = {1}: 2*1 - 0 - 0 = 2.
  const float a[] = {0.0f}, b[] = {1.0f};
  EXPECT_DOUBLE_EQ(energy_distance(a, 1, b, 1, 1), 2.0);
  // X = {0, 2}, Y = {1}: E|X-Y| = 1, E|X-X'| = (0 + 2 + 2 + 0)/4 = 1, E|Y-Y'| = 0: 2 - 1 = 1.
  const float c[] = {0.0f, 2.0f};
  EXPECT_DOUBLE_EQ(energy_distance(c, 2, b, 1, 1), 1.0);
}

TEST(EnergyDistance, SeparatesDistributions) {
  const auto a = gaussian(1000, 2, 5), b = gaussian(1000, 2, 6);
  auto c = b;
  for (float& v : c) v *= 2.0f;
  const double same = energy_distance(a.data(), 1000, b.data(), 1000, 2);
  const double diff = energy_distance(a.data(), 1000, c.data(), 1000, 2);
  EXPECT_LT(same, 0.02);
  EXPECT_GT(diff, 10 * same);
}

TEST(Metrics, RejectBadInput) {
  const float a[] = {0.0f, NAN};
  const float b[] = {0.0f, 1.0f};
  EXPECT_THROW(sliced_wasserstein2(a, 1, b, 1, 2), Error);
  EXPECT_THROW(energy_distance(b, 0, b, 1, 2), Error);
}

}  // namespace
