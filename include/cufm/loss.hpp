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
  int64_t size = 0;                       // rows, in [1, 2^31 - 1]
  const float* x1 = nullptr;              // [size, D] the data points
  const float* t = nullptr;               // [size] the times, in [0, 1]
  const float* eps = nullptr;             // [size, D] the noise
  const int32_t* labels = nullptr;        // [size] a conditional model's classes (num_classes: the null
                                          // class, as label dropout gives); nullptr: all null. Must be
                                          // nullptr for an unconditional model
  const float* context = nullptr;         // [size, context_dim] the rows' contexts (a model with a
                                          // context); nullptr: all null. Must be nullptr without one
  const uint8_t* context_null = nullptr;  // [size] or nullptr: nonzero where the row's context is the
                                          // null one (as context dropout gives)
};

struct LossGrad {
  float loss = 0.0f;        // the mean squared error
  std::vector<float> grad;  // d loss / d parameters, in the Model's flat layout
};

// path: its sigma_min (the time sampling is the caller's: batch.t). run: the device, the layers'
// precision and the CPU's threads. Throws cufm::Error naming a bad argument.
LossGrad loss_and_grad(const Model& model, const FlowBatch& batch, const PathConfig& path = {},
                       const RunOptions& run = {});

// The loss for a model of the caller's own (a PyTorch module, say), on the host: cuFM draws a
// training step's t and eps for the caller's batch, builds x_t, and after the caller's forward
// pass gives the loss and dL/dv. Row i of the batch is row i of x1 (no resampling), and its draws
// are the ones Trainer::step(batch) trains on. On the GPU, kernels::fm_prepare and fm_loss_grad
// with FmBatch::rows_in_order give the same draws, x_t and gradient bit for bit.
struct StepDraws {
  uint64_t seed = 0;             // the Philox key
  uint64_t step = 0;             // the step's index: a new step, new draws
  PathConfig path;               // sigma_min and how t is drawn
  int num_classes = 0;           // > 0: the rows carry labels; num_classes is the null class
  float label_dropout = 0.0f;    // per-row probability of the null class (num_classes > 0)
  float context_dropout = 0.0f;  // per-row probability of the null context (prepare_flow's context_dropped)
};

// HOST arrays: x1 [B, D] in; x_t [B, D] and t [B] out. With num_classes > 0, labels [B] in
// [0, num_classes] (nullptr: all null) and labels_out [B] gets them after dropout; otherwise both
// must be nullptr. eps [B, D], when non-null, gets the noise (the target is x1 - (1 - sigma_min)
// eps). context_dropped [B], when non-null, gets 1 for the rows whose context the step drops (a
// model with a context then sees the null context there: zeros and a null indicator of 1; all 0
// when context_dropout is 0): the draws Trainer::step(batch) makes. Throws cufm::Error for a bad
// argument or a non-finite x1.
void prepare_flow(const StepDraws& draws, int64_t B, int D, const float* x1, const int32_t* labels,
                  float* x_t, float* t, int32_t* labels_out, float* eps = nullptr,
                  uint8_t* context_dropped = nullptr);

// HOST arrays: the mean over B*D of (v - u)^2 against the step's target u = x1 - (1 - sigma_min)
// eps (eps drawn again from the counters, as the GPU's kernel does), and, when grad is non-null,
// grad [B, D] = dL/dv = 2 (v - u) / (B D). Summed in double in a fixed order: the same bits for
// any thread count. threads: 0 for all cores.
float flow_mse(const StepDraws& draws, int64_t B, int D, const float* x1, const float* v, float* grad,
               int threads = 0);

}  // namespace cufm
