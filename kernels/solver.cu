// Sampling kernels: the initial noise; each solver stage's point y = x + h sum_j a_j k_j fused
// with writing the model input rows (x | time features | context | one-hot, twice with guidance); the
// guidance combine; and the step update fused with Dormand-Prince's scaled error norm, reduced
// deterministically (double block sums, the last block adds them in order). Launch: 256 threads,
// one per (row, 4 columns) or per element, grid-stride. Cost: memory-bound, (terms + 2) * 4
// bytes per element; 10^5 samples x 2 dims is launch-bound (~3 us). Built with -fmad=false: the
// combinations round exactly as the CPU's combine().
#include <algorithm>

#include "cufm/detail/math.hpp"
#include "cufm/detail/philox.hpp"
#include "kernels/common.cuh"
#include "kernels/cuda_check.hpp"
#include "kernels/grid_sum.cuh"
#include "kernels/solver.hpp"

namespace cufm::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

int blocks_for(int64_t work, int cap) {
  return grid_for(work, kThreads, cap);
}

using hd::combine_at;  // the CPU backend's combination, to the bit

// Block sum then, in the last block to finish, the blocks' sums in order into *out.
__device__ __forceinline__ void finish_sum(double s, double* out, unsigned int* counter, double* partials) {
  double total = 0.0;
  if (grid_sum<kThreads>(s, counter, partials, &total)) *out = total;
}

__global__ void __launch_bounds__(kThreads)
    sampler_noise_kernel(uint64_t seed, int64_t count, int dim, float* __restrict__ x0) {
  const int groups = (dim + 3) / 4;
  const int64_t total = count * groups;
  for (const int64_t w : grid_stride(total)) {
    const int64_t i = w / groups;
    const int g = static_cast<int>(w - i * groups);
    float z[4];
    rng::normal4(seed, rng::kSamplerNoiseStream, static_cast<uint32_t>(i), static_cast<uint32_t>(g), z);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (4 * g + k < dim) x0[i * dim + 4 * g + k] = z[k];
    }
  }
}

// At least 4 blocks per SM: at 256 threads that leaves ptxas a budget of 64 registers, enough for
// this kernel without spills (-Xptxas -warn-spills checks every build) at half occupancy or more.
template <typename T>
__global__ void __launch_bounds__(kThreads, 4)
    stage_input_kernel(StageCombination comb, float t, ModelInput in, float* y_out) {
  T* input = static_cast<T*>(in.input);
  const int D = in.dim;
  const int groups = (D + 3) / 4;
  const int tail = (in.ld - D + 3) / 4;
  const int per_row = groups + tail;
  const int64_t total = in.n * per_row;
  for (const int64_t w : grid_stride(total)) {
    const int64_t row = w / per_row;
    const int slot = static_cast<int>(w - row * per_row);
    T* out0 = input + row * in.ld;
    T* out1 = input + (in.n + row) * in.ld;  // the null-class copy (guidance)
    if (slot < groups) {
      for (int col = 4 * slot; col < 4 * slot + 4 && col < D; ++col) {
        const int64_t i = row * D + col;
        const float y = combine_at(comb, i);
        if (y_out) y_out[i] = y;
        store(out0 + col, y);
        if (in.copies == 2) store(out1 + col, y);
      }
    } else {
      int32_t label = -1;
      if (in.num_classes > 0) {
        label = in.labels ? in.labels[row] : (in.label_all >= 0 ? in.label_all : in.num_classes);
      }
      const float* context = in.context ? in.context + row * in.context_dim : nullptr;
      const int first = D + 4 * (slot - groups);
      for (int col = first; col < first + 4 && col < in.ld; ++col) {
        store(out0 + col, hd::input_tail_value(t, in.time_features, in.context_dim, context, in.num_classes,
                                               label, col - D));
        // The guided copy: the same row with the null class and the null context.
        if (in.copies == 2) {
          store(out1 + col, hd::input_tail_value(t, in.time_features, in.context_dim, nullptr, in.num_classes,
                                                 in.num_classes, col - D));
        }
      }
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    collect_velocity_kernel(const float* __restrict__ v, int ldv, int64_t n, int dim, int copies, float w,
                            float* __restrict__ k) {
  const int64_t total = n * dim;
  for (const int64_t e : grid_stride(total)) {
    const int64_t row = e / dim;
    const int col = static_cast<int>(e - row * dim);
    const float cond = v[row * ldv + col];
    k[e] = copies == 2 ? hd::guided(v[(n + row) * ldv + col], cond, w) : cond;
  }
}

__global__ void __launch_bounds__(kThreads)
    solver_update_kernel(StageCombination comb, int64_t elems, float* x_out, StageCombination err_comb,
                         float atol, float rtol, double* err_sum, unsigned int* counter, double* partials) {
  double s = 0.0;
  for (const int64_t i : grid_stride(elems)) {
    const float x_old = comb.x ? comb.x[i] : 0.0f;
    const float x_new = combine_at(comb, i);
    x_out[i] = x_new;
    if (err_sum) s += hd::scaled_error_sq(combine_at(err_comb, i), x_old, x_new, atol, rtol);
  }
  if (err_sum) finish_sum(s, err_sum, counter, partials);
}

__global__ void __launch_bounds__(kThreads)
    scaled_norm_kernel(const float* __restrict__ e, const float* __restrict__ x, const float* __restrict__ xn,
                       int64_t elems, float atol, float rtol, double* out, unsigned int* counter,
                       double* partials) {
  double s = 0.0;
  for (const int64_t i : grid_stride(elems)) {
    s += hd::scaled_error_sq(e[i], x[i], xn ? xn[i] : 0.0f, atol, rtol);
  }
  finish_sum(s, out, counter, partials);
}

void check_combination(const char* what, const StageCombination& c) {
  CUFM_REQUIRE(c.terms >= 0 && c.terms <= kMaxStages,
               what << ": 0 to " << kMaxStages << " terms, got " << c.terms);
  for (int j = 0; j < c.terms; ++j) CUFM_REQUIRE(c.k[j], what << ": stage " << j << " is a null pointer");
}

}  // namespace

void sampler_noise(uint64_t seed, int64_t count, int dim, float* x0, cudaStream_t stream) {
  CUFM_REQUIRE(count >= 0 && dim >= 1 && (count == 0 || x0),
               "sampler_noise: bad arguments (count " << count << ", dim " << dim << ")");
  if (count == 0) return;
  sampler_noise_kernel<<<blocks_for(count * ((dim + 3) / 4), 65535), kThreads, 0, stream>>>(seed, count, dim,
                                                                                            x0);
  CUFM_CUDA_CHECK_LAUNCH("sampler_noise_kernel");
}

void stage_input(const StageCombination& comb, float t, const ModelInput& in, float* y_out,
                 cudaStream_t stream) {
  check_combination("stage_input", comb);
  CUFM_REQUIRE(
      in.n >= 1 && in.dim >= 1 && in.input && (in.copies == 1 || in.copies == 2),
      "stage_input: bad model input (n " << in.n << ", dim " << in.dim << ", copies " << in.copies << ")");
  CUFM_REQUIRE(in.context_dim >= 0 && (in.context_dim > 0 || !in.context),
               "stage_input: a context needs context_dim > 0, got " << in.context_dim);
  const int width = hd::input_width(in.dim, in.time_features, in.context_dim, in.num_classes);
  CUFM_REQUIRE(in.ld >= width, "stage_input: ld " << in.ld << " is below the input width " << width);
  const int per_row = (in.dim + 3) / 4 + (in.ld - in.dim + 3) / 4;
  const int blocks = blocks_for(in.n * per_row, 65535);
  if (in.type == DType::F32) {
    stage_input_kernel<float><<<blocks, kThreads, 0, stream>>>(comb, t, in, y_out);
  } else {
    stage_input_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(comb, t, in, y_out);
  }
  CUFM_CUDA_CHECK_LAUNCH("stage_input_kernel");
}

void collect_velocity(const float* v, int ldv, int64_t n, int dim, int copies, float w, float* k,
                      cudaStream_t stream) {
  CUFM_REQUIRE(v && k && n >= 1 && dim >= 1 && ldv >= dim && (copies == 1 || copies == 2),
               "collect_velocity: bad arguments (n " << n << ", dim " << dim << ", ldv " << ldv << ")");
  collect_velocity_kernel<<<blocks_for(n * dim, 65535), kThreads, 0, stream>>>(v, ldv, n, dim, copies, w, k);
  CUFM_CUDA_CHECK_LAUNCH("collect_velocity_kernel");
}

size_t solver_workspace_bytes() {
  return reduction_workspace_bytes(kMaxBlocks);
}

void solver_update(const StageCombination& comb, int64_t elems, float* x_out,
                   const StageCombination* err_comb, float atol, float rtol, double* err_sum, void* workspace,
                   cudaStream_t stream) {
  check_combination("solver_update", comb);
  CUFM_REQUIRE(elems >= 1 && x_out, "solver_update: bad arguments (elems " << elems << ")");
  CUFM_REQUIRE(!err_comb || (err_sum && workspace),
               "solver_update: an error estimate needs err_sum and workspace");
  StageCombination err{};
  if (err_comb) {
    check_combination("solver_update (error)", *err_comb);
    err = *err_comb;
  }
  const ReductionWorkspace rw =
      workspace ? reduction_workspace(workspace) : ReductionWorkspace{nullptr, nullptr};
  solver_update_kernel<<<blocks_for(elems, kMaxBlocks), kThreads, 0, stream>>>(
      comb, elems, x_out, err, atol, rtol, err_comb ? err_sum : nullptr, rw.counter, rw.partials);
  CUFM_CUDA_CHECK_LAUNCH("solver_update_kernel");
}

void scaled_norm_sq(const float* e, const float* x, const float* xn, int64_t elems, float atol, float rtol,
                    double* out, void* workspace, cudaStream_t stream) {
  CUFM_REQUIRE(e && x && out && workspace && elems >= 1,
               "scaled_norm_sq: bad arguments (elems " << elems << ")");
  const ReductionWorkspace rw = reduction_workspace(workspace);
  scaled_norm_kernel<<<blocks_for(elems, kMaxBlocks), kThreads, 0, stream>>>(e, x, xn, elems, atol, rtol, out,
                                                                             rw.counter, rw.partials);
  CUFM_CUDA_CHECK_LAUNCH("scaled_norm_kernel");
}

}  // namespace cufm::cuda
