// Launcher of kernels/convert.cu: fp32 -> bf16 of a flat buffer.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace cufm::cuda {

void convert_to_bf16(const float* src, __nv_bfloat16* dst, size_t n, cudaStream_t stream);

}  // namespace cufm::cuda
