// Launchers of kernels/activation.cu: the layers' elementwise work where cuBLASLt runs no fused
// epilogue. Every launcher checks its arguments, takes the stream last and throws cufm::Error.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cufm/detail/math.hpp"
#include "kernels/column_sum_order.hpp"
#include "kernels/dtype.hpp"

namespace cufm::cuda {

// z, a: [rows, width] contiguous (width a multiple of 4). With bias (fp32 [width]): z += bias,
// written back; then a = act(z).
void activation_forward(Activation act, DType type, void* z, void* a, const float* bias, int64_t rows,
                        int width, cudaStream_t stream);
// In place: g = g * act'(z), turning dL/da into dL/dz.
void activation_backward(Activation act, DType type, void* g, const void* z, int64_t rows, int width,
                         cudaStream_t stream);
// z += bias (the output layer when cuBLASLt's bias epilogue is unavailable).
void bias_add(DType type, void* z, const float* bias, int64_t rows, int width, cudaStream_t stream);

// ---- column_sum: the bias gradient db[j] = sum_i g[i, j], in column_sum_order.hpp's order ----------
// g: [rows, width] of `type`; db: fp32 [width]; workspace: column_sum_workspace_floats() floats.
void column_sum(DType type, const void* g, int64_t rows, int width, float* db, float* workspace,
                cudaStream_t stream);

}  // namespace cufm::cuda
