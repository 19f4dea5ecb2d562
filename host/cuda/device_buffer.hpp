// An owning device allocation (internal): zero-filled at creation (in stream order when given a
// stream), freed at destruction, with an out-of-memory message that says what was being allocated
// and how much memory is free.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdio>
#include <utility>

#include "kernels/cuda_check.hpp"

namespace cufm::cuda {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // Zero-filled on `stream`, in stream order: work queued on that stream afterwards sees zeros,
  // and nothing waits (stream nullptr: the legacy default stream, still asynchronous). Without a
  // stream argument (setup code, benchmarks, tests) the zero fill is finished before the
  // constructor returns, so every stream sees it.
  DeviceBuffer(size_t bytes, const char* what, cudaStream_t stream) : bytes_(bytes) {
    allocate(what, &stream);
  }
  DeviceBuffer(size_t bytes, const char* what) : bytes_(bytes) { allocate(what, nullptr); }
  ~DeviceBuffer() {
    if (ptr_ && cudaFree(ptr_) != cudaSuccess) {
      (void)cudaGetLastError();
      std::fprintf(stderr,
                   "cufm: warning: cudaFree failed in ~DeviceBuffer\n");  // destructors log, never throw
    }
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      DeviceBuffer tmp(std::move(*this));
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void allocate(const char* what, const cudaStream_t* stream) {
    if (bytes_ == 0) return;
    const cudaError_t e = cudaMalloc(&ptr_, bytes_);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      ptr_ = nullptr;
      size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      (void)cudaGetLastError();
      CUFM_FAIL("cannot allocate " << (bytes_ >> 20) << " MiB of GPU memory for " << what << " ("
                                   << cudaGetErrorName(e) << "; " << (free_b >> 20) << " of "
                                   << (total_b >> 20)
                                   << " MiB free): reduce the batch size, the sample count, the dataset or "
                                      "the model, or use device 'cpu'");
    }
    try {
      if (stream) {
        CUFM_CUDA_CHECK(cudaMemsetAsync(ptr_, 0, bytes_, *stream));
      } else {
        CUFM_CUDA_CHECK(cudaMemset(ptr_, 0, bytes_));
        CUFM_CUDA_CHECK(cudaStreamSynchronize(nullptr));  // non-blocking streams do not wait for it
      }
    } catch (...) {
      (void)cudaFree(ptr_);  // the destructor will not run for a constructor that throws
      ptr_ = nullptr;
      throw;
    }
  }

  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// The device current in the calling thread.
inline int current_device() {
  int d = 0;
  CUFM_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

// Makes `device` current for a scope and restores the caller's device after it, so that an object
// owning device resources (trainer, sampler) runs on the GPU it was created on whatever device is
// current when it is called. In destructors, pass or_throw = false: a failure is then ignored.
class DeviceScope {
 public:
  explicit DeviceScope(int device, bool or_throw = true) {
    const cudaError_t got = cudaGetDevice(&previous_);
    if (got == cudaSuccess && previous_ == device) return;
    const cudaError_t set = got == cudaSuccess ? cudaSetDevice(device) : got;
    if (set == cudaSuccess) {
      switched_ = true;
    } else if (or_throw) {
      CUFM_CUDA_CHECK(set);
    } else {
      (void)cudaGetLastError();
    }
  }
  ~DeviceScope() {
    if (switched_ && cudaSetDevice(previous_) != cudaSuccess) (void)cudaGetLastError();
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// An owning stream (internal).
class Stream {
 public:
  Stream() { CUFM_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() { reset(); }
  // Destroys the stream now (its owner does it under its own device's scope).
  void reset() {
    if (s_ && cudaStreamDestroy(s_) != cudaSuccess) (void)cudaGetLastError();
    s_ = nullptr;
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

}  // namespace cufm::cuda
