// fp32 -> bf16 (round to nearest even) of a flat buffer: the bf16 copy of the weights at setup
// (adam_update keeps it current after that). Launch: 1 element per thread, 256 per block,
// grid-stride. Cost: 6 bytes per element, memory-bound.
#include <cuda_bf16.h>

#include <algorithm>

#include "host/cuda/cuda_check.hpp"
#include "host/cuda/ops.hpp"

namespace cufm::cuda {

namespace {
__global__ void __launch_bounds__(256)
    convert_to_bf16_kernel(const float* __restrict__ src, __nv_bfloat16* __restrict__ dst, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    dst[i] = __float2bfloat16_rn(src[i]);
  }
}
}  // namespace

void convert_to_bf16(const float* src, __nv_bfloat16* dst, size_t n, cudaStream_t stream) {
  CUFM_REQUIRE(n == 0 || (src && dst), "convert_to_bf16: src and dst must be device arrays");
  if (n == 0) return;
  const int blocks = static_cast<int>(std::min<size_t>((n + 255) / 256, 65535));
  convert_to_bf16_kernel<<<blocks, 256, 0, stream>>>(src, dst, n);
  CUFM_CUDA_CHECK_LAUNCH("convert_to_bf16_kernel");
}

}  // namespace cufm::cuda
