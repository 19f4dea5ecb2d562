// The flow-matching loss and its gradient on a batch the caller supplies with its draws, updating
// nothing: the entry point to verify cuFM against autograd, and a building block for a training
// loop of one's own. Row i: x_t = t_i x1_i + (1 - (1 - sigma_min) t_i) eps_i, u = x1_i -
// (1 - sigma_min) eps_i, loss = mean over rows and dims of (v(x_t, t_i, label_i) - u)^2 (PyTorch's
// F.mse_loss), on the CPU or the GPU.
#pragma once

#include <cstdint>
#include <vector>

#include "cufm/device.hpp"
#include "cufm/model.hpp"
#include "cufm/path.hpp"

namespace cufm {

// HOST arrays, row-major.
struct FlowBatch {
  int64_t size = 0;                 // rows, in [1, 2^31 - 1]
  const float* x1 = nullptr;        // [size, D] the data points
  const float* t = nullptr;         // [size] the times, in [0, 1]
  const float* eps = nullptr;       // [size, D] the noise
  const int32_t* labels = nullptr;  // [size] a conditional model's classes (num_classes: the null
                                    // class, as label dropout gives); nullptr: all null. Must be
                                    // nullptr for an unconditional model
};

struct LossGrad {
  float loss = 0.0f;        // the mean squared error
  std::vector<float> grad;  // d loss / d parameters, in the Model's flat layout
};

// path: its sigma_min (the time sampling is the caller's: batch.t). run: the device, the layers'
// precision (GPU) and the CPU's threads. Throws cufm::Error naming a bad argument.
LossGrad loss_and_grad(const Model& model, const FlowBatch& batch, const PathConfig& path = {},
                       const RunOptions& run = {});

}  // namespace cufm
