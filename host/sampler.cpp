// Sampling: the configs' checks, the sampler's noise, and cufm::Sampler, which hands the work to
// the device's backend (host/backend.hpp); with log-probabilities, the flow with its divergence.
#include "cufm/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cufm/detail/math.hpp"
#include "cufm/detail/philox.hpp"
#include "cufm/error.hpp"
#include "cufm/likelihood.hpp"
#include "host/backend.hpp"
#include "host/divergence_flow.hpp"
#include "host/memory.hpp"
#include "host/solver_driver.hpp"

namespace cufm {

int solver_order(Solver s) {
  return detail::solver_order_of(s);
}

int solver_evaluations_per_step(Solver s) {
  return detail::solver_evaluations_of(s);
}

void SampleConfig::validate(const MlpConfig& model) const {
  CUFM_REQUIRE(count >= 1 && count <= (int64_t{1} << 31), "sample count must be in [1, 2^31], got " << count);
  CUFM_REQUIRE(solver == Solver::Dopri5 || (steps >= 1 && steps <= 1000000),
               "steps must be in [1, 10^6], got " << steps);
  // Tolerances below ~1e-15 are meaningless in fp32 (a step's error is ~1e-7 of the state) and make
  // the scaled error (err / (atol + rtol |x|))^2 overflow.
  CUFM_REQUIRE(solver != Solver::Dopri5 || (std::isfinite(atol) && atol >= 1e-15f && std::isfinite(rtol) &&
                                            rtol >= 0.0f && max_steps >= 1),
               "dopri5 needs a finite atol >= 1e-15, a finite rtol >= 0 and max_steps >= 1, got atol "
                   << atol << " rtol " << rtol << " max_steps " << max_steps);
  CUFM_REQUIRE(
      labels.empty() || labels.size() == 1 || static_cast<int64_t>(labels.size()) == count,
      "labels: give none, one for all samples, or one per sample (" << count << "), got " << labels.size());
  CUFM_REQUIRE(labels.empty() || model.num_classes > 0, "labels given, but the model is unconditional");
  for (size_t i = 0; i < labels.size(); ++i) {
    CUFM_REQUIRE(labels[i] >= 0 && labels[i] < model.num_classes, "label " << labels[i] << " at index " << i
                                                                           << " is outside [0, "
                                                                           << model.num_classes << ")");
  }
  detail::check_context_arg(model, context, count, "sample", "sample");
  detail::check_guidance_arg(model, guidance, !labels.empty(), !context.empty());
  CUFM_REQUIRE(threads >= 0, "threads must be >= 0, got " << threads);
  CUFM_REQUIRE(
      t0 >= 0.0f && t0 <= 1.0f && t1 >= 0.0f && t1 <= 1.0f && t0 != t1,
      "the span [t0, t1] must lie in [0, 1] (the times the model was trained on) with t0 != t1, got t0 "
          << t0 << " t1 " << t1);
  CUFM_REQUIRE(!with_log_prob || t0 == 0.0f,
               "with_log_prob needs t0 = 0, where the density is N(0, I), got t0 "
                   << t0 << " (cufm::log_prob evaluates data points)");
  CUFM_REQUIRE(divergence == Divergence::Auto || divergence == Divergence::Exact ||
                   divergence == Divergence::Hutchinson,
               "unknown divergence " << static_cast<int>(divergence));
  CUFM_REQUIRE(probes >= 1 && probes <= 1024, "probes must be in [1, 1024], got " << probes);
}

namespace hd::dopri5 {
void check_step(float h, float t, float span) {
  CUFM_REQUIRE(std::isfinite(h), "dopri5's step size became "
                                     << h << " at t = " << t
                                     << ": the velocity field returned NaN or Inf there");
  CUFM_REQUIRE(h > 1e-7f * span, "dopri5's step size collapsed to "
                                     << h << " at t = " << t
                                     << ": the field is not smooth enough for atol/rtol; loosen them");
}
}  // namespace hd::dopri5

void sampler_noise(uint64_t seed, int64_t first, int64_t count, int dim, float* x0) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    float z[4];
    for (int g = 0; g < (dim + 3) / 4; ++g) {
      rng::normal4(seed, rng::kSamplerNoiseStream, static_cast<uint32_t>(first + i), static_cast<uint32_t>(g),
                   z);
      for (int k = 0; k < 4 && 4 * g + k < dim; ++k) x0[i * dim + 4 * g + k] = z[k];
    }
  }
}

OdeResult integrate(const std::function<void(float t, const float* x, float* v)>& velocity,
                    std::vector<float> x0, Solver solver, int steps, float atol, float rtol, int max_steps,
                    float t0, float t1) {
  CUFM_REQUIRE(solver == Solver::Dopri5 || steps >= 1, "integrate: steps must be >= 1, got " << steps);
  CUFM_REQUIRE(std::isfinite(t0) && std::isfinite(t1) && t1 != t0,
               "integrate: t0 and t1 must be finite and different, got " << t0 << " and " << t1);
  return detail::integrate_field(velocity, std::move(x0), solver, steps, atol, rtol, max_steps, t0, t1,
                                 nullptr, nullptr);
}

struct Sampler::State {
  Device device = Device::CPU;
  std::unique_ptr<detail::SampleBackend> backend;  // created by the first call on a device
};

Sampler::Sampler() : state_(std::make_unique<State>()) {}
Sampler::~Sampler() = default;
Sampler::Sampler(Sampler&&) noexcept = default;
Sampler& Sampler::operator=(Sampler&&) noexcept = default;

void Sampler::release() {
  state_ = std::make_unique<State>();
}

SampleResult sample(const Model& model, const SampleConfig& config) {
  return Sampler().sample(model, config);
}

SampleResult integrate(const Model& model, const std::vector<float>& x0, const SampleConfig& config) {
  return Sampler().integrate(model, x0, config);
}

namespace {
// Host memory a sampling call holds: the result and a fixed-step trajectory, and what the device's
// backend works in beside them.
uint64_t host_sampling_bytes(const MlpConfig& m, const SampleConfig& c, const detail::Backend& backend) {
  using detail::add_sat;
  using detail::mul_sat;
  const uint64_t elems =
      mul_sat(static_cast<uint64_t>(std::max<int64_t>(c.count, 0)), static_cast<uint64_t>(m.data_dim));
  uint64_t bytes = mul_sat(elems, sizeof(float));
  if (c.keep_trajectory && c.solver != Solver::Dopri5) {
    bytes = add_sat(bytes, mul_sat(mul_sat(elems, static_cast<uint64_t>(c.steps) + 1), sizeof(float)));
  }
  return add_sat(bytes, mul_sat(backend.host_sampling_floats(m, c), sizeof(float)));
}
}  // namespace

SampleResult Sampler::sample(const Model& model, const SampleConfig& config) {
  return run(model, nullptr, config);
}

SampleResult Sampler::integrate(const Model& model, const std::vector<float>& x0,
                                const SampleConfig& config) {
  const uint64_t want = static_cast<uint64_t>(std::max<int64_t>(config.count, 0)) *
                        static_cast<uint64_t>(model.config().data_dim);
  CUFM_REQUIRE(x0.size() == want, "integrate: x0 holds " << x0.size() << " floats; count " << config.count
                                                         << " x data_dim " << model.config().data_dim
                                                         << " needs " << want);
  return run(model, x0.data(), config);
}

namespace {
// sample/integrate with_log_prob: the flow with its divergence (host/likelihood.cpp) on either device.
SampleResult sample_with_log_prob(const Model& model, const float* x0_in, const SampleConfig& config,
                                  Device device) {
  config.validate(model.config());
  CUFM_REQUIRE(config.precision == Precision::FP32,
               "with_log_prob runs in fp32 (the divergence's tangents need it), got precision "
                   << to_string(config.precision));
  const int D = model.config().data_dim;
  detail::DivergenceFlow f;
  f.solver = config.solver;
  f.steps = config.steps;
  f.atol = config.atol;
  f.rtol = config.rtol;
  f.max_steps = config.max_steps;
  f.t0 = config.t0;
  f.t1 = config.t1;
  f.labels = detail::labels_per_point(config.labels, config.count);
  f.context = detail::context_per_point(config.context, model.config().context_dim, config.count);
  f.guidance = config.guidance;
  f.divergence = detail::resolve_divergence(config.divergence, D);
  f.probes = config.probes;
  f.seed = config.seed;
  f.device = device;
  f.threads = config.threads;
  detail::require_memory(
      detail::divergence_flow_bytes(model.config(), config.count, f, config.keep_trajectory),
      "sampling " + std::to_string(config.count) + " points with their log-densities",
      "sample fewer points per call");
  std::vector<float> x0(static_cast<size_t>(config.count) * D);
  if (x0_in) {
    std::copy(x0_in, x0_in + x0.size(), x0.begin());
  } else {
    sampler_noise(config.seed, 0, config.count, D, x0.data());
  }
  detail::DivergenceFlowResult r =
      detail::integrate_with_divergence(model, x0.data(), config.count, f, config.keep_trajectory);
  SampleResult res;
  res.count = config.count;
  res.dim = D;
  res.device = device;
  res.mlp = r.mlp.empty() ? std::string(to_string(device)) + " divergence" : r.mlp;
  // log p_t1(x(t1)) = log N(x(0)) - integral from 0 to t1 of div.
  res.log_prob = standard_normal_log_density(x0.data(), config.count, D);
  for (int64_t i = 0; i < config.count; ++i) res.log_prob[i] -= r.integral[i];
  res.x = std::move(r.x);
  res.times = std::move(r.times);
  res.trajectory = std::move(r.trajectory);
  res.evaluations = r.counts.evaluations;
  res.accepted_steps = r.counts.accepted_steps;
  res.rejected_steps = r.counts.rejected_steps;
  return res;
}
}  // namespace

SampleResult Sampler::run(const Model& model, const float* x0_in, const SampleConfig& config) {
  CUFM_REQUIRE(state_, "Sampler: used after being moved from");
  const Device device = resolve_device(config.device);  // throws for an unusable explicit 'cuda'
  if (config.with_log_prob) return sample_with_log_prob(model, x0_in, config, device);
  const detail::Backend& backend = detail::backend(device);
  detail::require_memory(host_sampling_bytes(model.config(), config, backend),
                         "sampling " + std::to_string(config.count) + " points of dimension " +
                             std::to_string(model.config().data_dim) + " on the " + to_string(device),
                         "sample fewer points per call");
  if (!state_->backend || state_->device != device) {
    state_->backend = backend.make_sampler();
    state_->device = device;
  }
  return state_->backend->sample(model, config, x0_in);
}

}  // namespace cufm
