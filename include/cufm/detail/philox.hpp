// Counter-based Philox4x32-10 (Salmon et al., SC'11) with Box-Muller, shared by both backends.
//
// Every random number cuFM draws is a pure function of (seed, stream, sample, block): the CPU
// backend and the kernels compute the same bits for the same training step, so the CUDA backend is
// tested against the CPU backend for exact equality, and a resumed run repeats an uninterrupted one.
#pragma once

#include <cstdint>

#include "cufm/detail/hd.hpp"

namespace cufm {

struct Philox4x32 {
  uint32_t v[4];
};

namespace hd {

CUFM_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Philox4x32 with R rounds; R = 10 is the published, Crush-resistant variant.
template <int R = 10>
CUFM_HD Philox4x32 philox4x32(Philox4x32 ctr, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < R; ++r) {
    if (r > 0) {
      key0 += kW0;
      key1 += kW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kM0, ctr.v[0], hi0, lo0);
    mulhilo32(kM1, ctr.v[2], hi1, lo1);
    ctr = Philox4x32{{hi1 ^ ctr.v[1] ^ key0, lo1, hi0 ^ ctr.v[3] ^ key1, lo0}};
  }
  return ctr;
}

// ---- deterministic transcendental functions -------------------------------------------------
// Written with single IEEE operations only so that the host and the device agree to the bit.
// Accuracy is a few ulp, far below what sampling noise or time features need.

// Natural log for x in (0, 1] (what Box-Muller needs) and beyond, for finite positive normal x.
CUFM_HD float det_log(float x) {
  // x = m * 2^e with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.172.
  uint32_t bits = float_to_bits(x);
  int e = static_cast<int>((bits >> 23) & 0xFFu) - 127;
  bits = (bits & 0x007FFFFFu) | 0x3F800000u;  // m in [1, 2)
  float m = bits_to_float(bits);
  if (m > 1.41421356f) {
    m = rn_mul(m, 0.5f);
    e += 1;
  }
  const float s = rn_div(rn_sub(m, 1.0f), rn_add(m, 1.0f));
  const float s2 = rn_mul(s, s);
  // 2*(s + s^3/3 + s^5/5 + s^7/7 + s^9/9): the next term is < 1e-9 relative.
  float p = rn_fma(s2, 2.0f / 9.0f, 2.0f / 7.0f);
  p = rn_fma(p, s2, 2.0f / 5.0f);
  p = rn_fma(p, s2, 2.0f / 3.0f);
  p = rn_fma(p, s2, 2.0f);
  const float log_m = rn_mul(p, s);
  return rn_fma(static_cast<float>(e), 0.693147180559945f, log_m);
}

// exp(x), clamped to the finite float range.
CUFM_HD float det_exp(float x) {
  if (x > 88.0f) x = 88.0f;
  if (x < -87.0f) x = -87.0f;
  // x = k ln2 + r, |r| <= ln2/2; ln2 split in two so that k*ln2_hi is exact.
  const float kf = static_cast<float>(static_cast<int>(rn_fma(x, 1.44269504f, x >= 0.0f ? 0.5f : -0.5f)));
  float r = rn_fma(-kf, 0.693145751953125f, x);
  r = rn_fma(-kf, 1.428606765330187e-06f, r);
  // Taylor to r^8/8!: error < (0.347^9/9!) ~ 2e-10 relative.
  float p = 1.0f / 40320.0f;
  p = rn_fma(p, r, 1.0f / 5040.0f);
  p = rn_fma(p, r, 1.0f / 720.0f);
  p = rn_fma(p, r, 1.0f / 120.0f);
  p = rn_fma(p, r, 1.0f / 24.0f);
  p = rn_fma(p, r, 1.0f / 6.0f);
  p = rn_fma(p, r, 0.5f);
  p = rn_fma(p, r, 1.0f);
  p = rn_fma(p, r, 1.0f);
  const int k = static_cast<int>(kf);
  return rn_mul(p, bits_to_float(static_cast<uint32_t>(k + 127) << 23));
}

// sin and cos of 2*pi*turns for turns in [0, 1).
CUFM_HD void det_sincos_turns(float turns, float& s, float& c) {
  const float q4 = rn_mul(turns, 4.0f);                // exact
  const int quadrant = static_cast<int>(q4);           // 0..3
  float f = rn_sub(q4, static_cast<float>(quadrant));  // exact, in [0, 1)
  const bool swap = f > 0.5f;
  if (swap) f = rn_sub(1.0f, f);  // exact; angle now in [0, pi/4]
  const float a = rn_mul(f, 1.57079632679f);
  const float a2 = rn_mul(a, a);
  // Taylor series to a^11 / a^12: error < (pi/4)^13/13! ~ 7e-12.
  float ps = -1.0f / 39916800.0f;
  ps = rn_fma(ps, a2, 1.0f / 362880.0f);
  ps = rn_fma(ps, a2, -1.0f / 5040.0f);
  ps = rn_fma(ps, a2, 1.0f / 120.0f);
  ps = rn_fma(ps, a2, -1.0f / 6.0f);
  ps = rn_fma(ps, a2, 1.0f);
  float sin_a = rn_mul(ps, a);
  float pc = 1.0f / 479001600.0f;
  pc = rn_fma(pc, a2, -1.0f / 3628800.0f);
  pc = rn_fma(pc, a2, 1.0f / 40320.0f);
  pc = rn_fma(pc, a2, -1.0f / 720.0f);
  pc = rn_fma(pc, a2, 1.0f / 24.0f);
  pc = rn_fma(pc, a2, -0.5f);
  float cos_a = rn_fma(pc, a2, 1.0f);
  if (swap) {
    const float tmp = sin_a;
    sin_a = cos_a;
    cos_a = tmp;
  }
  switch (quadrant) {
    case 0:
      s = sin_a;
      c = cos_a;
      break;
    case 1:
      s = cos_a;
      c = -sin_a;
      break;
    case 2:
      s = -sin_a;
      c = -cos_a;
      break;
    default:
      s = -cos_a;
      c = sin_a;
      break;
  }
}

// Uniform in [0, 1) with 24 random bits, and in (0, 1] for a logarithm's argument.
CUFM_HD float uniform01(uint32_t r) {
  return static_cast<float>(r >> 8) * 5.9604644775390625e-8f;
}
CUFM_HD float uniform01_open0(uint32_t r) {
  return static_cast<float>((r >> 8) + 1u) * 5.9604644775390625e-8f;
}

// Unbiased-enough index in [0, n) by a multiply-high (bias < n / 2^32).
CUFM_HD uint32_t uniform_index(uint32_t r, uint32_t n) {
  return static_cast<uint32_t>((static_cast<uint64_t>(r) * n) >> 32);
}

// Two standard normals from two random words.
CUFM_HD void box_muller(uint32_t r0, uint32_t r1, float& z0, float& z1) {
  const float u = uniform01_open0(r0);
  const float radius = rn_sqrt(rn_mul(-2.0f, det_log(u)));
  float s, c;
  det_sincos_turns(uniform01(r1), s, c);
  z0 = rn_mul(radius, c);
  z1 = rn_mul(radius, s);
}

}  // namespace hd

// ---- the counter map ----------------------------------------------------------------------
// key = seed; counter = {block, sample, stream_lo, stream_hi}. Streams: a training step's index
// (< 2^63), or one of the reserved streams below. Within a training step, block 0 of a sample
// carries its time, data index and label-dropout draw; block 1 + j its noise dims 4j..4j+3.
namespace rng {

constexpr uint64_t kSamplerNoiseStream = 0xFFFFFFFFFFFFFFFFull;
constexpr uint64_t kInitStream = 0xFFFFFFFFFFFFFFFEull;
constexpr uint64_t kMetricStream = 0xFFFFFFFFFFFFFFFDull;
constexpr uint64_t kDatasetStream = 0xFFFFFFFFFFFFFFFCull;
constexpr uint64_t kProbeStream = 0xFFFFFFFFFFFFFFFBull;  // Hutchinson's probes (cufm::log_prob)

CUFM_HD Philox4x32 draw(uint64_t seed, uint64_t stream, uint32_t sample, uint32_t block) {
  Philox4x32 ctr{{block, sample, static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)}};
  return hd::philox4x32<10>(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Four standard normals: dims 4*group .. 4*group+3 of a sample's noise in a stream.
CUFM_HD void normal4(uint64_t seed, uint64_t stream, uint32_t sample, uint32_t group, float z[4]) {
  const Philox4x32 r = draw(seed, stream, sample, group + 1u);
  hd::box_muller(r.v[0], r.v[1], z[0], z[1]);
  hd::box_muller(r.v[2], r.v[3], z[2], z[3]);
}

}  // namespace rng
}  // namespace cufm
