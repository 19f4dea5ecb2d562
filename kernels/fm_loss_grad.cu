// fm_loss_grad: per row, regenerates the data index and eps from the step's Philox counters (or
// reads the caller's: FmBatch::given_t/given_eps), u = x1 - (1 - sigma_min) eps, grad = 2 (v - u) / (B D) and
// the loss mean((v - u)^2). Launch: one thread per (row, 4 columns of grad), 256 per block, at most
// kMaxBlocks blocks grid-striding; block sums (CUB, double) go to the workspace and the last block to finish
// adds them in block order, so the bits never depend on scheduling. Cost: reads B*D v and x1, writes B*ld
// grad; B = 4096, D = 2: ~100 KB, launch-bound (a few microseconds).
#include <algorithm>
#include <cstdint>

#include "cufm/detail/math.hpp"
#include "cufm/kernels.hpp"
#include "kernels/common.cuh"
#include "kernels/cuda_check.hpp"
#include "kernels/fm_draws.cuh"
#include "kernels/grid_sum.cuh"

namespace cufm::kernels {

namespace {

using cuda::store;
constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

struct LossArgs {
  FmBatch b;
  const float* v;
  int ldv, ld;
  int noise_groups, tail_chunks;
  float scale;  // 2 / (B D), computed as the CPU does
  float* loss;
  unsigned int* counter;
  double* partials;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) fm_loss_grad_kernel(LossArgs a, T* __restrict__ grad) {
  const uint64_t step = fm_step(a.b);
  const int per_row = a.noise_groups + a.tail_chunks;
  const int64_t total = static_cast<int64_t>(a.b.batch) * per_row;
  const int D = a.b.dim;
  double sum = 0.0;
  for (const int64_t w : cuda::grid_stride(total)) {
    const uint32_t row = static_cast<uint32_t>(w / per_row);
    const int slot = static_cast<int>(w - static_cast<int64_t>(row) * per_row);
    T* out = grad + static_cast<size_t>(row) * a.ld;
    if (slot < a.noise_groups) {
      const hd::SampleDraw d = fm_row_draw(a.b, step, row);
      float eps[4];
      fm_row_eps(a.b, step, row, slot, eps);
      const float* x1 = a.b.data + static_cast<size_t>(d.data_index) * D;
      const float* v = a.v + static_cast<size_t>(row) * a.ldv;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int col = 4 * slot + k;
        if (col < D) {
          const float diff = hd::rn_sub(v[col], hd::path_target(x1[col], eps[k], a.b.sigma_min));
          store(out + col, hd::rn_mul(diff, a.scale));
          sum += static_cast<double>(diff) * diff;
        }
      }
    } else {
      const int first = D + 4 * (slot - a.noise_groups);
      for (int col = first; col < first + 4 && col < a.ld; ++col) store(out + col, 0.0f);
    }
  }
  double all = 0.0;
  if (!cuda::grid_sum<kThreads>(sum, a.counter, a.partials, &all)) return;
  *a.loss = static_cast<float>(all / (static_cast<double>(a.b.batch) * D));
}

}  // namespace

size_t fm_loss_grad_workspace_bytes(int /*batch*/, int /*dim*/) {
  return cuda::reduction_workspace_bytes(kMaxBlocks);
}

void fm_loss_grad(const FmBatch& batch, const float* v, int ldv, const FmLossOutputs& out, void* workspace,
                  size_t workspace_bytes, cudaStream_t stream) {
  CUFM_REQUIRE(batch.batch >= 1, "fm_loss_grad: batch must be >= 1, got " << batch.batch);
  CUFM_REQUIRE(batch.dim >= 1 && batch.dim <= 65536,
               "fm_loss_grad: dim must be in [1, 65536], got " << batch.dim);
  CUFM_REQUIRE(
      batch.time_sampling == TimeSampling::Uniform || batch.time_sampling == TimeSampling::LogitNormal,
      "fm_loss_grad: unknown time_sampling " << static_cast<int>(batch.time_sampling));
  CUFM_REQUIRE(batch.n_data >= 1 && batch.data,
               "fm_loss_grad: data must be a device array of n_data >= 1 rows");
  check_draws(batch, "fm_loss_grad");
  CUFM_REQUIRE(v && ldv >= batch.dim, "fm_loss_grad: v must be a device array with ldv ("
                                          << ldv << ") >= dim (" << batch.dim << ")");
  CUFM_REQUIRE(out.ld >= batch.dim && out.ld <= (1 << 24),
               "fm_loss_grad: out.ld (" << out.ld << ") must be >= dim " << batch.dim << " and at most 2^24");
  CUFM_REQUIRE((out.grad == nullptr) != (out.grad_bf16 == nullptr),
               "fm_loss_grad: set exactly one of out.grad (fp32) and out.grad_bf16");
  CUFM_REQUIRE(out.loss, "fm_loss_grad: out.loss must point to a device float");
  CUFM_REQUIRE(workspace && workspace_bytes >= fm_loss_grad_workspace_bytes(batch.batch, batch.dim),
               "fm_loss_grad: the workspace must hold fm_loss_grad_workspace_bytes() = "
                   << fm_loss_grad_workspace_bytes(batch.batch, batch.dim) << " bytes, got "
                   << workspace_bytes);
  CUFM_REQUIRE(reinterpret_cast<uintptr_t>(workspace) % alignof(double) == 0,
               "fm_loss_grad: the workspace must be 8-byte aligned (cudaMalloc's pointers are)");
  LossArgs a{};
  a.b = batch;
  a.v = v;
  a.ldv = ldv;
  a.ld = out.ld;
  a.noise_groups = (batch.dim + 3) / 4;
  a.tail_chunks = (out.ld - batch.dim + 3) / 4;
  a.scale = 2.0f / (static_cast<float>(batch.batch) * static_cast<float>(batch.dim));
  a.loss = out.loss;
  const cuda::ReductionWorkspace rw = cuda::reduction_workspace(workspace);
  a.counter = rw.counter;
  a.partials = rw.partials;
  const int64_t total = static_cast<int64_t>(batch.batch) * (a.noise_groups + a.tail_chunks);
  const int blocks = cuda::grid_for(total, kThreads, kMaxBlocks);
  if (out.grad) {
    fm_loss_grad_kernel<float><<<blocks, kThreads, 0, stream>>>(a, out.grad);
  } else {
    fm_loss_grad_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(a, out.grad_bf16);
  }
  CUFM_CUDA_CHECK_LAUNCH("fm_loss_grad_kernel");
}

}  // namespace cufm::kernels
