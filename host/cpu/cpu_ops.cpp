// The CPU backend's per-step elementwise work: drawing the batch, the loss and its gradient, and
// the optimiser. Each loop runs on OpenMP threads and gives the same bits for any thread count.
#include "host/cpu/cpu_ops.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cufm/detail/math.hpp"
#include "cufm/detail/optim.hpp"
#include "cufm/detail/philox.hpp"
#include "cufm/error.hpp"
#include "host/cpu/cpu_simd.hpp"

namespace cufm::cpu {

namespace {
// The part of an input row after x_t: the time features, the context and the class one-hot.
void write_input_tail(const MlpConfig& model, float t, int32_t label, const float* context, float* row) {
  const int D = model.data_dim, tail = model.input_dim() - D;
  for (int c = 0; c < tail; ++c) {
    row[D + c] =
        hd::input_tail_value(t, model.time_features, model.context_dim, context, model.num_classes, label, c);
  }
}
}  // namespace

void write_input_row(const MlpConfig& model, const float* x, float t, int32_t label, const float* context,
                     float* row) {
  std::memcpy(row, x, sizeof(float) * model.data_dim);
  write_input_tail(model, t, label, model.context_dim > 0 ? context : nullptr, row);
}

namespace {
// The step's pairs (out.noise_row): each row's x1 and eps as fm_prepare draws them, grouped by the
// label after dropout, coupled.
void couple_batch(const MlpConfig& model, const TrainConfig& config, const Dataset& data, uint64_t step,
                  PreparedBatch& out) {
  const int B = config.batch_size, D = model.data_dim;
  const PathConfig& path = config.path;
  std::vector<float> x1(static_cast<size_t>(B) * D), eps(static_cast<size_t>(B) * D);
  std::vector<int32_t> groups(model.num_classes > 0 ? B : 0);
#pragma omp parallel for schedule(static) if (B * D >= kParallelMin)
  for (int i = 0; i < B; ++i) {
    const uint32_t row = static_cast<uint32_t>(i);
    const hd::SampleDraw d =
        hd::draw_sample(config.seed, step, row, static_cast<uint32_t>(data.n), path.time_sampling,
                        path.logit_mean, path.logit_std, config.label_dropout);
    std::memcpy(x1.data() + static_cast<size_t>(i) * D, data.x.data() + static_cast<size_t>(d.data_index) * D,
                sizeof(float) * D);
    float z[4];
    for (int g = 0; g < (D + 3) / 4; ++g) {
      rng::normal4(config.seed, step, row, static_cast<uint32_t>(g), z);
      for (int k = 0; k < 4 && 4 * g + k < D; ++k) eps[static_cast<size_t>(i) * D + 4 * g + k] = z[k];
    }
    if (model.num_classes > 0) groups[i] = d.drop_label ? model.null_class() : data.labels[d.data_index];
  }
  out.noise_row.resize(static_cast<size_t>(B));
  couple(coupling_config(config, step), B, D, x1.data(), eps.data(), groups.empty() ? nullptr : groups.data(),
         out.noise_row.data(), out.coupling);
}
}  // namespace

void fm_prepare(const MlpConfig& model, const TrainConfig& config, const Dataset& data, uint64_t step,
                PreparedBatch& out) {
  const int B = config.batch_size, D = model.data_dim, in = model.input_dim();
  out.input.resize(static_cast<size_t>(B) * in);
  out.t.resize(B);
  out.index.resize(B);
  out.eps.resize(static_cast<size_t>(B) * D);
  out.label.resize(model.num_classes > 0 ? B : 0);
  const PathConfig& path = config.path;
  const uint32_t n_data = static_cast<uint32_t>(data.n);
  const int K = model.context_dim;
  if (config.coupling != Coupling::Independent) {
    couple_batch(model, config, data, step, out);
  } else {
    out.noise_row.clear();
  }
  const uint32_t* noise_row = out.noise_row.empty() ? nullptr : out.noise_row.data();
#pragma omp parallel for schedule(static)
  for (int i = 0; i < B; ++i) {
    const hd::SampleDraw d =
        hd::draw_sample(config.seed, step, static_cast<uint32_t>(i), n_data, path.time_sampling,
                        path.logit_mean, path.logit_std, config.label_dropout);
    const float* x1 = data.x.data() + static_cast<size_t>(d.data_index) * D;
    float xt[4];
    float* row = out.input.data() + static_cast<size_t>(i) * in;
    const uint32_t noise = noise_row ? noise_row[i] : static_cast<uint32_t>(i);
    // x_t straight into the row; the time features and one-hot follow.
    for (int g = 0; g < (D + 3) / 4; ++g) {
      rng::normal4(config.seed, step, noise, static_cast<uint32_t>(g), xt);
      for (int k = 0; k < 4 && 4 * g + k < D; ++k) {
        row[4 * g + k] = hd::path_xt(d.t, x1[4 * g + k], xt[k], path.sigma_min);
        out.eps[static_cast<size_t>(i) * D + 4 * g + k] = xt[k];
      }
    }
    int32_t label = -1;
    if (model.num_classes > 0) {
      label = d.drop_label ? model.null_class() : data.labels[d.data_index];
      out.label[i] = label;
    }
    const float* context = nullptr;
    if (K > 0 &&
        !hd::draw_context_drop(config.seed, step, static_cast<uint32_t>(i), config.context_dropout)) {
      context = data.context.data() + static_cast<size_t>(d.data_index) * K;
    }
    write_input_tail(model, d.t, label, context, row);
    out.t[i] = d.t;
    out.index[i] = d.data_index;
  }
}

double fm_loss_rows(const MlpConfig& model, const TrainConfig& config, const Dataset& data, uint64_t step,
                    const PreparedBatch& batch, int64_t r0, int64_t r1, const float* v, float* grad) {
  const int B = config.batch_size, D = model.data_dim;
  const float scale = 2.0f / (static_cast<float>(B) * static_cast<float>(D));
  const float sigma_min = config.path.sigma_min;
  double sum = 0.0;
  // The noise fm_prepare drew (the kernel draws it again from the row's counter: the same values).
  const bool kept = batch.eps.size() == static_cast<size_t>(B) * D;
  for (int64_t i = r0; i < r1; ++i) {
    const float* x1 = data.x.data() + static_cast<size_t>(batch.index[i]) * D;
    const uint32_t noise = batch.noise_row.empty() ? static_cast<uint32_t>(i) : batch.noise_row[i];
    float eps[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int g = 0; g < (D + 3) / 4; ++g) {
      if (kept) {
        for (int k = 0; k < 4 && 4 * g + k < D; ++k)
          eps[k] = batch.eps[static_cast<size_t>(i) * D + 4 * g + k];
      } else {
        rng::normal4(config.seed, step, noise, static_cast<uint32_t>(g), eps);
      }
      for (int k = 0; k < 4 && 4 * g + k < D; ++k) {
        const size_t j = static_cast<size_t>(i - r0) * D + 4 * g + k;
        const float diff = v[j] - hd::path_target(x1[4 * g + k], eps[k], sigma_min);
        grad[j] = diff * scale;
        sum += static_cast<double>(diff) * diff;
      }
    }
  }
  return sum;
}

float fm_loss_grad(const MlpConfig& model, const TrainConfig& config, const Dataset& data, uint64_t step,
                   const PreparedBatch& batch, const float* v, float* grad) {
  const int B = config.batch_size, D = model.data_dim;
  constexpr int kRows = 256;
  const int blocks = (B + kRows - 1) / kRows;
  std::vector<double> partial(blocks);
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < blocks; ++blk) {
    const int64_t r0 = static_cast<int64_t>(blk) * kRows, r1 = std::min<int64_t>(B, r0 + kRows);
    partial[blk] = fm_loss_rows(model, config, data, step, batch, r0, r1, v + r0 * D, grad + r0 * D);
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return static_cast<float>(total / (static_cast<double>(B) * D));
}

float loss_grad_given(const MlpConfig& m, const float* params, const FlowBatch& b, float sigma_min,
                      GivenScratch& scratch, float* grads) {
  const int D = m.data_dim, in = m.input_dim();
  const int64_t B = b.size;
  std::vector<float>& input = scratch.input;
  input.resize(static_cast<size_t>(B) * in);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B; ++i) {
    float* row = input.data() + i * in;
    // x_t straight into the row; the time features and the one-hot follow.
    for (int d = 0; d < D; ++d) row[d] = hd::path_xt(b.t[i], b.x1[i * D + d], b.eps[i * D + d], sigma_min);
    const int32_t label = m.num_classes > 0 ? (b.labels ? b.labels[i] : m.null_class()) : -1;
    const bool null_context = !b.context || (b.context_null && b.context_null[i]);
    write_input_tail(m, b.t[i], label, null_context ? nullptr : b.context + i * m.context_dim, row);
  }
  MlpWorkspace& ws = scratch.ws;
  if (fused_step_applies(m, ws.precision)) {
    const RowLoss rows = [&](int64_t r0, int64_t r1, const float* v, float* grad) {
      return mse_rows(B, D, r0, r1, v, b.x1, b.eps, sigma_min, grad);
    };
    const double sum = fused_step(m, params, input.data(), B, rows, scratch.fused, grads);
    return static_cast<float>(sum / (static_cast<double>(B) * D));
  }
  mlp_forward(m, params, input.data(), B, ws);
  scratch.dout.resize(static_cast<size_t>(B) * D);
  const float loss = mse_given(B, D, ws.out.data(), b.x1, b.eps, sigma_min, scratch.dout.data());
  mlp_backward(m, params, input.data(), B, scratch.dout.data(), ws, grads);
  return loss;
}

hd::AdamCoeffs adam_coeffs(const OptimConfig& o, uint64_t t, float grad_norm) {
  return hd::adam_coeffs(hd::adam_hyper(o), t, grad_norm);
}

double l2_norm(const float* g, size_t n) {
  constexpr size_t kChunk = 1 << 14;
  const size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks);
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < chunks; ++c) {
    double s = 0.0;
    for (size_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) s += static_cast<double>(g[i]) * g[i];
    partial[c] = s;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return std::sqrt(total);
}

namespace {
CUFM_SIMD_CLONES void adam_range(const hd::AdamCoeffs& c, const float* grads, size_t begin, size_t end,
                                 float* params, float* m, float* v, float* ema) {
  for (size_t i = begin; i < end; ++i) hd::adam_update(c, grads[i], params[i], m[i], v[i]);
  if (ema) {
    for (size_t i = begin; i < end; ++i) ema[i] = hd::ema_update(ema[i], params[i], c.ema_decay);
  }
}
}  // namespace

void adam_step(const hd::AdamCoeffs& c, const float* grads, size_t n, float* params, float* m, float* v,
               float* ema) {
  constexpr size_t kChunk = 1 << 14;
  const size_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (size_t ch = 0; ch < chunks; ++ch) {
    adam_range(c, grads, ch * kChunk, std::min(n, (ch + 1) * kChunk), params, m, v, ema);
  }
}

int max_threads() {
  return detail::max_host_threads();
}

void set_threads(int threads) {
  ensure_blas_kernels();
  // More threads than 4x the cores only adds contention (and OpenBLAS's buffers per thread).
  detail::set_host_threads(threads);
  openblas_set_num_threads(omp_get_max_threads());
}

}  // namespace cufm::cpu
