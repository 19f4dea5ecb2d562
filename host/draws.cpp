// The host twins of the kernels' draws and loss on the caller's rows (host/draws.hpp): the same
// Philox streams and the same arithmetic (cufm/detail/), so their bits are the kernels'.
#include "host/draws.hpp"

#include <omp.h>

#include <algorithm>

#include "cufm/detail/math.hpp"
#include "cufm/detail/philox.hpp"

namespace cufm::detail {

int max_host_threads() {
  return 4 * std::max(1, omp_get_num_procs());
}

void set_host_threads(int threads) {
  omp_set_num_threads(threads > 0 ? std::min(threads, max_host_threads()) : omp_get_num_procs());
}

void draw_given(const MlpConfig& model, const TrainConfig& config, uint64_t step, int64_t B,
                const int32_t* labels, std::vector<float>& t, std::vector<float>& eps,
                std::vector<int32_t>& labels_out, std::vector<uint8_t>& context_drop) {
  const int D = model.data_dim;
  t.resize(static_cast<size_t>(B));
  eps.resize(static_cast<size_t>(B) * D);
  labels_out.resize(model.num_classes > 0 ? static_cast<size_t>(B) : 0);
  context_drop.resize(model.context_dim > 0 ? static_cast<size_t>(B) : 0);
  const PathConfig& path = config.path;
#pragma omp parallel for schedule(static) if (B * D >= kHostParallelMin)
  for (int64_t i = 0; i < B; ++i) {
    const uint32_t row = static_cast<uint32_t>(i);
    const hd::SampleDraw d =
        hd::draw_sample(config.seed, step, row, static_cast<uint32_t>(B), path.time_sampling, path.logit_mean,
                        path.logit_std, config.label_dropout);
    t[i] = d.t;
    if (model.num_classes > 0) labels_out[i] = d.drop_label ? model.null_class() : labels[i];
    if (model.context_dim > 0)
      context_drop[i] = hd::draw_context_drop(config.seed, step, row, config.context_dropout);
    float z[4];
    for (int g = 0; g < (D + 3) / 4; ++g) {
      rng::normal4(config.seed, step, row, static_cast<uint32_t>(g), z);
      for (int k = 0; k < 4 && 4 * g + k < D; ++k) eps[static_cast<size_t>(i) * D + 4 * g + k] = z[k];
    }
  }
}

double mse_rows(int64_t B, int D, int64_t r0, int64_t r1, const float* v, const float* x1, const float* eps,
                float sigma_min, float* grad) {
  const float scale = 2.0f / (static_cast<float>(B) * static_cast<float>(D));
  double sum = 0.0;
  for (int64_t j = r0 * D; j < r1 * D; ++j) {
    const float diff = v[j - r0 * D] - hd::path_target(x1[j], eps[j], sigma_min);
    if (grad) grad[j - r0 * D] = diff * scale;
    sum += static_cast<double>(diff) * diff;
  }
  return sum;
}

float mse_given(int64_t B, int D, const float* v, const float* x1, const float* eps, float sigma_min,
                float* grad) {
  // dL/dv = 2 (v - u) / (B D); the loss summed in double per block of 256 rows, then the blocks in
  // order: the bits do not depend on the thread count.
  constexpr int64_t kRows = 256;
  const int64_t blocks = (B + kRows - 1) / kRows;
  std::vector<double> partial(blocks);
#pragma omp parallel for schedule(static) if (B * D >= kHostParallelMin)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t r0 = blk * kRows, r1 = std::min(B, r0 + kRows);
    partial[blk] = mse_rows(B, D, r0, r1, v + r0 * D, x1, eps, sigma_min, grad ? grad + r0 * D : nullptr);
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return static_cast<float>(total / (static_cast<double>(B) * D));
}

void rademacher_probes(uint64_t seed, int64_t first, int64_t n, int P, int D, float* out) {
  const int64_t signs = static_cast<int64_t>(P) * D;
#pragma omp parallel for schedule(static) if (n * signs >= (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t point = static_cast<uint32_t>(first + i);
    float* o = out + i * signs;
    for (int64_t blk = 0; blk * 128 < signs; ++blk) {
      const Philox4x32 r = rng::draw(seed, rng::kProbeStream, point, static_cast<uint32_t>(blk));
      for (int64_t k = blk * 128; k < std::min(signs, (blk + 1) * 128); ++k) {
        const uint32_t word = r.v[(k / 32) % 4];
        o[k] = ((word >> (k % 32)) & 1u) ? 1.0f : -1.0f;
      }
    }
  }
}

}  // namespace cufm::detail
