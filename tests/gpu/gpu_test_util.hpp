// Helpers for the GPU tests: skip without a device, small sizes under compute-sanitizer
// (CUFM_TEST_SMALL=1), device arrays poisoned with NaN, and comparisons that name the worst element.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cufm/device.hpp"
#include "kernels/cuda_check.hpp"
#include "test_util.hpp"

// Skips without a GPU, with the reason; fails instead when CUFM_EXPECT_GPU=1 (set it on GPU CI,
// as bench/gpu-check.sh does, so that a broken driver or runtime cannot turn the suite green).
#define CUFM_REQUIRE_GPU()                                                                      \
  do {                                                                                          \
    if (::cufm::cuda_devices().empty()) {                                                       \
      const char* expect = std::getenv("CUFM_EXPECT_GPU");                                      \
      if (expect && std::string(expect) == "1") {                                               \
        FAIL() << "CUFM_EXPECT_GPU=1 but the CUDA runtime sees no device (driver, runtime or "  \
                  "CUDA_VISIBLE_DEVICES problem)";                                              \
      }                                                                                         \
      GTEST_SKIP() << "no CUDA device visible (driver missing or CUDA_VISIBLE_DEVICES empty): " \
                      "GPU tests need one";                                                     \
    }                                                                                           \
  } while (0)

namespace cufm::test {

// Smaller problems for slow runs (compute-sanitizer): CUFM_TEST_SMALL=1.
inline bool small_run() {
  const char* v = std::getenv("CUFM_TEST_SMALL");
  return v && *v && std::strcmp(v, "0") != 0;
}
inline int pick(int normal, int small) {
  return small_run() ? small : normal;
}

// A device array of T, filled with NaN bits (0xFF bytes) unless given data.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) {
    CUFM_CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(1, n) * sizeof(T)));
    poison();
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { upload(host); }
  ~DeviceArray() { cudaFree(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  void poison() { CUFM_CUDA_CHECK(cudaMemset(p_, 0xFF, std::max<size_t>(1, n_) * sizeof(T))); }
  void zero() { CUFM_CUDA_CHECK(cudaMemset(p_, 0, std::max<size_t>(1, n_) * sizeof(T))); }
  void upload(const std::vector<T>& host) {
    CUFM_CUDA_CHECK(
        cudaMemcpy(p_, host.data(), std::min(n_, host.size()) * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    CUFM_CUDA_CHECK(cudaDeviceSynchronize());
    CUFM_CUDA_CHECK(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

inline std::vector<float> to_float(const std::vector<__nv_bfloat16>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = __bfloat162float(v[i]);
  return f;
}

inline float bf16_round(float x) {
  return __bfloat162float(__float2bfloat16_rn(x));
}

// Bitwise equality of two float arrays; names the first difference.
inline ::testing::AssertionResult bits_equal(const float* got, const float* want, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (std::memcmp(got + i, want + i, sizeof(float)) != 0) {
      return ::testing::AssertionFailure()
             << "first difference at element " << i << ": expected " << want[i] << ", got " << got[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// CUFM_GPU_MLP set for one scope (the sampler and the log-likelihoods read it at each call), then as it was.
class GpuMlpEnv {
 public:
  explicit GpuMlpEnv(const char* value) {
    const char* old = std::getenv("CUFM_GPU_MLP");
    had_ = old != nullptr;
    if (had_) old_ = old;
    setenv("CUFM_GPU_MLP", value, 1);
  }
  ~GpuMlpEnv() {
    if (had_) {
      setenv("CUFM_GPU_MLP", old_.c_str(), 1);
    } else {
      unsetenv("CUFM_GPU_MLP");
    }
  }

 private:
  bool had_ = false;
  std::string old_;
};

}  // namespace cufm::test
