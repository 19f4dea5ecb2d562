// Log-likelihoods: cufm::log_prob and the flow with its divergence that it and sample(...,
// with_log_prob) run. The ODE state is [x | a] with da/dt = div v. The device's backend
// (host/backend.hpp: DivergenceBackend) integrates it: by default the solvers over host arrays
// (host/host_solver.cpp) with the backend's velocity and divergence, and on the GPU with the state
// kept in device memory from the first step to the last.
#include "cufm/likelihood.hpp"

#include <cmath>
#include <cstring>
#include <string>

#include "cufm/error.hpp"
#include "host/backend.hpp"
#include "host/draws.hpp"
#include "host/divergence_flow.hpp"
#include "host/field_checks.hpp"
#include "host/solver_driver.hpp"
#include "host/memory.hpp"

namespace cufm {

Divergence LogProbConfig::resolved(int data_dim) const {
  return detail::resolve_divergence(divergence, data_dim);
}

void LogProbConfig::validate(const MlpConfig& model, int64_t n) const {
  detail::check_context_arg(model, context, n, "log_prob", "point");
  SampleConfig s;  // the solver, labels and guidance rules are sampling's
  s.count = n;
  s.solver = solver;
  s.steps = steps;
  s.atol = atol;
  s.rtol = rtol;
  s.max_steps = max_steps;
  s.labels = labels;
  s.context = context;
  s.guidance = guidance;
  s.threads = threads;
  s.validate(model);
  CUFM_REQUIRE(divergence == Divergence::Auto || divergence == Divergence::Exact ||
                   divergence == Divergence::Hutchinson,
               "unknown divergence " << static_cast<int>(divergence));
  CUFM_REQUIRE(probes >= 1 && probes <= 1024, "probes must be in [1, 1024], got " << probes);
}

std::vector<float> standard_normal_log_density(const float* x, int64_t n, int dim) {
  const double half_log_2pi = 0.5 * std::log(2.0 * M_PI);
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    double sq = 0.0;
    for (int d = 0; d < dim; ++d) sq += static_cast<double>(x[i * dim + d]) * x[i * dim + d];
    out[i] = static_cast<float>(-0.5 * sq - dim * half_log_2pi);
  }
  return out;
}

namespace detail {

uint64_t divergence_flow_bytes(const MlpConfig& m, int64_t n, const DivergenceFlow& f, bool keep) {
  const uint64_t rows = static_cast<uint64_t>(std::max<int64_t>(n, 0));
  const uint64_t state = mul_sat(rows, static_cast<uint64_t>(m.data_dim) + 1);
  const uint64_t context = mul_sat(rows, static_cast<uint64_t>(m.context_dim));
  const int P = f.divergence == Divergence::Exact ? m.data_dim : f.probes;
  // The state, the solver's stages (up to 7) and stage point, the probes, the results.
  uint64_t floats = add_sat(mul_sat(state, 10), context);
  if (f.divergence == Divergence::Hutchinson) {
    floats = add_sat(floats, mul_sat(rows, static_cast<uint64_t>(P) * m.data_dim));
  }
  if (keep && f.solver != Solver::Dopri5)
    floats = add_sat(floats, mul_sat(state, static_cast<uint64_t>(f.steps) + 1));
  // One chunk's tangents (two buffers of at most 2^22 floats) and forward workspace.
  floats = add_sat(floats, backend(f.device).host_divergence_floats(m));
  return mul_sat(floats, sizeof(float));
}

Divergence resolve_divergence(Divergence d, int data_dim) {
  constexpr int kExactUpTo = 32;
  if (d != Divergence::Auto) return d;
  return data_dim <= kExactUpTo ? Divergence::Exact : Divergence::Hutchinson;
}

std::vector<int32_t> labels_per_point(const std::vector<int32_t>& labels, int64_t n) {
  if (labels.size() == 1) return std::vector<int32_t>(static_cast<size_t>(n), labels[0]);
  return labels;
}

std::vector<float> context_per_point(const std::vector<float>& context, int K, int64_t n) {
  if (K <= 0 || context.empty() || static_cast<int64_t>(context.size()) == n * K) return context;
  std::vector<float> out(static_cast<size_t>(n) * K);
  for (int64_t i = 0; i < n; ++i) std::copy(context.begin(), context.begin() + K, out.begin() + i * K);
  return out;
}

void check_context_arg(const MlpConfig& m, const std::vector<float>& context, int64_t n, const char* who,
                       const char* per) {
  if (context.empty()) return;
  CUFM_REQUIRE(m.context_dim > 0, who << ": a context given, but the model has none (context_dim = 0)");
  const int64_t K = m.context_dim;
  CUFM_REQUIRE(static_cast<int64_t>(context.size()) == K || static_cast<int64_t>(context.size()) == n * K,
               who << ": the context must hold " << K << " floats (one row for all) or " << n << " x " << K
                   << " (one row per " << per << "), got " << context.size());
  check_field_context(m, context.data(), static_cast<int64_t>(context.size()) / K, who);
}

void check_guidance_arg(const MlpConfig& m, const std::optional<float>& guidance, bool has_labels,
                        bool has_context) {
  if (!guidance) return;
  CUFM_REQUIRE(m.num_classes > 0 || m.context_dim > 0,
               "guidance needs a conditional model (num_classes > 0 or context_dim > 0)");
  CUFM_REQUIRE(has_labels || has_context,
               "guidance needs a condition to guide towards: class labels or a context");
  CUFM_REQUIRE(std::isfinite(*guidance), "guidance scale must be finite");
}

DivergenceFlowResult DivergenceBackend::integrate(const float* x0, int64_t n, const DivergenceFlow& f,
                                                  const float* probes, bool keep) {
  const int64_t xn = f.dim * n;
  const int P = probes ? f.probes : f.dim;
  const int32_t* labels = f.labels.empty() ? nullptr : f.labels.data();
  const float* context = f.context.empty() ? nullptr : f.context.data();
  const float* guidance = f.guidance ? &*f.guidance : nullptr;
  std::vector<float> y(static_cast<size_t>(xn + n), 0.0f);  // [x | a], a(t0) = 0
  std::memcpy(y.data(), x0, static_cast<size_t>(xn) * sizeof(float));
  auto field = [&](float t, const float* state, float* dstate) {
    evaluate(t, state, labels, context, n, guidance, probes, P, dstate, dstate + xn);
  };
  DivergenceFlowResult r;
  std::vector<float> times, states;
  r.counts = integrate_field(field, std::move(y), f.solver, f.steps, f.atol, f.rtol, f.max_steps, f.t0, f.t1,
                             keep ? &times : nullptr, keep ? &states : nullptr);
  std::vector<float>& end = r.counts.x;
  r.x.assign(end.begin(), end.begin() + static_cast<ptrdiff_t>(xn));
  r.integral.assign(end.begin() + static_cast<ptrdiff_t>(xn), end.end());
  end.clear();
  if (keep) {  // the trajectory's x parts
    r.times = std::move(times);
    const size_t xs = static_cast<size_t>(xn), ys = static_cast<size_t>(xn + n);
    r.trajectory.resize(r.times.size() * xs);
    for (size_t k = 0; k < r.times.size(); ++k) {
      std::memcpy(r.trajectory.data() + k * xs, states.data() + k * ys, xs * sizeof(float));
    }
  }
  return r;
}

DivergenceFlowResult integrate_with_divergence(const Model& model, const float* x0, int64_t n,
                                               const DivergenceFlow& flow, bool keep) {
  const MlpConfig& m = model.config();
  DivergenceFlow f = flow;
  f.dim = m.data_dim;
  std::vector<float> probes;
  if (f.divergence != Divergence::Exact) {
    probes.resize(static_cast<size_t>(n) * f.probes * f.dim);
    rademacher_probes(f.seed, 0, n, f.probes, f.dim, probes.data());
  }
  const std::unique_ptr<DivergenceBackend> divergence = backend(f.device).make_divergence(model, f.threads);
  return divergence->integrate(x0, n, f, probes.empty() ? nullptr : probes.data(), keep);
}

}  // namespace detail

LogProbResult log_prob(const Model& model, const std::vector<float>& x, const LogProbConfig& config) {
  const MlpConfig& m = model.config();
  m.validate();
  const int D = m.data_dim;
  CUFM_REQUIRE(!x.empty() && x.size() % static_cast<size_t>(D) == 0,
               "log_prob: x must hold [n, " << D << "] floats (n >= 1), got " << x.size());
  const int64_t n = static_cast<int64_t>(x.size() / D);
  config.validate(m, n);
  for (size_t j = 0; j < x.size(); ++j) {
    CUFM_REQUIRE(std::isfinite(x[j]),
                 "log_prob: x at row " << j / D << ", column " << j % D << " is not finite");
  }
  detail::DivergenceFlow f;
  f.solver = config.solver;
  f.steps = config.steps;
  f.atol = config.atol;
  f.rtol = config.rtol;
  f.max_steps = config.max_steps;
  f.t0 = 1.0f;
  f.t1 = 0.0f;
  f.labels = detail::labels_per_point(config.labels, n);
  f.context = detail::context_per_point(config.context, m.context_dim, n);
  f.guidance = config.guidance;
  f.divergence = config.resolved(D);
  f.probes = config.probes;
  f.seed = config.seed;
  f.device = resolve_device(config.device);
  f.threads = config.threads;
  detail::require_memory(
      detail::divergence_flow_bytes(m, n, f, false),
      "log-likelihoods of " + std::to_string(n) + " points of dimension " + std::to_string(D),
      "evaluate fewer points per call");
  detail::DivergenceFlowResult r = detail::integrate_with_divergence(model, x.data(), n, f, false);
  LogProbResult res;
  res.count = n;
  res.dim = D;
  res.noise = std::move(r.x);
  res.log_prob = standard_normal_log_density(res.noise.data(), n, D);
  res.div_integral.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    // a(0) = integral from 1 to 0 of div = -(integral from 0 to 1 of div), and
    // log p_1(x) = log N(x(0)) - (integral from 0 to 1 of div) = log N(x(0)) + a(0).
    res.div_integral[i] = -r.integral[i];
    res.log_prob[i] -= res.div_integral[i];
  }
  res.divergence = f.divergence;
  res.evaluations = r.counts.evaluations;
  res.accepted_steps = r.counts.accepted_steps;
  res.rejected_steps = r.counts.rejected_steps;
  res.device = f.device;
  res.mlp = r.mlp.empty() ? std::string(to_string(f.device)) + " divergence" : r.mlp;
  return res;
}

}  // namespace cufm
