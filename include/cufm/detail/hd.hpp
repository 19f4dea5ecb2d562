// Portability macros and exactly-rounded arithmetic shared by the CPU backend and the kernels.
//
// Everything the two backends must compute bit for bit (the random streams, the path, the time
// features) is written with rn_mul/rn_add/rn_fma, which are single IEEE-754 operations on both
// sides: nvcc may not contract them into an FMA, and the host compiler may not either (cuFM builds
// its own sources with -ffp-contract=off).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CUFM_HD __host__ __device__ __forceinline__
#else
#define CUFM_HD inline
#endif

namespace cufm::hd {

CUFM_HD float rn_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

CUFM_HD float rn_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

CUFM_HD float rn_sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

CUFM_HD float rn_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

CUFM_HD float rn_div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

CUFM_HD float rn_sqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

CUFM_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
#endif
}

CUFM_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  return u;
#endif
}

}  // namespace cufm::hd
