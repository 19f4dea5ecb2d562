// The fused training step: fused_train_kernel runs kernels/fused_train.hpp's block program, one
// block of 256 threads per run of tiles (at most kFusedTrainMaxBlocks), its tile's input rows,
// pre-activations, gradients, targets and one layer's weights in dynamic shared memory;
// fused_train_reduce_kernel then adds the blocks' partials in block order into the gradient and the
// loss. Built with -fmad=false: the products take one explicit fmaf a term and the rest rounds as
// the CPU twin's does.
#include <cuda_runtime.h>

#include <string>

#include "cufm/error.hpp"
#include "kernels/common.cuh"
#include "kernels/cuda_check.hpp"
#include "kernels/fm_draws.cuh"
#include "kernels/fused_train.hpp"
#include "kernels/fused_train_launch.hpp"

namespace cufm::cuda {

namespace {

constexpr int kThreads = 256;

struct DeviceSync {
  __device__ void operator()() const { __syncthreads(); }
};

// The rows' targets u = x1 - (1 - sigma_min) eps, from the draws fm_loss_grad makes: the same data
// row and eps (Philox's, or the caller's with FmBatch::given_t/given_eps).
struct FmTargets {
  const kernels::FmBatch* b;
  uint64_t step;
  __device__ void operator()(int64_t row, int group, float u[4]) const {
    const uint32_t r = static_cast<uint32_t>(row);
    const hd::SampleDraw d = kernels::fm_row_draw(*b, step, r);
    float eps[4];
    kernels::fm_row_eps(*b, step, r, group, eps);
    const float* x1 = b->data + static_cast<size_t>(d.data_index) * b->dim;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int col = 4 * group + k;
      u[k] = col < b->dim ? hd::path_target(x1[col], eps[k], b->sigma_min) : 0.0f;
    }
  }
};

// The step's description is copied to shared memory first: the program indexes its arrays by the
// layer, which in the kernel's parameter space would put a copy of them in local memory.
__global__ void __launch_bounds__(kThreads, 1)
    fused_train_kernel(const __grid_constant__ FusedTrain params,
                       const __grid_constant__ kernels::FmBatch batch) {
  extern __shared__ __align__(128) float smem[];
  __shared__ alignas(alignof(FusedTrain)) unsigned int raw[sizeof(FusedTrain) / sizeof(unsigned int)];
  static_assert(sizeof(FusedTrain) % sizeof(unsigned int) == 0, "FusedTrain is copied word by word");
  const unsigned int* words = reinterpret_cast<const unsigned int*>(&params);
  for (unsigned i = threadIdx.x; i < sizeof(FusedTrain) / sizeof(unsigned int); i += kThreads)
    raw[i] = words[i];
  __syncthreads();
  const FusedTrain& p = *reinterpret_cast<const FusedTrain*>(raw);
  const FusedTrainSmem s = fused_train_smem_carve(p, smem);
  const FmTargets targets{&batch, kernels::fm_step(batch)};
  fused_train_block(p, static_cast<int>(blockIdx.x), s, static_cast<int>(threadIdx.x), kThreads,
                    hd::FastExp{}, DeviceSync{}, targets);
}

__global__ void __launch_bounds__(kThreads)
    fused_train_reduce_kernel(const __grid_constant__ FusedTrain p, float* __restrict__ grads, float* loss) {
  for (const int64_t e : grid_stride(p.total)) grads[e] = fused_train_gradient(p, e);
  if (blockIdx.x == 0 && threadIdx.x == 0) *loss = fused_train_loss(p);
}

}  // namespace

int fused_train_tile(const FusedTrain& p) {
  int device = 0, optin = 0;
  CUFM_CUDA_CHECK(cudaGetDevice(&device));
  CUFM_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes attributes{};
  CUFM_CUDA_CHECK(cudaFuncGetAttributes(&attributes, fused_train_kernel));
  const int64_t dynamic_limit =
      static_cast<int64_t>(optin) - static_cast<int64_t>(attributes.sharedSizeBytes);
  FusedTrain q = p;
  for (int tile = 64; tile >= 8; tile /= 2) {
    q.tile = tile;
    if (fused_train_smem_floats(q) * static_cast<int64_t>(sizeof(float)) <= dynamic_limit) return tile;
  }
  return 0;
}

void fused_train(const FusedTrain& p, const kernels::FmBatch& batch, float* grads, float* loss,
                 cudaStream_t stream) {
  const std::string bad = fused_train_error(p);
  CUFM_REQUIRE(bad.empty(), "fused_train: " << bad);
  CUFM_REQUIRE(batch.batch == p.batch && batch.dim == p.dim,
               "fused_train: the draws are for " << batch.batch << " x " << batch.dim
                                                 << " rows, the step for " << p.batch << " x " << p.dim);
  kernels::check_draws(batch, "fused_train");
  CUFM_REQUIRE(batch.data && batch.n_data >= 1, "fused_train: the draws need the device dataset");
  CUFM_REQUIRE(grads && loss, "fused_train: grads and loss must be device arrays");
  const size_t bytes = static_cast<size_t>(fused_train_smem_floats(p)) * sizeof(float);
  CUFM_CUDA_CHECK(cudaFuncSetAttribute(fused_train_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
  fused_train_kernel<<<static_cast<unsigned>(p.blocks), kThreads, bytes, stream>>>(p, batch);
  CUFM_CUDA_CHECK_LAUNCH("fused_train_kernel");
  const int blocks = grid_for(p.total, kThreads, 1024);
  fused_train_reduce_kernel<<<blocks, kThreads, 0, stream>>>(p, grads, loss);
  CUFM_CUDA_CHECK_LAUNCH("fused_train_reduce_kernel");
}

}  // namespace cufm::cuda
