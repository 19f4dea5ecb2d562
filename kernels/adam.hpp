// Launchers of kernels/adam.cu: the optimiser over the flat parameter buffer.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cufm/detail/optim.hpp"

namespace cufm::cuda {

// Device-side step state: the step counter and the coefficients of the step being run.
struct AdamDeviceState {
  uint64_t step;          // steps done (the 0-based index of the next step)
  hd::AdamCoeffs coeffs;  // written by adam_prepare for the update
  float grad_norm;        // the latest global gradient norm (0 when clipping is off)
};

// Workspace bytes for adam_prepare's deterministic norm (zeroed once; left zeroed).
size_t adam_workspace_bytes();
// Reduces the gradient norm (when clipping), computes this step's coefficients from the device
// step counter (t = step + 1, as cpu::adam_coeffs) and increments the counter. n: floats.
void adam_prepare(const OptimConfig& optim, const float* grads, size_t n, AdamDeviceState* state,
                  void* workspace, cudaStream_t stream);
// p, m, v (and ema, and a bf16 copy of p when given) updated in one pass; n a multiple of 4.
void adam_update(const AdamDeviceState* state, const float* grads, size_t n, float* params, float* m,
                 float* v, float* ema, __nv_bfloat16* params_bf16, cudaStream_t stream);

}  // namespace cufm::cuda
