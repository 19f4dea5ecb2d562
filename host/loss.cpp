// loss_and_grad: the flow-matching loss and gradient on the caller's batch and draws, checked here
// and computed by the device's backend (host/backend.hpp); prepare_flow and flow_mse: the host twins
// of kernels::fm_prepare / fm_loss_grad for a model of the caller's own (host/draws.hpp).
#include "cufm/loss.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cufm/detail/math.hpp"
#include "cufm/error.hpp"
#include "host/backend.hpp"
#include "host/draws.hpp"
#include "host/field_checks.hpp"
#include "host/memory.hpp"

namespace cufm {

namespace {

void check_batch(const MlpConfig& m, const FlowBatch& b, const PathConfig& path) {
  m.validate();
  CUFM_REQUIRE(b.size >= 1 && b.size <= INT32_MAX,
               "loss_and_grad: batch size must be in [1, 2^31 - 1], got " << b.size);
  CUFM_REQUIRE(b.x1 && b.t && b.eps, "loss_and_grad: x1, t and eps must not be null");
  CUFM_REQUIRE(!b.labels || m.num_classes > 0, "loss_and_grad: labels given, but the model is unconditional");
  CUFM_REQUIRE(!b.context_null || b.context, "loss_and_grad: context_null given without a context");
  detail::check_field_context(m, b.context, b.size, "loss_and_grad");
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

// The checks prepare_flow and flow_mse share; returns the draws as the CPU backend's configs.
void check_step_draws(const StepDraws& d, int64_t B, int D, const char* who) {
  CUFM_REQUIRE(B >= 1 && B <= INT32_MAX, who << ": the batch must have [1, 2^31 - 1] rows, got " << B);
  CUFM_REQUIRE(D >= 1 && D <= 65536, who << ": D must be in [1, 65536], got " << D);
  CUFM_REQUIRE(std::isfinite(d.path.sigma_min) && d.path.sigma_min >= 0.0f && d.path.sigma_min < 1.0f,
               who << ": sigma_min must be in [0, 1), got " << d.path.sigma_min);
  CUFM_REQUIRE(
      d.path.time_sampling == TimeSampling::Uniform || d.path.time_sampling == TimeSampling::LogitNormal,
      who << ": unknown time sampling " << static_cast<int>(d.path.time_sampling));
  CUFM_REQUIRE(std::isfinite(d.path.logit_mean) && std::isfinite(d.path.logit_std) && d.path.logit_std > 0.0f,
               who << ": the logit-normal mean must be finite and its std positive");
  CUFM_REQUIRE(d.num_classes >= 0 && d.num_classes <= 100000,
               who << ": num_classes must be in [0, 100000], got " << d.num_classes);
  CUFM_REQUIRE(d.label_dropout >= 0.0f && d.label_dropout <= 1.0f,
               who << ": label_dropout must be in [0, 1], got " << d.label_dropout);
  CUFM_REQUIRE(d.context_dropout >= 0.0f && d.context_dropout <= 1.0f,
               who << ": context_dropout must be in [0, 1], got " << d.context_dropout);
}

// draw_given takes the model's and the recipe's fields.
void draw_rows(const StepDraws& d, int64_t B, int D, const int32_t* labels, std::vector<float>& t,
               std::vector<float>& eps, std::vector<int32_t>& labels_out,
               std::vector<uint8_t>& context_drop) {
  MlpConfig m;
  m.data_dim = D;
  m.num_classes = d.num_classes;
  m.context_dim = d.context_dropout > 0.0f ? 1 : 0;  // draw_given draws the drops for any context width
  TrainConfig c;
  c.seed = d.seed;
  c.path = d.path;
  c.label_dropout = d.label_dropout;
  c.context_dropout = d.context_dropout;
  std::vector<int32_t> all_null;
  if (d.num_classes > 0 && !labels) {
    all_null.assign(static_cast<size_t>(B), d.num_classes);
    labels = all_null.data();
  }
  detail::draw_given(m, c, d.step, B, labels, t, eps, labels_out, context_drop);
}

}  // namespace

void prepare_flow(const StepDraws& draws, int64_t B, int D, const float* x1, const int32_t* labels,
                  float* x_t, float* t, int32_t* labels_out, float* eps_out, uint8_t* context_dropped) {
  check_step_draws(draws, B, D, "prepare_flow");
  CUFM_REQUIRE(x1 && x_t && t, "prepare_flow: x1, x_t and t must not be null");
  CUFM_REQUIRE(draws.num_classes > 0 || (!labels && !labels_out),
               "prepare_flow: labels given, but num_classes is 0");
  CUFM_REQUIRE(draws.num_classes == 0 || labels_out,
               "prepare_flow: num_classes > 0 needs labels_out, the labels after dropout");
  for (int64_t j = 0; j < B * D; ++j) {
    CUFM_REQUIRE(std::isfinite(x1[j]),
                 "prepare_flow: x1 at row " << j / D << ", column " << j % D << " is not finite");
  }
  for (int64_t i = 0; labels && i < B; ++i) {
    CUFM_REQUIRE(labels[i] >= 0 && labels[i] <= draws.num_classes,
                 "prepare_flow: label " << labels[i] << " at row " << i << " is outside [0, "
                                        << draws.num_classes << "] (the last is the null class)");
  }
  std::vector<float> tv, eps;
  std::vector<int32_t> lv;
  std::vector<uint8_t> drop;
  draw_rows(draws, B, D, labels, tv, eps, lv, drop);
  const float s = draws.path.sigma_min;
  for (int64_t i = 0; i < B; ++i) {
    t[i] = tv[i];
    if (labels_out) labels_out[i] = lv[i];
    if (context_dropped) context_dropped[i] = drop.empty() ? 0 : drop[i];
    for (int d = 0; d < D; ++d) x_t[i * D + d] = hd::path_xt(tv[i], x1[i * D + d], eps[i * D + d], s);
  }
  if (eps_out) std::copy(eps.begin(), eps.end(), eps_out);
}

float flow_mse(const StepDraws& draws, int64_t B, int D, const float* x1, const float* v, float* grad,
               int threads) {
  check_step_draws(draws, B, D, "flow_mse");
  CUFM_REQUIRE(x1 && v, "flow_mse: x1 and v must not be null");
  CUFM_REQUIRE(threads >= 0, "flow_mse: threads must be >= 0, got " << threads);
  detail::set_host_threads(threads);
  std::vector<float> t, eps;
  std::vector<int32_t> labels;
  std::vector<uint8_t> drop;
  draw_rows(draws, B, D, nullptr, t, eps, labels, drop);
  return detail::mse_given(B, D, v, x1, eps.data(), draws.path.sigma_min, grad);
}

LossGrad loss_and_grad(const Model& model, const FlowBatch& batch, const PathConfig& path,
                       const RunOptions& run) {
  const MlpConfig& m = model.config();
  check_batch(m, batch, path);
  CUFM_REQUIRE(run.threads >= 0, "loss_and_grad: threads must be >= 0, got " << run.threads);
  const Device device = resolve_device(run.device);
  const detail::Backend& backend = detail::backend(device);
  // Host memory: the model input, the activations and the gradients (CPU), or the staged copies.
  using detail::add_sat;
  using detail::mul_sat;
  const uint64_t rows = static_cast<uint64_t>(batch.size);
  uint64_t floats =
      add_sat(mul_sat(rows, static_cast<uint64_t>(m.input_dim() + 2 * m.data_dim)), model.num_params());
  floats = add_sat(floats, backend.host_step_floats(m, batch.size, run.precision));
  detail::require_memory(
      mul_sat(floats, sizeof(float)),
      "a loss and gradient over " + std::to_string(batch.size) + " rows on the " + to_string(device),
      "split the batch");
  return backend.loss_and_grad(model, batch, path.sigma_min, run);
}

}  // namespace cufm
