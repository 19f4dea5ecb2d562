// Launchers of kernels/solver.cu: the sampler's noise, stage inputs, guidance and step updates.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cufm/detail/math.hpp"
#include "kernels/dtype.hpp"

namespace cufm::cuda {

// x0[i, d] = normal4(seed, kSamplerNoiseStream, i, d / 4)[d % 4]: cufm::sampler_noise on the device.
void sampler_noise(uint64_t seed, int64_t count, int dim, float* x0, cudaStream_t stream);

constexpr int kMaxStages = hd::kMaxStages;

// y = x + h * sum_j a[j] k[j] over [n, dim] arrays (x nullptr reads as zeros), evaluated with
// hd::combine_at as the CPU backend does.
using StageCombination = hd::Combination;

// The model input for a velocity evaluation at time t of the stage point y (written to y_out too
// when given). Guided: 2n rows, the conditional rows then the same points with the null class and
// the null context.
struct ModelInput {
  int64_t n = 0;
  int dim = 0;
  int time_features = 0;
  int num_classes = 0;
  const int32_t* labels = nullptr;  // DEVICE [n] per-row labels, or nullptr: label_all for all
  int32_t label_all = -1;           // -1: the null class (conditional) / none (unconditional)
  int context_dim = 0;              // K: the model's context width (0: none)
  const float* context = nullptr;   // DEVICE [n, K] per-row contexts, or nullptr: the null context
  int copies = 1;                   // 2 with guidance
  DType type = DType::F32;
  void* input = nullptr;  // [copies * n, ld]
  int ld = 0;
};
void stage_input(const StageCombination& comb, float t, const ModelInput& in, float* y_out,
                 cudaStream_t stream);

// k = v (copies == 1) or hd::guided(v_null, v_cond, w) (copies == 2); v: [copies * n, ldv].
void collect_velocity(const float* v, int ldv, int64_t n, int dim, int copies, float w, float* k,
                      cudaStream_t stream);

// x_out = the combination comb (x_out may be comb.x: each element is read before it is written).
// With err_comb set, also reduces sum_i scaled_error_sq(err_i, x_i, x_out_i) into *err_sum
// (double, deterministic), where err_i is err_comb's combination; workspace is then required.
size_t solver_workspace_bytes();
void solver_update(const StageCombination& comb, int64_t elems, float* x_out,
                   const StageCombination* err_comb, float atol, float rtol, double* err_sum, void* workspace,
                   cudaStream_t stream);
// sum_i scaled_error_sq(e_i, x_i, xn_i) with xn = zeros when nullptr (the initial step's norms).
void scaled_norm_sq(const float* e, const float* x, const float* xn, int64_t elems, float atol, float rtol,
                    double* out, void* workspace, cudaStream_t stream);

}  // namespace cufm::cuda
