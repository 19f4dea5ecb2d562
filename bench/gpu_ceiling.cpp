// The GPU ceilings the benchmarks set their numbers against (built only with the CUDA backend):
// cuBLAS GEMM in fp32, tf32 and bf16, and device-to-device cudaMemcpy bandwidth. Each is timed
// with CUDA events on its own stream after warm-up; the median of the repeats is reported.
#include "bench/gpu_ceiling.hpp"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cufm/error.hpp"
#include "kernels/cuda_check.hpp"
#include "host/cuda/device_buffer.hpp"

namespace cufm::bench {

// ---- events ----------------------------------------------------------------------------------
GpuTimer::GpuTimer() {
  CUFM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUFM_CUDA_CHECK(cudaEventCreate(&start_));
  CUFM_CUDA_CHECK(cudaEventCreate(&stop_));
}

GpuTimer::~GpuTimer() {
  if (cudaEventDestroy(start_) != cudaSuccess || cudaEventDestroy(stop_) != cudaSuccess ||
      cudaStreamDestroy(stream_) != cudaSuccess) {
    (void)cudaGetLastError();
    std::fprintf(stderr, "cufm_bench: warning: releasing the timing stream failed\n");  // never throw here
  }
}

Stats GpuTimer::time(int warmup, int repeats, const std::function<void(cudaStream_t)>& before,
                     const std::function<void(cudaStream_t)>& work) {
  for (int i = 0; i < warmup; ++i) {
    if (before) before(stream_);
    work(stream_);
  }
  CUFM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::vector<double> seconds;
  for (int i = 0; i < repeats; ++i) {
    if (before) before(stream_);  // outside the events: e.g. an L2 flush
    CUFM_CUDA_CHECK(cudaEventRecord(start_, stream_));
    work(stream_);
    CUFM_CUDA_CHECK(cudaEventRecord(stop_, stream_));
    CUFM_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    CUFM_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    seconds.push_back(ms * 1e-3);
  }
  return summarize(seconds);
}

// ---- GEMM ------------------------------------------------------------------------------------
namespace {

struct CublasHandle {
  cublasHandle_t h = nullptr;
  CublasHandle() { CUFM_CUBLAS_CHECK(cublasCreate(&h)); }
  ~CublasHandle() {
    if (h && cublasDestroy(h) != CUBLAS_STATUS_SUCCESS)
      std::fprintf(stderr, "cufm_bench: warning: cublasDestroy failed\n");
  }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
};

}  // namespace

Ceiling gpu_gemm_ceiling(Precision p, int m, int n, int k, int repeats) {
  Ceiling c;
  c.backend = std::string("cuda-") + to_string(p);
  c.m = m;
  c.n = n;
  c.k = k;
  const bool bf16 = p == Precision::BF16;
  c.what = std::string("cuBLAS GEMM ") + (bf16                   ? "bf16 in/out, fp32 accumulate"
                                          : p == Precision::TF32 ? "tf32"
                                                                 : "fp32");
  try {
    const size_t elem = bf16 ? 2 : 4;
    cuda::DeviceBuffer a(elem * m * k, "the GEMM ceiling's A"), b(elem * n * k, "the GEMM ceiling's B"),
        out(elem * m * n, "the GEMM ceiling's C");
    // Non-zero inputs (0x3C bytes: ~0.0115 in fp32 and in bf16) so no zero shortcut flatters the result.
    CUFM_CUDA_CHECK(cudaMemset(a.get(), 0x3C, a.bytes()));
    CUFM_CUDA_CHECK(cudaMemset(b.get(), 0x3C, b.bytes()));
    CublasHandle handle;
    GpuTimer timer;
    CUFM_CUBLAS_CHECK(cublasSetStream(handle.h, timer.stream()));
    const cudaDataType_t type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    // fp32: CUBLAS_COMPUTE_32F in the default math mode, which does not use tf32 tensor cores.
    const cublasComputeType_t compute =
        p == Precision::TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    const float alpha = 1.0f, beta = 0.0f;
    // Row-major C[m,n] = A[m,k] B[n,k]^T read column-major is C^T[n,m] = B A^T, where the buffers
    // read column-major are B^T [k,n] and A^T [k,m]: so op = T on B's buffer, N on A's.
    auto gemm = [&](cudaStream_t) {
      CUFM_CUBLAS_CHECK(cublasGemmEx(handle.h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, b.get(), type, k,
                                     a.get(), type, k, &beta, out.get(), type, n, compute,
                                     CUBLAS_GEMM_DEFAULT));
    };
    c.time = timer.time(5, repeats, {}, gemm);
    c.tflops = 2.0 * m * n * static_cast<double>(k) / c.time.median * 1e-12;
    c.ok = c.time.median > 0.0;
  } catch (const std::exception& e) {
    c.ok = false;
    c.reason = e.what();
  }
  return c;
}

// ---- copy bandwidth --------------------------------------------------------------------------
Stats gpu_memcpy_d2d(size_t bytes, int repeats, double* gbs) {
  cuda::DeviceBuffer src(bytes, "the memcpy source"), dst(bytes, "the memcpy destination");
  GpuTimer timer;
  const Stats st = timer.time(3, repeats, {}, [&](cudaStream_t s) {
    CUFM_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, s));
  });
  // A copy reads and writes every byte.
  *gbs = 2.0 * static_cast<double>(bytes) / st.median * 1e-9;
  return st;
}

}  // namespace cufm::bench
