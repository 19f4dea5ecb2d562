// The ODE solvers over host arrays: the driver of host/solver_driver.hpp (the fixed-step tableaux
// and Dormand-Prince 5(4) with its controller, in either direction) with a field the caller gives:
// cufm::integrate's callback, the CPU backend's sampler, the flow with its divergence. The CUDA
// backend (host/cuda/cuda_sampler.cpp) runs the same driver over device arrays.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cufm/detail/math.hpp"
#include "cufm/error.hpp"
#include "host/draws.hpp"
#include "host/solver_driver.hpp"

namespace cufm::detail {

namespace {

// The driver's backend on the CPU: combinations with hd::combine_at, the field through f, the
// error norm summed in double in element order.
class HostSteps {
 public:
  HostSteps(const HostField& f, size_t n, float atol, float rtol, std::vector<float>* times,
            std::vector<float>* states)
      : f_(f), n_(static_cast<int64_t>(n)), atol_(atol), rtol_(rtol), times_(times), states_(states) {}

  void eval(float t, const hd::Combination& c, float* k, float* y_out) {
    const float* at = c.x;
    if (c.terms > 0) {  // a stage point: into y_out, or a scratch buffer
      float* y = y_out;
      if (!y) {
        scratch_.resize(static_cast<size_t>(n_));
        y = scratch_.data();
      }
      update(c, y);
      at = y;
    }
    f_(t, at, k);
    ++evaluations;
  }

  void update(const hd::Combination& c, float* x_out) {
#pragma omp parallel for schedule(static) if (n_ >= kHostParallelMin)
    for (int64_t i = 0; i < n_; ++i) x_out[i] = hd::combine_at(c, i);
  }

  double update_with_error(const hd::Combination& y, float* y_out, const hd::Combination& err) {
    err_.resize(static_cast<size_t>(n_));
    update(y, y_out);
    update(err, err_.data());
    return rms(err_.data(), y.x, y_out);
  }

  double norm(const float* e, const float* x) {
    return rms(e, x, nullptr);
  }

  void record(float t, const float* x) {
    if (!times_) return;
    times_->push_back(t);
    states_->insert(states_->end(), x, x + n_);
  }

  int64_t evaluations = 0;

 private:
  double rms(const float* e, const float* x, const float* xn) const {
    double s = 0.0;
    for (int64_t i = 0; i < n_; ++i) s += hd::scaled_error_sq(e[i], x[i], xn ? xn[i] : 0.0f, atol_, rtol_);
    return std::sqrt(s / static_cast<double>(std::max<int64_t>(1, n_)));
  }

  const HostField& f_;
  const int64_t n_;
  const float atol_, rtol_;
  std::vector<float>* times_;
  std::vector<float>* states_;
  std::vector<float> scratch_, err_;
};

}  // namespace

OdeResult integrate_field(const HostField& f, std::vector<float> x, Solver solver, int steps, float atol, float rtol,
                    int max_steps, float t0, float t1, std::vector<float>* times,
                    std::vector<float>* states) {
  const size_t n = x.size();
  HostSteps b(f, n, atol, rtol, times, states);
  std::vector<std::vector<float>> k(static_cast<size_t>(solver_stages(solver)),
                                    std::vector<float>(n));
  std::vector<float*> kp;
  for (std::vector<float>& ki : k) kp.push_back(ki.data());
  std::vector<float> y(n);
  OdeResult r;
  if (solver == Solver::Dopri5) {
    StepCounts counts;
    const float* final_x = dopri5(b, t0, t1, max_steps, x.data(), y.data(), kp.data(), counts);
    if (final_x != x.data()) x.swap(y);
    r.accepted_steps = counts.accepted;
    r.rejected_steps = counts.rejected;
  } else {
    const hd::FixedTableau& tab = fixed_tableau(solver);
    b.record(t0, x.data());
    for (int s = 0; s < steps; ++s) {  // x in place: each element is read before it is written
      fixed_step(b, tab, hd::fixed_step_time(t0, t1, s, steps),
                         hd::fixed_step_time(t0, t1, s + 1, steps), x.data(), x.data(), kp.data(), y.data());
      ++r.accepted_steps;
      b.record(hd::fixed_step_time(t0, t1, s + 1, steps), x.data());
    }
  }
  r.evaluations = b.evaluations;
  r.x = std::move(x);
  return r;
}

}  // namespace cufm::detail
