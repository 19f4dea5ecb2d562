// Sampling on the CPU: the ODE solvers over a batch, with the model (and guidance) as the field.
// The CUDA backend runs the same solvers with fused stage kernels; this file is their reference.
#include "cufm/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cufm/error.hpp"
#include "cufm/math.hpp"
#include "cufm/philox.hpp"
#include "host/backend.hpp"
#include "host/cpu_ops.hpp"
#include "host/memory.hpp"

namespace cufm {

const char* to_string(Solver s) {
  switch (s) {
    case Solver::Euler:
      return "euler";
    case Solver::Midpoint:
      return "midpoint";
    case Solver::Heun:
      return "heun";
    case Solver::RK4:
      return "rk4";
    default:
      return "dopri5";
  }
}

Solver parse_solver(const std::string& s) {
  for (Solver v : {Solver::Euler, Solver::Midpoint, Solver::Heun, Solver::RK4, Solver::Dopri5}) {
    if (s == to_string(v)) return v;
  }
  CUFM_FAIL("unknown solver '" << s << "': expected euler, midpoint, heun, rk4 or dopri5");
}

int solver_order(Solver s) {
  switch (s) {
    case Solver::Euler:
      return 1;
    case Solver::Midpoint:
    case Solver::Heun:
      return 2;
    case Solver::RK4:
      return 4;
    default:
      return 5;
  }
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
  CUFM_REQUIRE(!guidance || model.num_classes > 0, "guidance needs a conditional model (num_classes > 0)");
  CUFM_REQUIRE(!guidance || !labels.empty(), "guidance needs class labels to guide towards");
  CUFM_REQUIRE(!guidance || std::isfinite(*guidance), "guidance scale must be finite");
  CUFM_REQUIRE(threads >= 0, "threads must be >= 0, got " << threads);
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

namespace {

using Field = std::function<void(float, const float*, float*)>;

// y = x + h * sum_k a_k * k_k over the given stages.
void combine(std::vector<float>& y, const std::vector<float>& x, float h,
             std::initializer_list<std::pair<float, const std::vector<float>*>> terms) {
  const int64_t n = static_cast<int64_t>(x.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float acc = 0.0f;
    for (const auto& [a, k] : terms) acc += a * (*k)[i];
    y[i] = x[i] + h * acc;
  }
}

double rms_scaled(const std::vector<float>& err, const std::vector<float>& x, const std::vector<float>& xn,
                  float atol, float rtol) {
  double s = 0.0;
  for (size_t i = 0; i < err.size(); ++i) s += hd::scaled_error_sq(err[i], x[i], xn[i], atol, rtol);
  return std::sqrt(s / static_cast<double>(std::max<size_t>(1, err.size())));
}

struct Trajectory {
  std::vector<float>* times = nullptr;
  std::vector<float>* states = nullptr;
  void record(float t, const std::vector<float>& x) const {
    if (!times) return;
    times->push_back(t);
    states->insert(states->end(), x.begin(), x.end());
  }
};

OdeResult integrate_impl(const Field& f, std::vector<float> x, Solver solver, int steps, float atol,
                         float rtol, int max_steps, float t0, float t1, const Trajectory& traj) {
  OdeResult r;
  const size_t n = x.size();
  std::vector<float> k1(n), k2(n), k3(n), k4(n), k5(n), k6(n), k7(n), y(n);
  auto eval = [&](float t, const std::vector<float>& at, std::vector<float>& out) {
    f(t, at.data(), out.data());
    ++r.evaluations;
  };
  traj.record(t0, x);
  if (solver != Solver::Dopri5) {
    const float span = t1 - t0;
    for (int s = 0; s < steps; ++s) {
      const float t = t0 + span * static_cast<float>(s) / static_cast<float>(steps);
      const float tn = t0 + span * static_cast<float>(s + 1) / static_cast<float>(steps);
      const float h = tn - t;
      switch (solver) {
        case Solver::Euler:
          eval(t, x, k1);
          combine(x, x, h, {{1.0f, &k1}});
          break;
        case Solver::Midpoint:
          eval(t, x, k1);
          combine(y, x, 0.5f * h, {{1.0f, &k1}});
          eval(t + 0.5f * h, y, k2);
          combine(x, x, h, {{1.0f, &k2}});
          break;
        case Solver::Heun:
          eval(t, x, k1);
          combine(y, x, h, {{1.0f, &k1}});
          eval(tn, y, k2);
          combine(x, x, h, {{0.5f, &k1}, {0.5f, &k2}});
          break;
        default:  // RK4
          eval(t, x, k1);
          combine(y, x, 0.5f * h, {{1.0f, &k1}});
          eval(t + 0.5f * h, y, k2);
          combine(y, x, 0.5f * h, {{1.0f, &k2}});
          eval(t + 0.5f * h, y, k3);
          combine(y, x, h, {{1.0f, &k3}});
          eval(tn, y, k4);
          combine(x, x, h, {{1.0f / 6, &k1}, {1.0f / 3, &k2}, {1.0f / 3, &k3}, {1.0f / 6, &k4}});
          break;
      }
      ++r.accepted_steps;
      traj.record(tn, x);
    }
    r.x = std::move(x);
    return r;
  }

  // Dormand-Prince 5(4) with first-same-as-last and Hairer's initial step.
  namespace dp = hd::dopri5;
  const float span = t1 - t0;
  float t = t0;
  eval(t, x, k1);
  float h;
  const std::vector<float> zero(n, 0.0f);
  {
    const double d0 = rms_scaled(x, x, zero, atol, rtol), d1 = rms_scaled(k1, x, zero, atol, rtol);
    const double h0 = dp::first_guess(d0, d1, span);
    combine(y, x, static_cast<float>(h0), {{1.0f, &k1}});
    eval(t + static_cast<float>(h0), y, k2);
    for (size_t i = 0; i < n; ++i) k3[i] = k2[i] - k1[i];
    const double d2 = rms_scaled(k3, x, zero, atol, rtol) / h0;
    h = dp::initial_step(h0, d1, d2, span);
  }
  std::vector<float> err(n);
  while (t < t1) {
    CUFM_REQUIRE(r.accepted_steps + r.rejected_steps < max_steps,
                 "dopri5 did not reach t = " << t1 << " within max_steps = " << max_steps << " (at t = " << t
                                             << "): loosen atol/rtol or raise max_steps");
    if (t + h > t1 || t1 - (t + h) < 1e-6f * span) h = t1 - t;
    combine(y, x, h, {{dp::a21, &k1}});
    eval(t + dp::c2 * h, y, k2);
    combine(y, x, h, {{dp::a31, &k1}, {dp::a32, &k2}});
    eval(t + dp::c3 * h, y, k3);
    combine(y, x, h, {{dp::a41, &k1}, {dp::a42, &k2}, {dp::a43, &k3}});
    eval(t + dp::c4 * h, y, k4);
    combine(y, x, h, {{dp::a51, &k1}, {dp::a52, &k2}, {dp::a53, &k3}, {dp::a54, &k4}});
    eval(t + dp::c5 * h, y, k5);
    combine(y, x, h, {{dp::a61, &k1}, {dp::a62, &k2}, {dp::a63, &k3}, {dp::a64, &k4}, {dp::a65, &k5}});
    eval(t + h, y, k6);
    combine(y, x, h, {{dp::b1, &k1}, {dp::b3, &k3}, {dp::b4, &k4}, {dp::b5, &k5}, {dp::b6, &k6}});
    eval(t + h, y, k7);
    combine(err, zero, h,
            {{dp::e1, &k1}, {dp::e3, &k3}, {dp::e4, &k4}, {dp::e5, &k5}, {dp::e6, &k6}, {dp::e7, &k7}});
    const double e = rms_scaled(err, x, y, atol, rtol);
    if (e <= 1.0) {
      t = (t + h >= t1) ? t1 : t + h;
      std::swap(x, y);
      std::swap(k1, k7);  // first same as last
      ++r.accepted_steps;
      traj.record(t, x);
    } else {
      ++r.rejected_steps;
    }
    h *= dp::step_factor(e);
    dp::check_step(h, t, span);
  }
  r.x = std::move(x);
  return r;
}

// The model (with guidance) as a field over a batch of `count` samples.
class ModelField {
 public:
  ModelField(const Model& model, const SampleConfig& cfg) : model_(model), cfg_(cfg) {
    const MlpConfig& m = model.config();
    in_ = m.input_dim();
    if (m.num_classes > 0) {
      labels_.resize(cfg.count, m.null_class());
      for (int64_t i = 0; i < cfg.count; ++i) {
        if (!cfg.labels.empty()) labels_[i] = cfg.labels.size() == 1 ? cfg.labels[0] : cfg.labels[i];
      }
    }
  }

  void operator()(float t, const float* x, float* v) {
    const MlpConfig& m = model_.config();
    const int D = m.data_dim;
    const bool guided = cfg_.guidance.has_value();
    const int passes = guided ? 2 : 1;
    constexpr int64_t kChunk = 8192;
    for (int64_t first = 0; first < cfg_.count; first += kChunk) {
      const int64_t rows = std::min(kChunk, cfg_.count - first);
      // Guided: the conditional rows then the null rows, in one forward pass of 2 * rows.
      input_.resize(static_cast<size_t>(passes * rows) * in_);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < rows; ++i) {
        const int32_t label = m.num_classes > 0 ? labels_[first + i] : -1;
        cpu::write_input_row(m, x + (first + i) * D, t, label, input_.data() + i * in_);
        if (guided) {
          cpu::write_input_row(m, x + (first + i) * D, t, m.null_class(), input_.data() + (rows + i) * in_);
        }
      }
      cpu::mlp_forward(m, model_.params().data(), input_.data(), passes * rows, ws_);
      const float* out = ws_.out.data();
      if (!guided) {
        std::memcpy(v + first * D, out, sizeof(float) * rows * D);
        continue;
      }
      const float w = *cfg_.guidance;
      for (int64_t j = 0; j < rows * D; ++j) v[first * D + j] = hd::guided(out[rows * D + j], out[j], w);
    }
  }

 private:
  const Model& model_;
  const SampleConfig& cfg_;
  int in_ = 0;
  std::vector<int32_t> labels_;
  std::vector<float> input_;
  cpu::MlpWorkspace ws_;
};

}  // namespace

OdeResult integrate(const std::function<void(float t, const float* x, float* v)>& velocity,
                    std::vector<float> x0, Solver solver, int steps, float atol, float rtol, int max_steps,
                    float t0, float t1) {
  CUFM_REQUIRE(solver == Solver::Dopri5 || steps >= 1, "integrate: steps must be >= 1, got " << steps);
  CUFM_REQUIRE(t1 > t0, "integrate: t1 must be > t0");
  return integrate_impl(velocity, std::move(x0), solver, steps, atol, rtol, max_steps, t0, t1, Trajectory{});
}

struct Sampler::State {
#if defined(CUFM_WITH_CUDA)
  detail::CudaSamplerPtr cuda;  // created by the first GPU call
#endif
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

namespace {
// Host memory a sampling call holds: the result and a fixed-step trajectory on both backends; on
// the CPU also the solver's buffers (x0, x, the stage point, k1..k7, the error and its zero
// reference: 12 of count x dim) and one chunk's activations.
uint64_t host_sampling_bytes(const MlpConfig& m, const SampleConfig& c, Device device) {
  using detail::add_sat;
  using detail::mul_sat;
  const uint64_t elems =
      mul_sat(static_cast<uint64_t>(std::max<int64_t>(c.count, 0)), static_cast<uint64_t>(m.data_dim));
  const bool cpu = device == Device::CPU;
  uint64_t bytes = mul_sat(elems, (cpu ? 12 : 1) * sizeof(float));
  if (c.keep_trajectory && c.solver != Solver::Dopri5) {
    bytes = add_sat(bytes, mul_sat(mul_sat(elems, static_cast<uint64_t>(c.steps) + 1), sizeof(float)));
  }
  if (cpu) {
    // One chunk of model inputs (both passes with guidance) and the MLP's workspace for it.
    const int64_t rows = std::min<int64_t>(c.count, 8192) * (c.guidance ? 2 : 1);
    bytes = add_sat(
        bytes, mul_sat(add_sat(mul_sat(static_cast<uint64_t>(rows), static_cast<uint64_t>(m.input_dim())),
                               cpu::MlpWorkspace::floats_for(m, rows)),
                       sizeof(float)));
  }
  return bytes;
}
}  // namespace

SampleResult Sampler::sample(const Model& model, const SampleConfig& config) {
  CUFM_REQUIRE(state_, "Sampler: used after being moved from");
  const Device device = resolve_device(config.device);  // throws for an unusable explicit 'cuda'
  detail::require_memory(host_sampling_bytes(model.config(), config, device),
                         "sampling " + std::to_string(config.count) + " points of dimension " +
                             std::to_string(model.config().data_dim) + " on the " + to_string(device),
                         "sample fewer points per call");
#if defined(CUFM_WITH_CUDA)
  if (device == Device::CUDA) {  // the GPU sampler validates the config
    if (!state_->cuda) state_->cuda = detail::make_cuda_sampler();
    return detail::cuda_sample(*state_->cuda, model, config);
  }
#endif
  config.validate(model.config());
  CUFM_REQUIRE(
      config.precision == Precision::FP32,
      "precision " << to_string(config.precision) << " needs the CUDA backend; the CPU samples in fp32");
  cpu::set_threads(config.threads);
  const int D = model.config().data_dim;
  SampleResult res;
  res.count = config.count;
  res.dim = D;
  res.device = Device::CPU;
  std::vector<float> x0(static_cast<size_t>(config.count) * D);
  sampler_noise(config.seed, 0, config.count, D, x0.data());
  ModelField field(model, config);
  Trajectory traj;
  if (config.keep_trajectory) traj = Trajectory{&res.times, &res.trajectory};
  OdeResult r =
      integrate_impl([&](float t, const float* x, float* v) { field(t, x, v); }, std::move(x0), config.solver,
                     config.steps, config.atol, config.rtol, config.max_steps, 0.0f, 1.0f, traj);
  res.x = std::move(r.x);
  res.evaluations = r.evaluations;
  res.accepted_steps = r.accepted_steps;
  res.rejected_steps = r.rejected_steps;
  return res;
}

}  // namespace cufm
