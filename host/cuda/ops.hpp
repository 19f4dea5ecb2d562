// The CUDA backend's internal kernel launchers (kernels/*.cu). Every launcher checks its
// arguments, takes the stream last, and throws cufm::Error on failure.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cufm/math.hpp"
#include "cufm/trainer.hpp"

namespace cufm::cuda {

// Storage type of activations and GEMM operands.
enum class DType : int { F32 = 0, BF16 = 1 };

inline size_t dtype_size(DType t) {
  return t == DType::BF16 ? 2 : 4;
}

// ---- activation.cu: the layers' elementwise work when cuBLASLt has no fused epilogue ---------
// z, a: [rows, width] contiguous (width a multiple of 4). With bias (fp32 [width]): z += bias,
// written back; then a = act(z).
void activation_forward(Activation act, DType type, void* z, void* a, const float* bias, int64_t rows,
                        int width, cudaStream_t stream);
// In place: g = g * act'(z), turning dL/da into dL/dz.
void activation_backward(Activation act, DType type, void* g, const void* z, int64_t rows, int width,
                         cudaStream_t stream);
// z += bias (the output layer when cuBLASLt's bias epilogue is unavailable).
void bias_add(DType type, void* z, const float* bias, int64_t rows, int width, cudaStream_t stream);
// Bias gradient db[j] = sum_i g[i, j] in a fixed order (deterministic), fp32 out.
void column_sum(DType type, const void* g, int64_t rows, int width, float* db, cudaStream_t stream);

// ---- adam.cu: the optimiser over the flat parameter buffer ----------------------------------
// Device-side step state: the step counter and the coefficients of the step being run.
struct AdamDeviceState {
  uint64_t step;          // steps done (the 0-based index of the next step)
  hd::AdamCoeffs coeffs;  // written by adam_prepare for the update
  float grad_norm;        // the latest global gradient norm (0 when clipping is off)
};

// Workspace bytes for adam_prepare's deterministic norm (zeroed once; left zeroed).
size_t adam_workspace_bytes();
// Reduces the gradient norm (when clipping), computes this step's coefficients from the device
// step counter (t = step + 1, as cpu::adam_coeffs) and increments the counter. n: floats.
void adam_prepare(const OptimConfig& optim, const float* grads, size_t n, AdamDeviceState* state,
                  void* workspace, cudaStream_t stream);
// p, m, v (and ema, and a bf16 copy of p when given) updated in one pass; n a multiple of 4.
void adam_update(const AdamDeviceState* state, const float* grads, size_t n, float* params, float* m,
                 float* v, float* ema, __nv_bfloat16* params_bf16, cudaStream_t stream);

// ---- convert.cu --------------------------------------------------------------------------
void convert_to_bf16(const float* src, __nv_bfloat16* dst, size_t n, cudaStream_t stream);

// ---- solver.cu: sampling -------------------------------------------------------------------
// x0[i, d] = normal4(seed, kSamplerNoiseStream, i, d / 4)[d % 4]: cufm::sampler_noise on the device.
void sampler_noise(uint64_t seed, int64_t count, int dim, float* x0, cudaStream_t stream);

constexpr int kMaxStages = 7;

// y = x + h * sum_j a[j] k[j], as the CPU's combine() (accumulate left to right, then x + h acc).
struct StageCombination {
  const float* x = nullptr;         // [n, dim]; nullptr reads as zeros
  const float* k[kMaxStages] = {};  // [n, dim] each
  float a[kMaxStages] = {};
  int terms = 0;
  float h = 0.0f;
};

// The model input for a velocity evaluation at time t of the stage point y (written to y_out too
// when given). Guided: 2n rows, the conditional rows then the same points with the null class.
struct ModelInput {
  int64_t n = 0;
  int dim = 0;
  int time_features = 0;
  int num_classes = 0;
  const int32_t* labels = nullptr;  // DEVICE [n] per-row labels, or nullptr: label_all for all
  int32_t label_all = -1;           // -1: the null class (conditional) / none (unconditional)
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

// x_out = combination; y_plain (optional) = x + h * sum... is comb itself. With err_comb set,
// also reduces sum_i scaled_error_sq(err_i, x_i, x_out_i) into *err_sum (double, deterministic).
size_t solver_workspace_bytes();
void solver_update(const StageCombination& comb, int64_t elems, float* x_out,
                   const StageCombination* err_comb, float atol, float rtol, double* err_sum, void* workspace,
                   cudaStream_t stream);
// sum_i scaled_error_sq(e_i, x_i, xn_i) with xn = zeros when nullptr (the initial step's norms).
void scaled_norm_sq(const float* e, const float* x, const float* xn, int64_t elems, float atol, float rtol,
                    double* out, void* workspace, cudaStream_t stream);

}  // namespace cufm::cuda
