// The CUDA training backend's knobs for the tests (internal). make_cuda_trainer uses the defaults.
#pragma once

#include <memory>
#include <string>

#include "host/cuda/cuda_backend.hpp"
#include "host/cuda/gpu_mlp.hpp"

namespace cufm::detail {

enum class StepLaunch : int {
  Graph = 0,  // the whole step captured once as a CUDA graph, replayed each step (the default)
  Eager = 1,  // the same kernels launched one by one each step (for testing graph == eager)
};

struct CudaTrainerOptions {
  Precision precision = Precision::FP32;  // the layers' (RunOptions::precision)
  StepLaunch launch = StepLaunch::Graph;
  size_t memory_limit = 0;  // bytes the dataset may take on the device; 0: the GPU's free memory
  // The fused step (kernels/fused_train.cu) where it applies, else the layered one (LtMlp);
  // CUFM_GPU_MLP's setting unless a test asks for one.
  cuda::GpuMlp mlp = cuda::gpu_mlp_from_env();
};

std::unique_ptr<TrainBackend> make_cuda_trainer_with(const MlpConfig& model, const TrainConfig& config,
                                                     const Dataset& data, TrainState state,
                                                     const CudaTrainerOptions& options);

}  // namespace cufm::detail
