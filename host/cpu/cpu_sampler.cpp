// The CPU backend's ODE solvers over a batch: the fixed-step Runge-Kutta methods and Dormand-Prince
// 5(4) with its step-size controller, in either direction. The CUDA backend
// (host/cuda/cuda_sampler.cpp) runs the same steps with fused stage kernels; this is its reference.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cufm/error.hpp"
#include "cufm/math.hpp"
#include "host/cpu/cpu_ops.hpp"

namespace cufm::cpu {

namespace {

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

}  // namespace

OdeResult integrate(const Field& f, std::vector<float> x, Solver solver, int steps, float atol, float rtol,
                    int max_steps, float t0, float t1, std::vector<float>* times,
                    std::vector<float>* states) {
  const Trajectory traj{times, states};
  OdeResult r;
  const size_t n = x.size();
  std::vector<float> k1(n), k2(n), k3(n), k4(n), k5(n), k6(n), k7(n), y(n);
  auto eval = [&](float t, const std::vector<float>& at, std::vector<float>& out) {
    f(t, at.data(), out.data());
    ++r.evaluations;
  };
  traj.record(t0, x);
  if (solver != Solver::Dopri5) {
    for (int s = 0; s < steps; ++s) {
      const float t = hd::fixed_step_time(t0, t1, s, steps), tn = hd::fixed_step_time(t0, t1, s + 1, steps);
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

  // Dormand-Prince 5(4) with first-same-as-last and Hairer's initial step. The controller runs on
  // the distance s in [0, length] from t0 (dp::Direction): h > 0 in either direction.
  namespace dp = hd::dopri5;
  const dp::Direction dir(t0, t1);
  const float length = dir.length;
  float s = 0.0f;
  eval(t0, x, k1);
  float h;
  const std::vector<float> zero(n, 0.0f);
  {
    const double d0 = rms_scaled(x, x, zero, atol, rtol), d1 = rms_scaled(k1, x, zero, atol, rtol);
    const double h0 = dp::first_guess(d0, d1, length);
    combine(y, x, dir.step(static_cast<float>(h0)), {{1.0f, &k1}});
    eval(dir.at(s, static_cast<float>(h0)), y, k2);
    for (size_t i = 0; i < n; ++i) k3[i] = k2[i] - k1[i];
    const double d2 = rms_scaled(k3, x, zero, atol, rtol) / h0;
    h = dp::initial_step(h0, d1, d2, length);
  }
  std::vector<float> err(n);
  while (s < length) {
    CUFM_REQUIRE(r.accepted_steps + r.rejected_steps < max_steps,
                 "dopri5 did not reach t = " << t1 << " within max_steps = " << max_steps << " (at t = "
                                             << dir.time(s) << "): loosen atol/rtol or raise max_steps");
    if (s + h > length || length - (s + h) < 1e-6f * length) h = length - s;
    const float hs = dir.step(h);  // the signed step the stage combinations take
    combine(y, x, hs, {{dp::a21, &k1}});
    eval(dir.at(s, dp::c2 * h), y, k2);
    combine(y, x, hs, {{dp::a31, &k1}, {dp::a32, &k2}});
    eval(dir.at(s, dp::c3 * h), y, k3);
    combine(y, x, hs, {{dp::a41, &k1}, {dp::a42, &k2}, {dp::a43, &k3}});
    eval(dir.at(s, dp::c4 * h), y, k4);
    combine(y, x, hs, {{dp::a51, &k1}, {dp::a52, &k2}, {dp::a53, &k3}, {dp::a54, &k4}});
    eval(dir.at(s, dp::c5 * h), y, k5);
    combine(y, x, hs, {{dp::a61, &k1}, {dp::a62, &k2}, {dp::a63, &k3}, {dp::a64, &k4}, {dp::a65, &k5}});
    eval(dir.at(s, h), y, k6);
    combine(y, x, hs, {{dp::b1, &k1}, {dp::b3, &k3}, {dp::b4, &k4}, {dp::b5, &k5}, {dp::b6, &k6}});
    eval(dir.at(s, h), y, k7);
    combine(err, zero, hs,
            {{dp::e1, &k1}, {dp::e3, &k3}, {dp::e4, &k4}, {dp::e5, &k5}, {dp::e6, &k6}, {dp::e7, &k7}});
    const double e = rms_scaled(err, x, y, atol, rtol);
    if (e <= 1.0) {
      s = (s + h >= length) ? length : s + h;
      std::swap(x, y);
      std::swap(k1, k7);  // first same as last
      ++r.accepted_steps;
      traj.record(dir.time(s), x);
    } else {
      ++r.rejected_steps;
    }
    h *= dp::step_factor(e);
    dp::check_step(h, dir.time(s), length);
  }
  r.x = std::move(x);
  return r;
}

}  // namespace cufm::cpu
