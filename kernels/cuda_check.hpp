// Checking macros for the CUDA runtime and cuBLASLt (internal). Each failure throws cufm::Error
// naming the file, the line, the failing call, the library's own message and what to try.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "cufm/error.hpp"

namespace cufm::detail {

// A sentence of advice for the common failure modes.
inline const char* cuda_advice(cudaError_t e) {
  switch (e) {
    case cudaErrorMemoryAllocation:
      return "the GPU is out of memory: reduce the batch size, the sample count or the model width";
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return "no usable GPU: check the driver and CUDA_VISIBLE_DEVICES, or use device 'cpu'";
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
      return "this build has no code for this GPU: rebuild with its architecture in CMAKE_CUDA_ARCHITECTURES";
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
      return "a kernel faulted (a cuFM bug): rerun under compute-sanitizer and report it";
    default:
      return "see the CUDA error above";
  }
}

inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
    default:
      return "unknown cuBLAS status";
  }
}

// A sentence of advice for a cuBLAS(Lt) status.
inline const char* cublas_advice(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_SUPPORTED:
    case CUBLAS_STATUS_INVALID_VALUE:
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "this GEMM's shape or precision is not supported here: try precision fp32";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "out of memory: reduce the batch size, the sample count or the model width";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "cuBLASLt could not start: check the driver and CUDA_VISIBLE_DEVICES";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "a GPU kernel failed (possibly an earlier fault): rerun under compute-sanitizer and report it";
    default:
      return "a cuBLASLt internal error: report it with the GPU model and driver version";
  }
}

}  // namespace cufm::detail

// CUFM_CUDA_CHECK(cudaMalloc(&p, n)): throws cufm::Error when the call does not return cudaSuccess.
#define CUFM_CUDA_CHECK(call)                                                                     \
  do {                                                                                            \
    const cudaError_t cufm_cuda_err_ = (call);                                                    \
    if (cufm_cuda_err_ != cudaSuccess) {                                                          \
      (void)cudaGetLastError(); /* clear a non-sticky error so later calls can proceed */         \
      CUFM_FAIL("CUDA call `" #call "` failed: " << cudaGetErrorName(cufm_cuda_err_) << " ("      \
                                                 << cudaGetErrorString(cufm_cuda_err_) << "); "   \
                                                 << ::cufm::detail::cuda_advice(cufm_cuda_err_)); \
    }                                                                                             \
  } while (0)

// CUFM_CUBLAS_CHECK(cublasLtMatmul(...)): throws cufm::Error unless CUBLAS_STATUS_SUCCESS.
#define CUFM_CUBLAS_CHECK(call)                                                                             \
  do {                                                                                                      \
    const cublasStatus_t cufm_cublas_st_ = (call);                                                          \
    if (cufm_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                                         \
      CUFM_FAIL("cuBLASLt call `" #call "` failed: " << ::cufm::detail::cublas_status_name(cufm_cublas_st_) \
                                                     << "; "                                                \
                                                     << ::cufm::detail::cublas_advice(cufm_cublas_st_));    \
    }                                                                                                       \
  } while (0)

// After a kernel launch: a bad launch configuration or an earlier asynchronous fault.
#define CUFM_CUDA_CHECK_LAUNCH(kernel_name)                                                                \
  do {                                                                                                     \
    const cudaError_t cufm_launch_err_ = cudaPeekAtLastError();                                            \
    if (cufm_launch_err_ != cudaSuccess) {                                                                 \
      (void)cudaGetLastError();                                                                            \
      CUFM_FAIL("launch of " << (kernel_name) << " failed: " << cudaGetErrorName(cufm_launch_err_) << " (" \
                             << cudaGetErrorString(cufm_launch_err_) << "); "                              \
                             << ::cufm::detail::cuda_advice(cufm_launch_err_));                            \
    }                                                                                                      \
  } while (0)
