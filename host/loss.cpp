// loss_and_grad: the flow-matching loss and gradient on the caller's batch and draws, on the CPU
// (here) or the GPU (host/cuda/cuda_loss.cpp, through the trainer's own kernels).
#include "cufm/loss.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cufm/error.hpp"
#include "cufm/detail/math.hpp"
#include "host/backend.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "host/memory.hpp"

namespace cufm {

namespace {

void check_batch(const MlpConfig& m, const FlowBatch& b, const PathConfig& path) {
  m.validate();
  CUFM_REQUIRE(b.size >= 1 && b.size <= INT32_MAX,
               "loss_and_grad: batch size must be in [1, 2^31 - 1], got " << b.size);
  CUFM_REQUIRE(b.x1 && b.t && b.eps, "loss_and_grad: x1, t and eps must not be null");
  CUFM_REQUIRE(!b.labels || m.num_classes > 0, "loss_and_grad: labels given, but the model is unconditional");
  CUFM_REQUIRE(std::isfinite(path.sigma_min) && path.sigma_min >= 0.0f && path.sigma_min < 1.0f,
               "loss_and_grad: sigma_min must be in [0, 1), got " << path.sigma_min);
  for (int64_t i = 0; i < b.size; ++i) {
    CUFM_REQUIRE(b.t[i] >= 0.0f && b.t[i] <= 1.0f,
                 "loss_and_grad: t at row " << i << " is " << b.t[i] << ", outside [0, 1]");
    CUFM_REQUIRE(!b.labels || (b.labels[i] >= 0 && b.labels[i] <= m.num_classes),
                 "loss_and_grad: label " << b.labels[i] << " at row " << i << " is outside [0, "
                                         << m.num_classes << "] (the last is the null class)");
  }
}

}  // namespace

LossGrad loss_and_grad(const Model& model, const FlowBatch& batch, const PathConfig& path,
                       const RunOptions& run) {
  const MlpConfig& m = model.config();
  check_batch(m, batch, path);
  CUFM_REQUIRE(run.threads >= 0, "loss_and_grad: threads must be >= 0, got " << run.threads);
  const Device device = resolve_device(run.device);
  // Host memory: the model input, the activations and the gradients (CPU), or the staged copies.
  using detail::add_sat;
  using detail::mul_sat;
  const uint64_t rows = static_cast<uint64_t>(batch.size);
  uint64_t floats =
      add_sat(mul_sat(rows, static_cast<uint64_t>(m.input_dim() + 2 * m.data_dim)), model.num_params());
  if (device == Device::CPU) floats = add_sat(floats, cpu::MlpWorkspace::floats_for(m, batch.size));
  detail::require_memory(
      mul_sat(floats, sizeof(float)),
      "a loss and gradient over " + std::to_string(batch.size) + " rows on the " + to_string(device),
      "split the batch");
  if (device == Device::CUDA) return detail::cuda_loss_and_grad(model, batch, path.sigma_min, run.precision);
  CUFM_REQUIRE(run.precision == Precision::FP32,
               "precision " << to_string(run.precision) << " needs the CUDA backend; the CPU runs fp32");
  cpu::set_threads(run.threads);
  LossGrad r;
  r.grad.resize(model.num_params());
  cpu::GivenScratch scratch;
  r.loss = cpu::loss_grad_given(m, model.params().data(), batch, path.sigma_min, scratch, r.grad.data());
  return r;
}

}  // namespace cufm
