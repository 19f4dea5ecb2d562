// What the kernels share, once: fp32/bf16 stores and 4-wide loads, the grid-stride loop, the grid
// of a grid-stride launch, and the layout of a deterministic reduction's workspace (grid_sum.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>

#include "kernels/cuda_check.hpp"

namespace cufm::cuda {

// ---- element access ---------------------------------------------------------------------------
// Activations and GEMM operands are fp32 or bf16; the arithmetic is always fp32, and a bf16 store
// rounds to nearest even once.
__device__ __forceinline__ void store(float* p, float v) {
  *p = v;
}
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}
__device__ __forceinline__ float to_float(float v) {
  return v;
}
__device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

struct alignas(8) Bf16x4 {
  __nv_bfloat162 lo, hi;
};

// Four consecutive elements: p must be 16-byte (fp32) or 8-byte (bf16) aligned.
__device__ __forceinline__ float4 load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
  const Bf16x4 v = *reinterpret_cast<const Bf16x4*>(p);
  const float2 lo = __bfloat1622float2(v.lo), hi = __bfloat1622float2(v.hi);
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}
__device__ __forceinline__ void store4(float* p, float4 v) {
  *reinterpret_cast<float4*>(p) = v;
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, float4 v) {
  Bf16x4 o;
  o.lo = __floats2bfloat162_rn(v.x, v.y);
  o.hi = __floats2bfloat162_rn(v.z, v.w);
  *reinterpret_cast<Bf16x4*>(p) = o;
}

// ---- the grid-stride loop ---------------------------------------------------------------------
// for (int64_t i : grid_stride(n)) visits this thread's indices i = global thread id + k * grid
// size below n, in 64-bit arithmetic (n may exceed 2^31).
class GridStride {
 public:
  struct Iterator {
    int64_t i, step;
    __device__ int64_t operator*() const { return i; }
    __device__ Iterator& operator++() {
      i += step;
      return *this;
    }
    __device__ bool operator!=(const Iterator& end) const { return i < end.i; }
  };
  __device__ explicit GridStride(int64_t n) : n_(n) {}
  __device__ Iterator begin() const {
    return {static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
            static_cast<int64_t>(gridDim.x) * blockDim.x};
  }
  __device__ Iterator end() const { return {n_, 0}; }

 private:
  int64_t n_;
};
__device__ __forceinline__ GridStride grid_stride(int64_t n) {
  return GridStride(n);
}

// Whether p meets the vector loads' alignment (16 bytes for float4, 8 for four bf16). Host code.
inline bool aligned_to(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Blocks for `work` items at `threads` per block: at least 1, at most max_blocks (the rest is
// covered by the grid-stride loop). Host code.
inline int grid_for(int64_t work, int threads, int max_blocks) {
  return static_cast<int>(std::clamp<int64_t>((work + threads - 1) / threads, 1, max_blocks));
}

// ---- deterministic reductions (grid_sum.cuh) ----------------------------------------------------
// A workspace holds the arrival counter at byte 0 and the blocks' double partial sums from byte
// 256; it is zeroed once when allocated and every launch leaves the counter at zero again.
constexpr size_t kReductionPartialsOffset = 256;

constexpr size_t reduction_workspace_bytes(int max_blocks) {
  return kReductionPartialsOffset + sizeof(double) * static_cast<size_t>(max_blocks);
}

struct ReductionWorkspace {
  unsigned int* counter;
  double* partials;
};

inline ReductionWorkspace reduction_workspace(void* workspace) {
  return {static_cast<unsigned int*>(workspace),
          reinterpret_cast<double*>(static_cast<char*>(workspace) + kReductionPartialsOffset)};
}

// ---- dynamic shared memory -------------------------------------------------------------------
// Opts Kernel in to all the dynamic shared memory a block may have on the current device (the
// opt-in limit less the kernel's static shared memory), once per device, and returns that limit in
// bytes. cudaFuncAttributeMaxDynamicSharedMemorySize belongs to the kernel, not to a launch: set per
// launch to that launch's size, a smaller launch (another trainer's, on another thread) could lower
// it under a larger one, or under a graph captured with it. Call it outside stream capture first
// (the launchers' tile choices do).
template <auto Kernel>
int64_t opt_in_dynamic_smem() {
  static std::mutex mutex;
  static std::map<int, int64_t> limits;  // per device
  int device = 0;
  CUFM_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = limits.find(device);
  if (it != limits.end()) return it->second;
  int optin = 0;
  CUFM_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes attributes{};
  CUFM_CUDA_CHECK(cudaFuncGetAttributes(&attributes, Kernel));
  const int64_t limit = static_cast<int64_t>(optin) - static_cast<int64_t>(attributes.sharedSizeBytes);
  CUFM_CUDA_CHECK(
      cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(limit)));
  limits.emplace(device, limit);
  return limit;
}

}  // namespace cufm::cuda
