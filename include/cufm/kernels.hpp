// cuFM's CUDA-level API: the fused flow-matching kernels on raw device pointers, for a caller who
// trains their own model (PyTorch, JAX, hand-written CUDA) with cuFM's path and random streams.
//
// A training step with your own model, all on one stream, nothing read back:
//   fm_prepare(batch, layout, prep_out, stream);     // x_t, time features, one-hot -> model input
//   ... your forward pass: input [B, ld] -> v [B, ldv] ...
//   fm_loss_grad(batch, v, ldv, loss_out, ws, ws_bytes, stream);  // loss and dL/dv
//   ... your backward pass from dL/dv, your optimiser; then increment *batch.step ...
// The draws are the CPU backend's, bit for bit: the same (seed, step) gives the same t, eps, x_t.
//   (fm_prepare also writes a model input's context: FmInputLayout::context_dim, FmBatch::context.)
// Every launcher checks its arguments, launches on `stream` (last argument) and throws cufm::Error
// on a bad argument or a failed launch. None synchronises with the host, so all are graph-capturable.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cufm/coupling.hpp"  // Coupling
#include "cufm/path.hpp"      // TimeSampling

namespace cufm::kernels {

// What one training step's batch is drawn from. fm_prepare and fm_loss_grad of a step must get
// the same values (the loss regenerates eps and x1 from the counters instead of storing them).
struct FmBatch {
  uint64_t seed = 0;                // the run's seed: the Philox key
  const uint64_t* step = nullptr;   // DEVICE pointer to the 0-based index of the step being run.
                                    // Read on the device, so a captured graph that increments it
                                    // sees the current value at each replay.
  int batch = 0;                    // B, rows of the batch (>= 1)
  int dim = 0;                      // D, dimension of a data point (>= 1)
  const float* data = nullptr;      // DEVICE [n_data, dim] row-major: the training points x1
  const int32_t* labels = nullptr;  // DEVICE [n_data] class labels in [0, num_classes); required
                                    // by a conditional layout, ignored otherwise. Labels are not
                                    // checked on the device (cuFM's own datasets are, on upload):
                                    // num_classes selects the null class, and any other value
                                    // outside the range gives an all-zero one-hot row and is
                                    // passed through to FmPrepareOutputs::label as it is
  uint32_t n_data = 0;              // rows of data (>= 1)
  TimeSampling time_sampling = TimeSampling::Uniform;
  float logit_mean = 0.0f;  // logit-normal time sampling: t = sigmoid(mean + std * z)
  float logit_std = 1.0f;
  float sigma_min = 0.0f;      // the path: x_t = t x1 + (1 - (1 - sigma_min) t) eps
  float label_dropout = 0.0f;  // per-row probability of the null class (conditional models)
  // The caller's draws instead of Philox's (both set, or neither): row i takes t = given_t[i],
  // eps = given_eps[i, :] and x1 = data row i (n_data must equal batch; labels, when used, are per
  // row: num_classes for the null class), and no label dropout; seed, step and the time sampling
  // are not used (step may be nullptr). What cufm::loss_and_grad runs on the GPU.
  const float* given_t = nullptr;    // DEVICE [batch]
  const float* given_eps = nullptr;  // DEVICE [batch, dim]
  // Philox's draws of t, eps and label dropout, but row i takes data row i (n_data must equal
  // batch): a batch of the caller's own, as cufm::prepare_flow and Trainer::step(batch) take it.
  bool rows_in_order = false;
  // A model input with a context (FmInputLayout::context_dim; added last, so that code initialising
  // the fields above in order still means what it did):
  const float* context = nullptr;  // DEVICE [n_data, layout.context_dim] each data point's context;
                                   // required by a layout with a context, ignored otherwise
  float context_dropout = 0.0f;    // per-row probability of the null context (layouts with a context),
                                   // drawn from block 0xFFFFFFFF of the row's counter
  const uint8_t* given_context_null = nullptr;  // DEVICE [batch] or nullptr: nonzero where the row takes
                                                // the null context (with given_t; no context dropout)
  // Minibatch OT coupling (fm_couple; added last): DEVICE [batch] or nullptr, row i takes the noise
  // (Philox's eps stream) of row noise_row[i]. Not with the caller's draws (given_t).
  const uint32_t* noise_row = nullptr;
};

// The model input's layout: row i = [x_t (D) | time features | context (K) and its null indicator |
// one-hot (num_classes + 1) | zeros].
struct FmInputLayout {
  int time_features = 0;  // 0: one feature, raw t; K > 0 (even): K sinusoids (hd::time_feature)
  int num_classes = 0;    // 0: no one-hot; else num_classes + 1 entries, the last the null class
  int ld = 0;             // row stride in elements, >= fm_input_dim(); columns past the input are
                          // written as zeros (pad to a multiple of 8 for tensor-core GEMMs)
  int context_dim = 0;    // K: 0 for none; else K context values, then 1 where the row's context is
                          // null (0 otherwise), after the time features (last: {tf, classes, ld} still
                          // initialises the fields it did)
};

// D + time features + (context_dim > 0 ? context_dim + 1 : 0) + (num_classes > 0 ? num_classes + 1 :
// 0): MlpConfig::input_dim(). The launchers take dim <= 65536, context_dim <= 65536, num_classes <=
// 100000 and ld <= 2^24, as MlpConfig does.
int fm_input_dim(int dim, const FmInputLayout& layout);

// fm_prepare's outputs. Exactly one of input / input_bf16 is set; the others are optional.
struct FmPrepareOutputs {
  float* input = nullptr;               // DEVICE [batch, layout.ld] fp32 model input, or
  __nv_bfloat16* input_bf16 = nullptr;  // DEVICE [batch, layout.ld] the same rounded to bf16
  float* t = nullptr;                   // DEVICE [batch] each row's time, or nullptr
  uint32_t* index = nullptr;            // DEVICE [batch] each row's data index, or nullptr
  int32_t* label = nullptr;             // DEVICE [batch] the label after dropout (num_classes for
                                        // the null class), or nullptr; needs num_classes > 0
};

// Draws t, the data index and eps for every row of the batch (or takes the given ones) and writes
// the model input.
// One pass: one thread per (row, 4 columns); reads B*D floats of data, writes B*ld values.
void fm_prepare(const FmBatch& batch, const FmInputLayout& layout, const FmPrepareOutputs& out,
                cudaStream_t stream);

// fm_loss_grad's outputs. Exactly one of grad / grad_bf16 is set; loss is required.
struct FmLossOutputs {
  float* grad = nullptr;               // DEVICE [batch, ld] dL/dv = 2 (v - u) / (B D), or
  __nv_bfloat16* grad_bf16 = nullptr;  // DEVICE [batch, ld] the same rounded to bf16
  int ld = 0;                          // row stride of grad, >= dim; columns past dim get zeros
  float* loss = nullptr;               // DEVICE scalar: mean over B*D of (v - u)^2
};

// Bytes of workspace fm_loss_grad needs for a batch (a few KiB). The workspace (8-byte aligned)
// must be zeroed once before its first use (cudaMemsetAsync); each call leaves it zeroed again.
// It holds the reduction's block counter: calls that may run at the same time (on different
// streams) need one workspace each.
size_t fm_loss_grad_workspace_bytes(int batch, int dim);

// ---- minibatch optimal-transport coupling ----------------------------------------------------
struct FmCoupling {
  Coupling kind = Coupling::Exact;  // Exact or Sinkhorn
  float reg = 0.05f;                // Sinkhorn's regularisation, relative to the group's scale
  int num_classes = 0;              // > 0: rows pair within their label after dropout (FmBatch::labels
                                    // at the drawn index; the null class its own group); 0: one group
};

// Bytes of workspace fm_couple needs (its sort, the batch's x1 and eps in group order, the solvers'
// state): about (8 D + 56) bytes a row plus the sort's scratch. Any 256-byte-aligned device memory
// (cudaMalloc's); fm_couple initialises what it uses, so calls on one stream may share it.
size_t fm_couple_workspace_bytes(int batch, int dim, const FmCoupling& coupling);

// The step's pairs, noise_row [batch] (DEVICE), as cufm::couple computes them on the CPU from the
// step's x1 and eps (Philox's draws, or rows_in_order): exact an optimal permutation to the same
// bound (the Jacobi auction, where the CPU bids Gauss-Seidel), Sinkhorn the same algorithm with its
// sums in another order. Set FmBatch::noise_row to the result for
// fm_prepare and fm_loss_grad. Exact: one block per group runs the auction; Sinkhorn: a row and a
// column kernel per iteration (kSinkhornMaxIterations of each are enqueued; those after convergence
// return at once), warps over the group's rows with the costs computed on the fly (no B x B matrix).
// Groups of up to kMaxCouplingGroup rows. The data must be finite and below about 1e18 in magnitude
// (squared distances must not overflow; cuFM's datasets are checked on upload); a label outside
// [0, num_classes) pairs in the null class's group. Exact runs one block per group (one SM for an
// unconditional model); Sinkhorn enqueues 2 x kSinkhornMaxIterations launches, those after
// convergence costing only their launch.
void fm_couple(const FmBatch& batch, const FmCoupling& coupling, uint32_t* noise_row, void* workspace,
               size_t workspace_bytes, cudaStream_t stream);

// Regenerates eps and x1 from the counters, u = x1 - (1 - sigma_min) eps, and writes the MSE loss
// and its gradient. v: DEVICE [batch, ldv] the model output (ldv >= dim). The sum is
// deterministic: fixed per-block order, then the blocks in order (no float atomics).
void fm_loss_grad(const FmBatch& batch, const float* v, int ldv, const FmLossOutputs& out, void* workspace,
                  size_t workspace_bytes, cudaStream_t stream);

}  // namespace cufm::kernels
