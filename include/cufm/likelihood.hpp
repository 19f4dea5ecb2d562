// Exact log-likelihoods of a trained model, by the instantaneous change of variables: the flow
// x(t) of dx/dt = v(x, t) carries log p_t(x(t)) with d/dt log p_t(x(t)) = -div v(x(t), t), so a
// data point integrated back from t = 1 to t = 0, with the divergence's integral as one more
// component of the ODE state, gives
//   log p_1(x) = log N(x(0); 0, I) - integral from 0 to 1 of div v(x(t), t) dt.
// The divergence is exact (the trace of the Jacobian, from D forward-mode tangents through the MLP
// in one batched pass) or Hutchinson's unbiased estimate E[e^T J e] over Rademacher probes e drawn
// from Philox, fixed for the whole integration (each point's own probes, keyed by the seed). Every
// solver runs; Dormand-Prince's error control sees the divergence's component too.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cufm/device.hpp"
#include "cufm/model.hpp"
#include "cufm/sampler.hpp"

namespace cufm {

struct LogProbConfig {
  Solver solver = Solver::Dopri5;
  int steps = 20;                    // fixed-step solvers
  float atol = 1e-5f, rtol = 1e-5f;  // Dopri5
  int max_steps = 100000;            // Dopri5: accepted + rejected steps before giving up
  Divergence divergence = Divergence::Auto;
  int probes = 1;                 // Hutchinson: probes per point, in [1, 1024]
  uint64_t seed = 0;              // Hutchinson: the probes' Philox key
  std::vector<int32_t> labels;    // empty, one label for all, or one per point
  std::vector<float> context;     // a model with a context: empty (the null context), one row of
                                  // context_dim for all, or one per point ([n, context_dim])
  std::optional<float> guidance;  // set: the guided field's likelihood (needs labels or a context)
  Device device = Device::Auto;
  int threads = 0;  // CPU threads (0: all cores)

  // Throws cufm::Error naming the first bad field. n: the points to be evaluated.
  void validate(const MlpConfig& model, int64_t n) const;
  // The divergence Auto resolves to for D = data_dim.
  Divergence resolved(int data_dim) const;
};

struct LogProbResult {
  int64_t count = 0;
  int dim = 0;
  std::vector<float> log_prob;                // [count] log p_1 at each point (natural log)
  std::vector<float> noise;                   // [count, dim] each point carried back to t = 0
  std::vector<float> div_integral;            // [count] the integral over [0, 1] of div v along its path
  Divergence divergence = Divergence::Exact;  // what ran
  int64_t evaluations = 0;                    // velocity-and-divergence evaluations of the batch
  int accepted_steps = 0, rejected_steps = 0;
  Device device = Device::CPU;
  // How the model and its divergence ran: "cpu divergence", "cuda layered divergence" (cuBLAS
  // layer by layer, the solver's state on the device) or "cuda fused divergence" (one kernel for
  // the whole integration: fixed steps, narrow models; CUFM_GPU_MLP=fused|layered overrides).
  std::string mlp;
};

// log p_1 of the model at the points x [n, data_dim] (row-major). Throws cufm::Error naming a bad
// argument (a non-finite point among them), or when Dormand-Prince exceeds max_steps.
LogProbResult log_prob(const Model& model, const std::vector<float>& x, const LogProbConfig& config);

// log N(x; 0, I) of each row of x [n, dim], in double then rounded.
std::vector<float> standard_normal_log_density(const float* x, int64_t n, int dim);

}  // namespace cufm
