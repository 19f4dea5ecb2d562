// The fused sampler's launcher (kernels/fused_sampler.cu); its block program and limits are in
// kernels/fused_sampler.hpp.
#pragma once

#include <cuda_runtime.h>

#include "kernels/fused_sampler.hpp"

namespace cufm::cuda {

// The most points per block whose shared memory, with the kernel's static shared memory, fits this
// device's opt-in limit (64, 32, ... 4), or 0 when not even 4 fit.
int fused_sampler_tile(const FusedSample& p);

// The whole integration of p (p.tile points per block, 256 threads), enqueued on stream: p.x's
// points in, the final points out, the trajectory when set. Every pointer is DEVICE memory.
void fused_sample(const FusedSample& p, cudaStream_t stream);

}  // namespace cufm::cuda
