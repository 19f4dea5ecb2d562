// The fused training step: fused_train_kernel runs kernels/fused_train.hpp's block program, one
// block of 256 threads per run of tiles (at most kFusedTrainMaxBlocks), its tile's input rows,
// pre-activations, gradients, targets and one layer's weights in dynamic shared memory;
// fused_train_reduce_kernel then adds the blocks' partials in block order into the gradient and the
// loss. Built with -fmad=false: the products take one explicit fmaf a term and the rest rounds as
// the CPU twin's does. At TF32 and BF16 the three products of a layer run on the tensor cores
// (DeviceMma).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <string>
#include <type_traits>

#include "cufm/error.hpp"
#include "kernels/common.cuh"
#include "kernels/cuda_check.hpp"
#include "kernels/fm_draws.cuh"
#include "kernels/fused_train.hpp"
#include "kernels/fused_train_launch.hpp"

namespace cufm::cuda {

namespace {

constexpr int kThreads = kFusedTrainThreads;
static_assert(kThreads % 32 == 0, "DeviceMma hands out whole warps");

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

// A layer's three products on the tensor cores (fused_train_tile's mma; FusedTrainTwinMma is the
// CPU's emulation): every 16 x 16 tile of the output by one warp, fp32 accumulation; TF32: k steps
// of 8, the fp32 operands rounded to tf32 in the fragments; BF16: k steps of 16 over the operands'
// bf16 copies. R and every stride are multiples of 16 (the staged weights': of 4 floats or 8 bf16),
// and every operand starts on 32 bytes (fused_train_smem_carve), as wmma's loads need.
// The element type's fragments: fp32 operands rounded to tf32 (k steps of 8), or bf16 (k steps of
// 16).
template <class T>
__host__ __device__ constexpr int mma_k_step() {
  return std::is_same_v<T, float> ? 8 : 16;
}

struct DeviceMma {
  template <class T>
  using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, mma_k_step<T>(), float>;
  template <class T>
  using Elem = std::conditional_t<std::is_same_v<T, float>, nvcuda::wmma::precision::tf32, T>;

  // acc += A B for one 16 x 16 tile over K: a and b point at the tile's first row of A and first
  // column of B, whose layouts say how a k step advances.
  template <class T, class ALayout, class BLayout>
  __device__ static void sum_tile(Acc<T>& acc, const T* a, int lda, const T* b, int ldb, int K) {
    namespace wmma = nvcuda::wmma;
    constexpr int ks = mma_k_step<T>();
    constexpr bool a_rows = std::is_same_v<ALayout, wmma::row_major>;
    constexpr bool b_rows = std::is_same_v<BLayout, wmma::row_major>;
    for (int k0 = 0; k0 < K; k0 += ks) {
      wmma::fragment<wmma::matrix_a, 16, 16, ks, Elem<T>, ALayout> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, ks, Elem<T>, BLayout> fb;
      wmma::load_matrix_sync(fa, a + (a_rows ? k0 : k0 * lda), lda);
      wmma::load_matrix_sync(fb, b + (b_rows ? k0 * ldb : k0), ldb);
      if constexpr (std::is_same_v<T, float>) {
#pragma unroll
        for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
#pragma unroll
        for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
      }
      wmma::mma_sync(acc, fa, fb, acc);
    }
  }

  // dst [R, C] (fp32) = a [R, K] (row-major) times the staged weights as B, each warp a 16 x 16
  // tile at a time: the forward (B column-major: W^T) and the input gradient (B row-major: W).
  template <class T, class BLayout>
  __device__ static void rows_times_weights(int R, int C, int K, const T* a, const T* w, int wld, float* dst,
                                            int tid, int nt) {
    namespace wmma = nvcuda::wmma;
    constexpr bool b_rows = std::is_same_v<BLayout, wmma::row_major>;
    const int tiles_c = C / kFusedMma, tiles = (R / kFusedMma) * tiles_c;
    for (int t = tid / 32; t < tiles; t += nt / 32) {
      const int r0 = (t / tiles_c) * kFusedMma, c0 = (t % tiles_c) * kFusedMma;
      Acc<T> acc;
      wmma::fill_fragment(acc, 0.0f);
      sum_tile<T, wmma::row_major, BLayout>(acc, a + r0 * K, K, w + (b_rows ? c0 : c0 * wld), wld, K);
      wmma::store_matrix_sync(dst + r0 * C + c0, acc, C, wmma::mem_row_major);
    }
  }

  // dW (+)= g^T x over R rows: g [R, ld(out)] read as the column-major A operand (o, r), x [R, ld(in)]
  // as the row-major B operand (r, k); each 16 x 16 tile of sums goes through the warp's scratch
  // into the block's partial, for o < out and k < in only (the padded layout's rows are p.ld apart).
  template <class T>
  __device__ static void weight_gradient(const FusedTrain& p, int l, int R, const T* g, const T* x, float* dw,
                                         bool first_tile, float* scratch_base, int tid, int nt) {
    namespace wmma = nvcuda::wmma;
    const int in = p.in[l], out = p.out[l], ld = p.ld[l];
    const int ldi = fused_train_ld(p, in), ldo = fused_train_ld(p, out);
    const int tiles_c = ldi / kFusedMma, tiles = (ldo / kFusedMma) * tiles_c;
    const int warp = tid / 32, lane = tid % 32;
    float* scratch = scratch_base + warp * kFusedMma * kFusedMma;
    for (int t = warp; t < tiles; t += nt / 32) {
      const int o0 = (t / tiles_c) * kFusedMma, c0 = (t % tiles_c) * kFusedMma;
      Acc<T> acc;
      wmma::fill_fragment(acc, 0.0f);
      sum_tile<T, wmma::col_major, wmma::row_major>(acc, g + o0, ldo, x + c0, ldi, R);
      wmma::store_matrix_sync(scratch, acc, kFusedMma, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < kFusedMma * kFusedMma; e += 32) {
        const int o = o0 + e / kFusedMma, k = c0 + e % kFusedMma;
        if (o < out && k < in) {
          float* d = dw + static_cast<int64_t>(o) * ld + k;
          *d = first_tile ? scratch[e] : hd::rn_add(*d, scratch[e]);
        }
      }
      __syncwarp();  // the scratch is read before the next tile's sums land in it
    }
  }

  static __device__ const __nv_bfloat16* bf16(const uint16_t* bits) {
    return reinterpret_cast<const __nv_bfloat16*>(bits);
  }

  // dst [R, ld(out)] = x [R, ld(in)] W^T: W staged [ld(out), wld] is the column-major B operand
  // (BF16: the input's and the weights' bf16 copies).
  __device__ void forward(const FusedTrain& p, int l, int R, const float* x, float* dst,
                          const FusedTrainSmem& s, int tid, int nt) const {
    const int ldi = fused_train_ld(p, p.in[l]), ldo = fused_train_ld(p, p.out[l]),
              wld = fused_train_wld(p, p.in[l]);
    if (fused_train_bf16(p)) {
      rows_times_weights<__nv_bfloat16, nvcuda::wmma::col_major>(R, ldo, ldi, bf16(s.x16), bf16(s.w16), wld,
                                                                 dst, tid, nt);
    } else {
      rows_times_weights<float, nvcuda::wmma::col_major>(R, ldo, ldi, x, s.w, wld, dst, tid, nt);
    }
  }

  // dst [R, ld(in)] = g [R, ld(out)] W: the same staged W is the row-major B operand.
  __device__ void dgrad(const FusedTrain& p, int l, int R, const float* g, float* dst,
                        const FusedTrainSmem& s, int tid, int nt) const {
    const int ldi = fused_train_ld(p, p.in[l]), ldo = fused_train_ld(p, p.out[l]),
              wld = fused_train_wld(p, p.in[l]);
    if (fused_train_bf16(p)) {
      rows_times_weights<__nv_bfloat16, nvcuda::wmma::row_major>(R, ldi, ldo, bf16(s.g16), bf16(s.w16), wld,
                                                                 dst, tid, nt);
    } else {
      rows_times_weights<float, nvcuda::wmma::row_major>(R, ldi, ldo, g, s.w, wld, dst, tid, nt);
    }
  }

  __device__ void wgrad(const FusedTrain& p, int l, int R, const float* g, const float* x, float* dw,
                        bool first_tile, const FusedTrainSmem& s, int tid, int nt) const {
    if (fused_train_bf16(p)) {
      weight_gradient(p, l, R, bf16(s.g16), bf16(s.x16), dw, first_tile, s.scratch, tid, nt);
    } else {
      weight_gradient(p, l, R, g, x, dw, first_tile, s.scratch, tid, nt);
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
                    hd::FastExp{}, DeviceSync{}, targets, DeviceMma{});
}

__global__ void __launch_bounds__(kThreads)
    fused_train_reduce_kernel(const __grid_constant__ FusedTrain p, float* __restrict__ grads, float* loss) {
  for (const int64_t e : grid_stride(p.total)) grads[e] = fused_train_gradient(p, e);
  if (blockIdx.x == 0 && threadIdx.x == 0) *loss = fused_train_loss(p);
}

}  // namespace

int fused_train_tile(const FusedTrain& p) {
  // The limit holds the kernel's static shared memory (its copy of the parameters) too.
  const int64_t dynamic_limit = opt_in_dynamic_smem<fused_train_kernel>();
  FusedTrain q = p;
  const int smallest = fused_train_tc(p) ? kFusedMma : 8;  // the tensor cores: multiples of 16
  for (int tile = 64; tile >= smallest; tile /= 2) {
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
  const int64_t limit = opt_in_dynamic_smem<fused_train_kernel>();
  CUFM_REQUIRE(
      static_cast<int64_t>(bytes) <= limit,
      "fused_train: the tile needs " << bytes << " bytes of shared memory; this GPU gives a block " << limit);
  fused_train_kernel<<<static_cast<unsigned>(p.blocks), kThreads, bytes, stream>>>(p, batch);
  CUFM_CUDA_CHECK_LAUNCH("fused_train_kernel");
  const int blocks = grid_for(p.total, kThreads, 1024);
  fused_train_reduce_kernel<<<blocks, kThreads, 0, stream>>>(p, grads, loss);
  CUFM_CUDA_CHECK_LAUNCH("fused_train_reduce_kernel");
}

}  // namespace cufm::cuda
