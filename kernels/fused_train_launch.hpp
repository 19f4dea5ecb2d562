// The fused training step's launchers (kernels/fused_train.cu); its block program and limits are in
// kernels/fused_train.hpp.
#pragma once

#include <cuda_runtime.h>

#include "cufm/kernels.hpp"
#include "kernels/fused_train.hpp"

namespace cufm::cuda {

// The most rows per tile (64, 32, 16, or at fp32 8) whose shared memory, with the kernel's static
// shared memory, fits this device's opt-in limit, or 0 when not even the smallest fits.
int fused_train_tile(const FusedTrain& p);

// One step's loss and gradient, enqueued on stream: p.input holds the batch's model input
// (fm_prepare's, as `batch` draws it), `batch` gives the same rows' targets; grads [p.total] gets
// the gradient (the padding between layers: the partials' zeros) and *loss the mean squared error.
// p.partial [p.blocks, p.total] must be zero where no layer lies (the kernel never writes there).
// Every pointer is DEVICE memory.
void fused_train(const FusedTrain& p, const kernels::FmBatch& batch, float* grads, float* loss,
                 cudaStream_t stream);

}  // namespace cufm::cuda
