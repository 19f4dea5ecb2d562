// Philox4x32-10 against the published known-answer vectors, and the deterministic transcendental
// functions and normals built on it.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "cufm/detail/math.hpp"
#include "cufm/detail/philox.hpp"

namespace {

using cufm::Philox4x32;

// Salmon et al., SC'11: the known-answer vectors published with Random123 (kat_vectors).
TEST(Philox, KnownAnswerVectors) {
  struct Kat {
    uint32_t ctr[4], key[2], out[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) {
    const Philox4x32 r =
        cufm::hd::philox4x32<10>(Philox4x32{{k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3]}}, k.key[0], k.key[1]);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(r.v[i], k.out[i]) << "word " << i;
  }
}

TEST(Philox, CounterMapIsSeedStepSampleBlock) {
  const Philox4x32 a = cufm::rng::draw(0x123456789abcdefull, 77, 5, 2);
  const Philox4x32 b = cufm::hd::philox4x32<10>(Philox4x32{{2, 5, 77, 0}}, 0x89abcdefu, 0x01234567u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(a.v[i], b.v[i]);
  const Philox4x32 c = cufm::rng::draw(0x123456789abcdefull, 78, 5, 2);
  EXPECT_NE(a.v[0], c.v[0]);
}

TEST(DeterministicMath, LogMatchesLibm) {
  double worst = 0.0;
  for (uint32_t i = 1; i < (1u << 24); i += 97) {
    const float u = static_cast<float>(i) * 5.9604644775390625e-8f;
    worst = std::max(worst, std::abs(cufm::hd::det_log(u) - std::log(static_cast<double>(u))));
  }
  EXPECT_LT(worst, 3e-6);  // absolute, over log values down to -16.6
  EXPECT_EQ(cufm::hd::det_log(1.0f), 0.0f);
}

TEST(DeterministicMath, ExpMatchesLibm) {
  for (float x = -80.0f; x < 80.0f; x += 0.0137f) {
    const double want = std::exp(static_cast<double>(x));
    EXPECT_NEAR(cufm::hd::det_exp(x) / want, 1.0, 1e-6) << "x = " << x;
  }
}

TEST(DeterministicMath, SinCosTurnsMatchLibm) {
  for (int i = 0; i < 100000; ++i) {
    const float turns = static_cast<float>(i) / 100000.0f;
    float s, c;
    cufm::hd::det_sincos_turns(turns, s, c);
    const double a = 2.0 * M_PI * static_cast<double>(turns);
    ASSERT_NEAR(s, std::sin(a), 3e-7) << "turns = " << turns;
    ASSERT_NEAR(c, std::cos(a), 3e-7) << "turns = " << turns;
  }
}

TEST(Normals, MomentsOfStandardNormal) {
  const int n = 1 << 20;
  double s1 = 0, s2 = 0, s4 = 0;
  int beyond3 = 0;
  for (int i = 0; i < n / 4; ++i) {
    float z[4];
    cufm::rng::normal4(42, 7, static_cast<uint32_t>(i), 0, z);
    for (float v : z) {
      s1 += v;
      s2 += static_cast<double>(v) * v;
      s4 += static_cast<double>(v) * v * v * v;
      beyond3 += std::abs(v) > 3.0f;
    }
  }
  const double mean = s1 / n, var = s2 / n - mean * mean, kurt = s4 / n;
  EXPECT_NEAR(mean, 0.0, 5.0 / std::sqrt(n));
  EXPECT_NEAR(var, 1.0, 5.0 * std::sqrt(2.0 / n));
  EXPECT_NEAR(kurt, 3.0, 5.0 * std::sqrt(96.0 / n));
  // P(|z| > 3) = 0.0026998
  EXPECT_NEAR(beyond3 / static_cast<double>(n), 0.0026998, 5.0 * std::sqrt(0.0027 / n));
}

TEST(Draws, UniformTimeAndIndexAreInRange) {
  std::vector<int> hist(10, 0);
  for (uint32_t i = 0; i < 100000; ++i) {
    const auto d = cufm::hd::draw_sample(3, 9, i, 10, cufm::TimeSampling::Uniform, 0, 1, 0.25f);
    ASSERT_GE(d.t, 0.0f);
    ASSERT_LT(d.t, 1.0f);
    ASSERT_LT(d.data_index, 10u);
    ++hist[d.data_index];
  }
  for (int h : hist) EXPECT_NEAR(h, 10000, 500);
}

}  // namespace
