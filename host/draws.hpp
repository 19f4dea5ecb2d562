// The host twins of the kernels' draws and loss for the caller's rows (internal), shared by every
// backend and the front end: Trainer::step(batch) on the CPU, cufm::prepare_flow and
// cufm::flow_mse, and the tests that hold the kernels to them.
#pragma once

#include <cstdint>
#include <vector>

#include "cufm/model.hpp"
#include "cufm/trainer.hpp"

namespace cufm::detail {

// Elementwise loops over fewer elements run on the calling thread: waking OpenMP's team costs more
// than the work, and its spinning workers would take the cores from the caller's own threads
// (PyTorch's, around cufm.torch). The loops' results do not depend on how they are split.
constexpr int64_t kHostParallelMin = int64_t{1} << 15;

// The OpenMP threads of the host's loops, these twins' and the CPU backend's (0: all cores; at
// most max_host_threads()). The CPU backend's set_threads also sets OpenBLAS's.
void set_host_threads(int threads);
// 4x the cores: more threads only add contention.
int max_host_threads();

// The draws of training step `step` for the caller's batch of B rows (Trainer::step(batch)): row
// i's t and label dropout from block 0 of its Philox counter and eps from blocks 1.., as
// fm_prepare draws them with rows_in_order; labels_out: the caller's labels, the null class where
// dropped (conditional models; left empty otherwise); context_drop: 1 where the row's context is
// dropped (models with a context; left empty otherwise).
void draw_given(const MlpConfig& model, const TrainConfig& config, uint64_t step, int64_t B,
                const int32_t* labels, std::vector<float>& t, std::vector<float>& eps,
                std::vector<int32_t>& labels_out, std::vector<uint8_t>& context_drop);

// The MSE of v [B, D] against u = x1 - (1 - sigma_min) eps, and grad = 2 (v - u) / (B D) when
// non-null: summed in double per block of 256 rows, then the blocks in order (fm_loss_grad's
// order), so the bits do not depend on the thread count.
float mse_given(int64_t B, int D, const float* v, const float* x1, const float* eps, float sigma_min,
                float* grad);

// mse_given's rows [r0, r1) of a batch of B: v and grad hold those rows only; x1 and eps the whole
// batch's. Returns their sum of squared differences, in double.
double mse_rows(int64_t B, int D, int64_t r0, int64_t r1, const float* v, const float* x1, const float* eps,
                float sigma_min, float* grad);

// Rademacher probes (+1 or -1) for points [first, first + n): out [n, P, D], from Philox's probe
// stream: point i's sign k = p * D + d is bit k % 32 of word (k / 32) % 4 of block k / 128.
void rademacher_probes(uint64_t seed, int64_t first, int64_t n, int P, int D, float* out);

}  // namespace cufm::detail
