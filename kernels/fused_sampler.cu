// The fused sampler: one block per tile of points runs fused_sample_tile (kernels/fused_sampler.hpp)
// through every stage and step, 256 threads, the tile's state, stages, activations and one layer's
// weights in dynamic shared memory (the tile sized to the device's opt-in limit: 32 points of a
// 128-wide guided model take ~150 KB; with the divergence's tangents riding along, 64, 32, ... or 4).
// One launch for the whole integration, of samples or of log-likelihoods. FP32 sums each layer on
// the CUDA cores; TF32 and BF16 on the tensor cores (DeviceMma, below). Built with -fmad=false: the stage
// points round as the CPU's combine(), and the CUDA cores' sums take one explicit fmaf a term.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <string>

#include "cufm/error.hpp"
#include "kernels/common.cuh"
#include "kernels/cuda_check.hpp"
#include "kernels/fused_sampler.hpp"
#include "kernels/fused_sampler_launch.hpp"

namespace cufm::cuda {

namespace {

constexpr int kThreads = 256;

struct DeviceSync {
  __device__ void operator()() const { __syncthreads(); }
};

// A layer's products on the tensor cores: dst [R, ld(out)] = the input [R, ld(in)] times the staged
// weights [ld(out), fused_weight_ld] read as the column-major B operand, every 16 x 16 tile of the
// output, padding included, by one warp, fp32 accumulation. TF32: the input from src, k steps of 8;
// BF16: the input's and the weights' bf16 bits (s.a16, s.w16), k steps of 16. R and the strides are
// multiples of 16 and every operand starts on 32 bytes (fused_smem_carve), as wmma's loads need.
struct DeviceMma {
  __device__ void operator()(const FusedSample& p, int l, int R, const float* src, float* dst,
                             const FusedSmem& s, int tid, int nt) const {
    namespace wmma = nvcuda::wmma;
    const int in = p.net.in[l], out = p.net.out[l];
    const int ld_in = fused_ld(p, in), ld_out = fused_ld(p, out), ld_w = fused_weight_ld(p, in, out);
    const int tiles_c = ld_out / kFusedMma, tiles = (R / kFusedMma) * tiles_c;
    if (fused_bf16(p)) {
      const __nv_bfloat16* a16 = reinterpret_cast<const __nv_bfloat16*>(s.a16);
      const __nv_bfloat16* w16 = reinterpret_cast<const __nv_bfloat16*>(s.w16);
      for (int t = tid / 32; t < tiles; t += nt / 32) {
        const int r0 = (t / tiles_c) * kFusedMma, c0 = (t % tiles_c) * kFusedMma;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int k0 = 0; k0 < ld_in; k0 += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
          wmma::load_matrix_sync(a, a16 + r0 * ld_in + k0, ld_in);
          wmma::load_matrix_sync(b, w16 + c0 * ld_w + k0, ld_w);
          wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(dst + r0 * ld_out + c0, acc, ld_out, wmma::mem_row_major);
      }
      return;
    }
    for (int t = tid / 32; t < tiles; t += nt / 32) {
      const int r0 = (t / tiles_c) * kFusedMma, c0 = (t % tiles_c) * kFusedMma;
      wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int k0 = 0; k0 < ld_in; k0 += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> b;
        wmma::load_matrix_sync(a, src + r0 * ld_in + k0, ld_in);
        wmma::load_matrix_sync(b, s.w + c0 * ld_w + k0, ld_w);
#pragma unroll
        for (int i = 0; i < a.num_elements; ++i) a.x[i] = wmma::__float_to_tf32(a.x[i]);
#pragma unroll
        for (int i = 0; i < b.num_elements; ++i) b.x[i] = wmma::__float_to_tf32(b.x[i]);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(dst + r0 * ld_out + c0, acc, ld_out, wmma::mem_row_major);
    }
  }
};

// The parameters are copied to shared memory first: the layer loop indexes them by the layer, which
// in the kernel's parameter space would put a copy of them in local memory (__grid_constant__ lets
// the copy read them where they are).
__global__ void __launch_bounds__(kThreads, 1) fused_sample_kernel(const __grid_constant__ FusedSample params) {
  extern __shared__ __align__(128) float smem[];
  __shared__ alignas(alignof(FusedSample)) unsigned int raw[sizeof(FusedSample) / sizeof(unsigned int)];
  static_assert(sizeof(FusedSample) % sizeof(unsigned int) == 0, "FusedSample is copied word by word");
  const unsigned int* words = reinterpret_cast<const unsigned int*>(&params);
  for (unsigned i = threadIdx.x; i < sizeof(FusedSample) / sizeof(unsigned int); i += kThreads) raw[i] = words[i];
  __syncthreads();
  const FusedSample& p = *reinterpret_cast<const FusedSample*>(raw);
  const FusedSmem s = fused_smem_carve(p, smem);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * p.tile;
  const int rows = static_cast<int>(p.n - first < p.tile ? p.n - first : p.tile);
  fused_sample_tile(p, first, rows, s, static_cast<int>(threadIdx.x), kThreads, hd::FastExp{}, DeviceSync{},
                    DeviceMma{});
}

}  // namespace

int fused_sampler_tile(const FusedSample& p) {
  // The limit holds the kernel's static shared memory (its copy of the parameters) too.
  const int64_t dynamic_limit = opt_in_dynamic_smem<fused_sample_kernel>();
  FusedSample q = p;
  for (int tile = 64; tile >= 4; tile /= 2) {
    q.tile = tile;
    if (fused_smem_floats(q) * static_cast<int64_t>(sizeof(float)) <= dynamic_limit) return tile;
  }
  return 0;
}

void fused_sample(const FusedSample& p, cudaStream_t stream) {
  CUFM_REQUIRE(p.n >= 1 && p.dim >= 1 && p.steps >= 1 && p.x, "fused_sample: needs points, a dimension and steps");
  CUFM_REQUIRE(p.copies == 1 || p.copies == 2, "fused_sample: copies must be 1 or 2, got " << p.copies);
  CUFM_REQUIRE(p.tableau.stages >= 1 && p.tableau.stages <= kFusedMaxStages,
               "fused_sample: a tableau of 1 to " << kFusedMaxStages << " stages");
  const std::string why = fused_sampler_refusal(p.net, p.dim, p.precision, Solver::Euler);
  CUFM_REQUIRE(why.empty(), "fused_sample: " << why);
  CUFM_REQUIRE(p.tile >= 1, "fused_sample: the tile must hold at least one point");
  const std::string bad = fused_tangents_error(p);
  CUFM_REQUIRE(bad.empty(), "fused_sample: " << bad);
  const size_t bytes = static_cast<size_t>(fused_smem_floats(p)) * sizeof(float);
  const int64_t limit = opt_in_dynamic_smem<fused_sample_kernel>();
  CUFM_REQUIRE(static_cast<int64_t>(bytes) <= limit,
               "fused_sample: the tile needs " << bytes << " bytes of shared memory; this GPU gives a block "
                                               << limit);
  const int64_t blocks = (p.n + p.tile - 1) / p.tile;
  CUFM_REQUIRE(blocks <= 0x7FFFFFFF, "fused_sample: " << p.n << " points make too many tiles");
  fused_sample_kernel<<<static_cast<unsigned>(blocks), kThreads, bytes, stream>>>(p);
  CUFM_CUDA_CHECK_LAUNCH("fused_sample_kernel");
}

}  // namespace cufm::cuda
