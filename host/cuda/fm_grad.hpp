// One batch's flow-matching loss and gradient on the GPU, as the trainer's step and
// cufm::loss_and_grad both run it (internal).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "cufm/kernels.hpp"
#include "cufm/model.hpp"
#include "host/cuda/lt_mlp.hpp"

namespace cufm::cuda {

// On `stream`, nothing read back: fm_prepare into the MLP's input, its forward pass, fm_loss_grad
// into its output gradient (the loss into the DEVICE float *loss), then its backward pass, which
// writes every parameter's gradient into the LtMlp's gradient buffer. loss_ws: fm_loss_grad's
// zeroed workspace of loss_ws_bytes.
void enqueue_loss_grad(LtMlp& mlp, const MlpConfig& model, const kernels::FmBatch& batch, float* loss,
                       void* loss_ws, size_t loss_ws_bytes, cudaStream_t stream);

}  // namespace cufm::cuda
