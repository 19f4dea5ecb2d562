// The solvers' steps, written once for both backends (internal): host/cpu/cpu_sampler.cpp runs
// them over host arrays, host/cuda/cuda_sampler.cpp over device arrays with fused stage kernels
// (and captures the fixed steps as CUDA graphs). A backend B provides, for arrays of the batch's
// length:
//   void eval(float t, const hd::Combination& y, float* k, float* y_out);
//       k = v(t, y) at the stage point y (kept in y_out when y_out is not nullptr)
//   void update(const hd::Combination& c, float* x_out);            x_out = c
//   double update_with_error(const hd::Combination& y, float* y_out, const hd::Combination& err);
//       y_out = y, and the RMS over the batch of hd::scaled_error_sq(err, y.x, y_out)
//   double norm(const float* e, const float* x);                    that RMS for e against (x, 0)
//   void record(float t, const float* x);                           a trajectory point
// so that the stage times, the tableaux and Dormand-Prince's controller are the same code on both.
#pragma once

#include <functional>
#include <initializer_list>
#include <utility>
#include <vector>

#include "cufm/detail/math.hpp"
#include "cufm/detail/solver_tableau.hpp"
#include "cufm/error.hpp"
#include "cufm/sampler.hpp"

namespace cufm::detail {

inline hd::Combination combination(const float* x, float h,
                                   std::initializer_list<std::pair<float, const float*>> terms) {
  hd::Combination c;
  c.x = x;
  c.h = h;
  for (const auto& [a, k] : terms) {
    c.a[c.terms] = a;
    c.k[c.terms] = k;
    ++c.terms;
  }
  return c;
}

inline const hd::FixedTableau& fixed_tableau(Solver s) {
  const hd::FixedTableau* tab = hd::fixed_tableau_of(s);
  CUFM_REQUIRE(tab, "fixed_tableau: " << to_string(s) << " is not a fixed-step solver");
  return *tab;
}

// Stage buffers a solver needs: its tableau's stages, or Dormand-Prince's seven.
inline int solver_stages(Solver s) {
  return s == Solver::Dopri5 ? hd::kMaxStages : fixed_tableau(s).stages;
}
inline int solver_order_of(Solver s) {
  return s == Solver::Dopri5 ? hd::dopri5::kOrder : fixed_tableau(s).order;
}
inline int solver_evaluations_of(Solver s) {
  return s == Solver::Dopri5 ? hd::dopri5::kEvaluationsPerStep : fixed_tableau(s).stages;
}

// One fixed step from x at time t to xn at time tn: k[i] for each stage, y a stage point's buffer.
template <class B>
void fixed_step(B& b, const hd::FixedTableau& tab, float t, float tn, const float* x, float* xn,
                float* const* k, float* y) {
  const float h = tn - t;
  for (int i = 0; i < tab.stages; ++i) {
    const hd::FixedStage& st = tab.stage[i];
    hd::Combination c;
    c.x = x;
    c.h = i == 0 ? 0.0f : st.scale * h;
    for (int j = 0; j < i; ++j) {
      if (st.a[j] == 0.0f) continue;
      c.a[c.terms] = st.a[j];
      c.k[c.terms] = k[j];
      ++c.terms;
    }
    const float ts = st.c == 0.0f ? t : st.c == 1.0f ? tn : t + st.c * h;
    b.eval(ts, c, k[i], i == 0 ? nullptr : y);
  }
  hd::Combination u;
  u.x = x;
  u.h = h;
  for (int j = 0; j < tab.stages; ++j) {
    if (tab.b[j] == 0.0f) continue;
    u.a[u.terms] = tab.b[j];
    u.k[u.terms] = k[j];
    ++u.terms;
  }
  b.update(u, xn);
}

struct StepCounts {
  int accepted = 0, rejected = 0;
};

// Dormand-Prince 5(4) with first-same-as-last and Hairer's initial step, from x over [t0, t1] in
// either direction (the controller runs on the distance from t0: hd::dopri5::Direction). x, y and
// the seven k are swapped around as it goes: returns the buffer that holds the final state.
template <class B>
float* dopri5(B& b, float t0, float t1, int max_steps, float* x, float* y, float* const* k, StepCounts& n) {
  namespace dp = hd::dopri5;
  const dp::Direction dir(t0, t1);
  const float length = dir.length;
  float s = 0.0f;  // the distance from t0 covered so far
  float* k1 = k[0];
  float* k7 = k[6];
  float* const k2 = k[1];
  float* const k3 = k[2];
  float* const k4 = k[3];
  float* const k5 = k[4];
  float* const k6 = k[5];
  b.record(dir.t0, x);
  b.eval(dir.t0, combination(x, 0.0f, {}), k1, nullptr);
  float h;
  {
    const double d0 = b.norm(x, x), d1 = b.norm(k1, x);
    const double h0 = dp::first_guess(d0, d1, length);
    b.eval(dir.at(s, static_cast<float>(h0)), combination(x, dir.step(static_cast<float>(h0)), {{1.0f, k1}}),
           k2, y);
    b.update(combination(k2, 1.0f, {{-1.0f, k1}}), k3);
    const double d2 = b.norm(k3, x) / h0;
    h = dp::initial_step(h0, d1, d2, length);
  }
  while (s < length) {
    CUFM_REQUIRE(n.accepted + n.rejected < max_steps,
                 "dopri5 did not reach t = " << t1 << " within max_steps = " << max_steps << " (at t = "
                                             << dir.time(s) << "): loosen atol/rtol or raise max_steps");
    if (s + h > length || length - (s + h) < 1e-6f * length) h = length - s;
    const float hs = dir.step(h);  // the signed step the stage combinations take
    b.eval(dir.at(s, dp::c2 * h), combination(x, hs, {{dp::a21, k1}}), k2, nullptr);
    b.eval(dir.at(s, dp::c3 * h), combination(x, hs, {{dp::a31, k1}, {dp::a32, k2}}), k3, nullptr);
    b.eval(dir.at(s, dp::c4 * h), combination(x, hs, {{dp::a41, k1}, {dp::a42, k2}, {dp::a43, k3}}), k4,
           nullptr);
    b.eval(dir.at(s, dp::c5 * h),
           combination(x, hs, {{dp::a51, k1}, {dp::a52, k2}, {dp::a53, k3}, {dp::a54, k4}}), k5, nullptr);
    b.eval(dir.at(s, h),
           combination(x, hs, {{dp::a61, k1}, {dp::a62, k2}, {dp::a63, k3}, {dp::a64, k4}, {dp::a65, k5}}),
           k6, nullptr);
    const hd::Combination y_comb =
        combination(x, hs, {{dp::b1, k1}, {dp::b3, k3}, {dp::b4, k4}, {dp::b5, k5}, {dp::b6, k6}});
    b.eval(dir.at(s, h), y_comb, k7, y);
    const double e = b.update_with_error(
        y_comb, y,
        combination(nullptr, hs,
                    {{dp::e1, k1}, {dp::e3, k3}, {dp::e4, k4}, {dp::e5, k5}, {dp::e6, k6}, {dp::e7, k7}}));
    if (e <= 1.0) {
      s = (s + h >= length) ? length : s + h;
      std::swap(x, y);
      std::swap(k1, k7);  // first same as last
      ++n.accepted;
      b.record(dir.time(s), x);
    } else {
      ++n.rejected;
    }
    h *= dp::step_factor(e);
    dp::check_step(h, dir.time(s), length);
  }
  return x;
}

// The driver over host arrays (host/host_solver.cpp): integrates dx/dt = f(t, x) over the whole
// batch x0 from t0 to t1 (t1 < t0: backwards) with `steps` fixed steps or Dopri5's controller; with
// times and states set, records the time and the state at the start and after every (accepted)
// step.
using HostField = std::function<void(float t, const float* x, float* v)>;
OdeResult integrate_field(const HostField& f, std::vector<float> x0, Solver solver, int steps, float atol,
                          float rtol, int max_steps, float t0, float t1, std::vector<float>* times,
                          std::vector<float>* states);

}  // namespace cufm::detail
