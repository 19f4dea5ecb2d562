// An instantiated CUDA graph, owned, and the one way cuFM makes one: capture what a function
// enqueues on a stream (internal; the trainer's step and the sampler's fixed-step runs).
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda_check.hpp"

namespace cufm::cuda {

class CudaGraph {
 public:
  CudaGraph() = default;

  // Captures everything enqueue(stream) puts on `stream` (thread-local capture mode, so another
  // thread's CUDA calls are not disturbed) and instantiates it. When enqueue throws, or capture
  // or instantiation fails, the capture is ended, the partial graph destroyed and the error
  // rethrown: the stream leaves capture mode and is usable again.
  template <typename Enqueue>
  static CudaGraph capture(cudaStream_t stream, Enqueue&& enqueue) {
    CUFM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    cudaGraph_t graph = nullptr;
    try {
      enqueue(stream);
    } catch (...) {
      if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
      (void)cudaGetLastError();  // an invalidated capture is not sticky
      throw;
    }
    CUFM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    CudaGraph g;
    const cudaError_t e = cudaGraphInstantiate(&g.exec_, graph, 0);
    cudaGraphDestroy(graph);
    CUFM_CUDA_CHECK(e);
    return g;
  }

  CudaGraph(CudaGraph&& o) noexcept : exec_(std::exchange(o.exec_, nullptr)) {}
  CudaGraph& operator=(CudaGraph&& o) noexcept {
    if (this != &o) {
      reset();
      exec_ = std::exchange(o.exec_, nullptr);
    }
    return *this;
  }
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  // The caller makes sure no launch of it is still queued (the owners synchronise first).
  ~CudaGraph() { reset(); }

  void reset() {
    if (exec_) cudaGraphExecDestroy(exec_);
    exec_ = nullptr;
  }
  explicit operator bool() const { return exec_ != nullptr; }
  void launch(cudaStream_t stream) const { CUFM_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace cufm::cuda
