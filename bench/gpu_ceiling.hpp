// GPU timing with CUDA events and the GPU ceilings (built only with the CUDA backend).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>

#include "bench/bench_common.hpp"

namespace cufm::bench {

// Times work enqueued on its own stream with a pair of CUDA events per repeat, after warm-up.
class GpuTimer {
 public:
  GpuTimer();
  ~GpuTimer();
  GpuTimer(const GpuTimer&) = delete;
  GpuTimer& operator=(const GpuTimer&) = delete;

  cudaStream_t stream() const { return stream_; }
  // `before` runs before each repeat outside the timed interval (an L2 flush, a reset), may be empty.
  Stats time(int warmup, int repeats, const std::function<void(cudaStream_t)>& before,
             const std::function<void(cudaStream_t)>& work);

 private:
  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// Device-to-device cudaMemcpy of `bytes`; *gbs = (read + written bytes) / median time.
Stats gpu_memcpy_d2d(size_t bytes, int repeats, double* gbs);

}  // namespace cufm::bench
