// The CUDA training backend's knobs for the tests (internal). make_cuda_trainer uses the defaults.
#pragma once

#include <memory>
#include <string>

#include "host/cuda/cuda_backend.hpp"

namespace cufm::detail {

enum class StepLaunch : int {
  Graph = 0,  // the whole step captured once as a CUDA graph, replayed each step (the default)
  Eager = 1,  // the same kernels launched one by one each step (for testing graph == eager)
};

struct CudaTrainerOptions {
  Precision precision = Precision::FP32;  // the layers' (RunOptions::precision)
  StepLaunch launch = StepLaunch::Graph;
  size_t memory_limit = 0;  // bytes the dataset may take on the device; 0: the GPU's free memory
};

std::unique_ptr<TrainBackend> make_cuda_trainer_with(const MlpConfig& model, const TrainConfig& config,
                                                     const Dataset& data, TrainState state,
                                                     const CudaTrainerOptions& options);

}  // namespace cufm::detail
