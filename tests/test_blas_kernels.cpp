// OpenBLAS runs kernels as new as the CPU allows: a DYNAMIC_ARCH OpenBLAS older than the CPU may
// pick its SSE3 kernels (Debian 12's 0.3.21 on an Emerald Rapids Xeon), and cuFM asks it to choose
// again (host/cpu/cpu_blas.cpp). Skipped, with the reason, where the check cannot apply.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "cufm/device.hpp"
#include "cufm/model.hpp"
#include "host/cpu/cpu_ops.hpp"

namespace {

// Read before any cuFM call can set it.
const char* const g_user_coretype = std::getenv("OPENBLAS_CORETYPE");

TEST(BlasKernels, NotOlderThanTheCpu) {
  if (g_user_coretype && *g_user_coretype)
    GTEST_SKIP() << "OPENBLAS_CORETYPE=" << g_user_coretype << " is the user's";
  // A forward pass: the first BLAS call (and it links OpenBLAS into this test).
  cufm::MlpConfig m;
  m.hidden = {16};
  const cufm::Model model(m, 1);
  const float x[2] = {0.5f, -0.5f}, t[1] = {0.3f};
  float v[2];
  model.forward(x, t, nullptr, 1, v);
  using CoreName = char* (*)();
  auto corename = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (!corename) GTEST_SKIP() << "the BLAS is not OpenBLAS";
  if (!dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init")) GTEST_SKIP() << "OpenBLAS is not a DYNAMIC_ARCH build";
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
    GTEST_SKIP() << "the CPU has no AVX2/FMA";
  const std::string note = cufm::cpu::blas_kernels();
  const std::string now = corename();
  for (const char* old : {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Sandybridge"}) {
    EXPECT_NE(now, old) << "OpenBLAS runs its " << now << " kernels on a CPU with AVX2: " << note;
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    EXPECT_NE(now, "Haswell") << "AVX-512 CPU, AVX2 kernels: " << note;
  }
  EXPECT_NE(cufm::build_summary().find(now + " kernels"), std::string::npos) << cufm::build_summary();
}

}  // namespace
