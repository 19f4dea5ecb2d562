// The CPU backend's building blocks (internal). Each is the reference its CUDA kernel is tested
// against; all of them call the shared math in cufm/math.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "cufm/dataset.hpp"
#include "cufm/detail/math.hpp"
#include "cufm/device.hpp"
#include "cufm/loss.hpp"
#include "cufm/model.hpp"
#include "cufm/sampler.hpp"
#include "cufm/trainer.hpp"
#include "host/backend.hpp"
#include "host/cpu/cpu_coupling.hpp"
#include "host/draws.hpp"
#include "host/field_checks.hpp"
#include "host/solver_driver.hpp"

namespace cufm::cuda {
struct FusedSample;
struct FusedTrain;
}  // namespace cufm::cuda

namespace cufm::cpu {

// The shared host twins and checks (host/draws.hpp, host/field_checks.hpp), under the names the CPU
// backend and its tests use.
constexpr int64_t kParallelMin = detail::kHostParallelMin;
using detail::check_field_context;
using detail::check_field_labels;
using detail::draw_given;
using detail::mse_given;
using detail::mse_rows;
using detail::rademacher_probes;


// Per-step inputs drawn from Philox: the first layer's input [B, input_dim] with x_t, the time
// features, the context and the class one-hot, plus each row's t and data index (for the loss).
struct PreparedBatch {
  std::vector<float> input;         // [B, model.input_dim()]
  std::vector<float> t;             // [B]
  std::vector<uint32_t> index;      // [B]
  std::vector<int32_t> label;       // [B] after dropout (the null class when dropped), or empty
  std::vector<float> eps;           // [B, D] each row's noise, as x_t took it (the loss reads it back)
  std::vector<uint32_t> noise_row;  // [B] the coupling's pairs (row i takes row noise_row[i]'s noise
                                    // stream), or empty for the independent coupling
  CouplingScratch coupling;
};

// The CPU twin of the fm_prepare kernel (kernels/fm_prepare.cu), bit for bit; with a coupling, it
// computes the pairs first (fm_couple's reference).
void fm_prepare(const MlpConfig& model, const TrainConfig& config, const Dataset& data, uint64_t step,
                PreparedBatch& out);

// The model input of points [first, first + rows) of x at per-row times t_rows (nullptr: t for all)
// with their labels (nullptr: the null class) and context rows (nullptr: the null context); guided:
// then the same rows with the null class and the null context.
void write_field_inputs(const MlpConfig& model, const float* x, const float* t_rows, float t,
                        const int32_t* labels, const float* context, int64_t first, int64_t rows, bool guided,
                        float* input);

// Fills row i of the first layer's input from x [D], t, a label (-1: unconditional model) and a
// context row [context_dim] (nullptr: the null context; ignored without a context).
void write_input_row(const MlpConfig& model, const float* x, float t, int32_t label, const float* context,
                     float* row);

// The CPU twin of the fm_loss_grad kernel. Loss and dL/dv for the batch: regenerates eps from the
// counters, u = x1 - (1 - s) eps, loss = mean((v - u)^2), grad = 2 (v - u) / (B D). The sum runs
// in a fixed order (blocks of 256 rows, then the blocks in order), so its bits do not depend on
// the thread count.
float fm_loss_grad(const MlpConfig& model, const TrainConfig& config, const Dataset& data, uint64_t step,
                   const PreparedBatch& batch, const float* v, float* grad);

// fm_loss_grad's rows [r0, r1) (a block of its 256-row blocks): v and grad hold those rows only
// ([r1 - r0, D]); returns their sum of squared differences, in double, as fm_loss_grad sums them.
double fm_loss_rows(const MlpConfig& model, const TrainConfig& config, const Dataset& data, uint64_t step,
                    const PreparedBatch& batch, int64_t r0, int64_t r1, const float* v, float* grad);

// The model's velocity at n points, in chunks of 8192 rows (the one CPU evaluation behind
// Model::forward, VelocityField and the CPU sampler): v [n, D] at x [n, D], with per-row times
// t_rows [n] or, when nullptr, t for every row, and labels [n] (nullptr: the null class of a
// conditional model) and context [n, context_dim] (nullptr: the null context). guidance (non-null:
// w) runs each chunk's conditional and null rows as one pass of 2 x rows and returns hd::guided.
// Labels must lie in [0, num_classes] (the last: null).
struct FieldScratch;
void evaluate_model(const MlpConfig& model, const float* params, const float* x, const float* t_rows, float t,
                    const int32_t* labels, const float* context, int64_t n, const float* guidance, float* v,
                    FieldScratch& scratch);

// The chunked, guided forward behind evaluate_model and evaluate_divergence: over chunks of `chunk`
// points, the model input into `input` (guided: the conditional rows, then the null rows, one pass
// of 2 x rows), mlp_forward into ws, and v [n, D] (guided: hd::guided of the two passes); after each
// chunk, after(first, rows) (when set) runs with ws holding that chunk's activations.
struct MlpWorkspace;
using ChunkDone = std::function<void(int64_t first, int64_t rows)>;
void forward_chunks(const MlpConfig& model, const float* params, const float* x, const float* t_rows, float t,
                    const int32_t* labels, const float* context, int64_t n, const float* guidance, int64_t chunk,
                    std::vector<float>& input, MlpWorkspace& ws, float* v, const ChunkDone& after);

// A forward/backward workspace for one batch size and precision. FP32 keeps fp32 activations; BF16
// (the GPU's bf16 semantics: fp32 master weights, bf16 GEMM inputs, fp32 accumulation and outputs)
// keeps the GEMMs' inputs rounded to bf16 (the layer input, the weights, each hidden layer's
// activations, each backward gradient) and the pre-activations, the output and the input gradients
// in fp32. Set `precision` before the first mlp_forward; a change takes effect at the next one.
struct MlpWorkspace {
  Precision precision = Precision::FP32;
  int64_t batch = 0;
  Precision sized_for = Precision::FP32;  // the precision the buffers were allocated for
  std::vector<std::vector<float>> pre;    // pre-activations of each hidden layer [B, out_l]
  std::vector<std::vector<float>> act;    // FP32: activations of each hidden layer [B, out_l]
  std::vector<float> out;                 // [B, D]
  std::vector<float> dbuf0, dbuf1;        // backward scratch, [B, max width] (BF16: dbuf0 only)
  // BF16 only (bf16 bits): the layer input [B, in], the weights and biases as ParamLayout lays them
  // out (rounded by mlp_forward, read by the mlp_backward that follows it), each hidden layer's
  // activations [B, out_l], and the backward's gradient [B, max width].
  std::vector<uint16_t> in16, w16, dz16;
  std::vector<std::vector<uint16_t>> act16;
  void resize(const MlpConfig& model, int64_t batch);
  // The floats resize(model, batch) allocates at `precision`, without allocating (the memory
  // checks' estimate).
  static uint64_t floats_for(const MlpConfig& model, int64_t batch, Precision precision = Precision::FP32);
};

// An fp32 value rounded to the nearest bf16, ties to even (NaN stays NaN): its 16 bits.
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
// out[i] = bf16_bits(x[i]) for n values (vectorised; on the OpenMP team when n is large).
void round_to_bf16(const float* x, int64_t n, uint16_t* out);

// Forward over a batch: keeps what the backward needs in the workspace; result in ws.out.
void mlp_forward(const MlpConfig& model, const float* params, const float* input, int64_t batch,
                 MlpWorkspace& ws);
// Backward from dL/dout [B, D]: writes the gradient of every parameter into grads (overwrites).
void mlp_backward(const MlpConfig& model, const float* params, const float* input, int64_t batch,
                  const float* dout, MlpWorkspace& ws, float* grads);

// The fused training step (host/cpu/cpu_fused.cpp): forward, loss and backward over blocks of 256
// rows, each block's activations kept in cache through all the layers, for narrow fp32 models on
// CPUs with AVX-512 (fused_step_applies says when; CUFM_CPU_FUSED=off turns it off, =on takes any
// width). loss_rows(r0, r1, v, grad) gives rows [r0, r1)'s dL/dv from their v (both [r1 - r0, D])
// and returns their loss sum; it is called from several threads at once, on disjoint rows. Writes
// every parameter's gradient into grads and returns the batch's loss sum (the 256-row blocks' sums
// added in order). The bits depend on the batch size, never on the thread count.
using RowLoss = std::function<double(int64_t r0, int64_t r1, const float* v, float* grad)>;
struct FusedScratch {
  std::vector<float> partials;
  std::vector<double> block_loss;
};
bool fused_step_applies(const MlpConfig& model, Precision precision);
// The floats a fused step over `batch` rows allocates (its partial gradients, the packed weights and
// every thread's block buffers), without allocating: the memory checks' estimate.
uint64_t fused_step_floats(const MlpConfig& model, int64_t batch);
double fused_step(const MlpConfig& model, const float* params, const float* input, int64_t batch,
                  const RowLoss& loss_rows, FusedScratch& scratch, float* grads);

// The loss and gradient on a batch with the caller's draws (cufm::loss_and_grad, Trainer::step(batch)):
// writes every parameter's gradient into grads, returns the loss (summed in a fixed order).
struct GivenScratch {
  std::vector<float> input, dout;
  MlpWorkspace ws;
  FusedScratch fused;
};
float loss_grad_given(const MlpConfig& model, const float* params, const FlowBatch& batch, float sigma_min,
                      GivenScratch& scratch, float* grads);

// The velocity and its divergence at n points (log-likelihoods): v [n, D] as evaluate_model gives
// it, and div [n] = (1/P) sum_p e_p . J e_p with J = dv/dx, by forward-mode tangents: P tangent rows
// per point through the MLP, a GEMM per layer over P times the rows. probes [n, P, D]: Hutchinson's
// directions; nullptr: exact, P = D and e_p the unit vectors (the sum is the trace, not divided).
// Guided: both fields' divergences, combined as the velocities are.
struct DivergenceScratch;
void evaluate_divergence(const MlpConfig& model, const float* params, const float* x, float t,
                         const int32_t* labels, const float* context, int64_t n, const float* guidance,
                         const float* probes, int P, float* v, float* div, DivergenceScratch& scratch);


// What evaluate_model keeps between calls (one chunk's inputs and activations).
struct FieldScratch {
  std::vector<float> input;
  MlpWorkspace ws;
};

// The solvers over host arrays (host/host_solver.cpp), under the names the CPU backend uses.
using Field = detail::HostField;
inline OdeResult integrate(const Field& f, std::vector<float> x0, Solver solver, int steps, float atol,
                           float rtol, int max_steps, float t0, float t1, std::vector<float>* times,
                           std::vector<float>* states) {
  return detail::integrate_field(f, std::move(x0), solver, steps, atol, rtol, max_steps, t0, t1, times,
                                 states);
}

// Adam coefficients for step t (1-based) and the clipping factor for a gradient norm.
hd::AdamCoeffs adam_coeffs(const OptimConfig& o, uint64_t t, float grad_norm);
// Global L2 norm of a buffer, summed in double in a fixed order.
double l2_norm(const float* g, size_t n);
// One optimiser step (and EMA) over the flat buffers.
void adam_step(const hd::AdamCoeffs& c, const float* grads, size_t n, float* params, float* m, float* v,
               float* ema);

// OpenBLAS's kernels, checked once against the CPU (host/cpu/cpu_blas.cpp): where OpenBLAS chose
// kernels older than the CPU runs, it is asked to choose again (set_threads calls this, before any
// CPU backend's BLAS call). blas_kernels() says which kernels run, and why.
void ensure_blas_kernels();
std::string blas_kernels();
// The instruction sets that decide the CPU backend's kernels, as this CPU reports them
// ("x86-64 avx2 fma avx512f avx512bf16", with amx-tile and amx-bf16 where present).
std::string cpu_isa();

// Row-major C [M, N] = alpha op(A) op(B) + beta C through the GEMM provider this machine and shape
// get (host/cpu/cpu_gemm.cpp): oneDNN's sgemm where the build has it, or OpenBLAS's. The choice never
// depends on the thread count or the run. gemm_providers() says which runs.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
std::string gemm_providers();
const char* gemm_provider_for(int64_t M, int64_t N, int64_t K);  // "oneDNN" or "OpenBLAS"

// Row-major C [M, N] = op(A) op(B) (+ C when accumulate), A and B bf16 (bits), accumulated and
// written in fp32: oneDNN's matmul (AMX or AVX512_BF16). Throws cufm::Error where
// bf16_unavailable_reason() is not empty.
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
               const uint16_t* B, int64_t ldb, bool accumulate, float* C, int64_t ldc);
// Empty when the CPU backend runs Precision::BF16 on this machine and build, else why not.
std::string bf16_unavailable_reason();
// Throws cufm::Error naming why `who` cannot run at precision p on the CPU backend (TF32 never can;
// BF16 where bf16_unavailable_reason() says so).
void check_cpu_precision(Precision p, const char* who);

// Threads for the CPU backend's own loops and for OpenBLAS (0: all cores; at most max_threads()).
void set_threads(int threads);
// 4x the cores: the most threads set_threads uses (the CLI says so when asked for more).
int max_threads();

struct DivergenceScratch {
  std::vector<float> input, tan_a, tan_b, dirs, u;
  MlpWorkspace ws;
};

// The fused sampler's CPU twin (host/cpu/cpu_fused_sampler.cpp): p over HOST arrays, the block
// program of kernels/fused_sampler.hpp run tile by tile, one thread a tile.
void fused_sample(const cuda::FusedSample& p);

// The fused training step's CPU twin (host/cpu/cpu_fused_train.cpp): p over HOST arrays, the block
// program of kernels/fused_train.hpp run block by block, with the rows' targets u [B, D]; grads
// [p.total] and *loss as the kernel and its second pass write them (p.partial must be zero where
// no layer lies, as on the GPU).
void fused_train(const cuda::FusedTrain& p, const float* targets, float* grads, float* loss);

// The CPU backend's trainer (host/cpu/cpu_trainer.cpp); `state` as Backend::make_trainer takes it.
std::unique_ptr<detail::TrainBackend> make_trainer(const MlpConfig& model, const TrainConfig& config,
                                                   const Dataset& data, TrainState state, int threads,
                                                   Precision precision);

}  // namespace cufm::cpu
