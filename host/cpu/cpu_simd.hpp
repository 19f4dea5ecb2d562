// Runtime dispatch for the CPU backend's elementwise loops: an AVX2+FMA clone beside the baseline
// x86-64 one, chosen at load time (GCC target_clones), so one binary runs everywhere and uses the
// wide units where they exist. The BLAS does its own dispatch.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define CUFM_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CUFM_SIMD_CLONES
#endif
