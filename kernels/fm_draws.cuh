// A training row's draws, for fm_prepare and fm_loss_grad alike: Philox's from the (seed, step,
// row) counters (cuFM's own batches; with FmBatch::rows_in_order, row i takes data row i), or the
// caller's (FmBatch::given_t and given_eps: row i takes t[i], eps[i, :] and data row i, with no
// label dropout).
#pragma once

#include <cstdint>

#include "cufm/detail/math.hpp"
#include "cufm/detail/philox.hpp"
#include "cufm/kernels.hpp"

namespace cufm::kernels {

// The launchers' check of the draws' arguments (defined in fm_prepare.cu); `who` names the launcher.
void check_draws(const FmBatch& batch, const char* who);

__device__ __forceinline__ uint64_t fm_step(const FmBatch& b) {
  return b.step ? *b.step : 0;  // the given draws need no step
}

__device__ __forceinline__ hd::SampleDraw fm_row_draw(const FmBatch& b, uint64_t step, uint32_t row) {
  if (b.given_t) return hd::SampleDraw{b.given_t[row], row, false};
  hd::SampleDraw d = hd::draw_sample(b.seed, step, row, b.n_data, b.time_sampling, b.logit_mean, b.logit_std,
                                     b.label_dropout);
  if (b.rows_in_order) d.data_index = row;
  return d;
}

// eps of columns [4 group, 4 group + 4) of the row (columns past dim read as 0 from the given eps).
__device__ __forceinline__ void fm_row_eps(const FmBatch& b, uint64_t step, uint32_t row, int group,
                                           float eps[4]) {
  if (b.given_eps) {
    const float* e = b.given_eps + static_cast<size_t>(row) * b.dim;
#pragma unroll
    for (int k = 0; k < 4; ++k) eps[k] = 4 * group + k < b.dim ? e[4 * group + k] : 0.0f;
    return;
  }
  rng::normal4(b.seed, step, b.noise_row ? b.noise_row[row] : row, static_cast<uint32_t>(group), eps);
}

}  // namespace cufm::kernels
