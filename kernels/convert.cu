// fp32 -> bf16 (round to nearest even) of a flat buffer: the bf16 copy of the weights at setup
// (adam_update keeps it current after that). Launch: 1 element per thread, 256 per block,
// grid-stride. Cost: 6 bytes per element, memory-bound.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/common.cuh"
#include "kernels/convert.hpp"
#include "kernels/cuda_check.hpp"

namespace cufm::cuda {

namespace {
__global__ void __launch_bounds__(256)
    convert_to_bf16_kernel(const float* __restrict__ src, __nv_bfloat16* __restrict__ dst, int64_t n) {
  for (const int64_t i : grid_stride(n)) store(dst + i, src[i]);
}
}  // namespace

void convert_to_bf16(const float* src, __nv_bfloat16* dst, size_t n, cudaStream_t stream) {
  CUFM_REQUIRE(n == 0 || (src && dst), "convert_to_bf16: src and dst must be device arrays");
  if (n == 0) return;
  const int64_t elems = static_cast<int64_t>(n);
  convert_to_bf16_kernel<<<grid_for(elems, 256, 65535), 256, 0, stream>>>(src, dst, elems);
  CUFM_CUDA_CHECK_LAUNCH("convert_to_bf16_kernel");
}

}  // namespace cufm::cuda
