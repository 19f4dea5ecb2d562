// integrate(): the model's field from the caller's points, over any span of [0, 1] in either
// direction. sample() is integrate() from the seed's noise, bit for bit; back-then-forth returns to
// the start within the solver's error; the generic CPU integrator runs backwards at its order.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cufm/error.hpp"
#include "cufm/sampler.hpp"

namespace {

using namespace cufm;

MlpConfig small_model(int classes) {
  MlpConfig m;
  m.data_dim = 3;
  m.hidden = {48, 48};
  m.time_features = 4;
  m.num_classes = classes;
  return m;
}

SampleConfig cpu_config(Solver s) {
  SampleConfig c;
  c.count = 200;
  c.solver = s;
  c.steps = 16;
  c.seed = 7;
  c.device = Device::CPU;
  c.threads = 1;
  return c;
}

std::vector<float> noise(const SampleConfig& c, int dim) {
  std::vector<float> x0(static_cast<size_t>(c.count) * dim);
  sampler_noise(c.seed, 0, c.count, dim, x0.data());
  return x0;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  return m;
}

class SampleIsIntegrate : public ::testing::TestWithParam<Solver> {};

TEST_P(SampleIsIntegrate, BitForBit) {
  const Model model(small_model(4), 3);
  for (bool guided : {false, true}) {
    SampleConfig c = cpu_config(GetParam());
    c.keep_trajectory = true;
    if (guided) {
      c.labels = {1};
      c.guidance = 2.0f;
    }
    const SampleResult s = sample(model, c);
    const SampleResult r = integrate(model, noise(c, 3), c);
    EXPECT_TRUE(same_bits(s.x, r.x)) << (guided ? "guided" : "unguided");
    EXPECT_TRUE(same_bits(s.trajectory, r.trajectory));
    EXPECT_TRUE(same_bits(s.times, r.times));
    EXPECT_EQ(s.evaluations, r.evaluations);
    EXPECT_EQ(s.accepted_steps, r.accepted_steps);
  }
}

INSTANTIATE_TEST_SUITE_P(Solvers, SampleIsIntegrate,
                         ::testing::Values(Solver::Euler, Solver::Midpoint, Solver::Heun, Solver::RK4,
                                           Solver::Dopri5),
                         [](const auto& p) { return std::string(to_string(p.param)); });

// Data back to noise and forward again: the start comes back within the solver's error. The
// round trip's error shrinks with the tolerance (Dopri5) and with the step count (RK4).
TEST(IntegrateBackwards, RoundTripReturnsToTheStart) {
  const Model model(small_model(0), 5);
  SampleConfig c = cpu_config(Solver::Dopri5);
  const std::vector<float> x0 = noise(c, 3);
  double prev = 1e9;
  for (float tol : {1e-3f, 1e-5f}) {
    c.atol = c.rtol = tol;
    c.t0 = 1.0f;
    c.t1 = 0.0f;
    const SampleResult back = integrate(model, x0, c);
    EXPECT_GT(max_abs_diff(back.x, x0), 0.1);  // it went somewhere
    c.t0 = 0.0f;
    c.t1 = 1.0f;
    const SampleResult there = integrate(model, back.x, c);
    const double err = max_abs_diff(there.x, x0);
    EXPECT_LT(err, 50 * tol) << "dopri5 tolerance " << tol;
    EXPECT_LT(err, prev);
    prev = err;
  }
  SampleConfig rk = cpu_config(Solver::RK4);
  rk.steps = 64;
  rk.t0 = 0.8f;
  rk.t1 = 0.1f;
  const SampleResult back = integrate(model, x0, rk);
  std::swap(rk.t0, rk.t1);
  const SampleResult there = integrate(model, back.x, rk);
  EXPECT_LT(max_abs_diff(there.x, x0), 1e-4);
}

TEST(IntegrateBackwards, TrajectoryRunsFromT0ToT1) {
  const Model model(small_model(0), 5);
  for (Solver s : {Solver::Midpoint, Solver::Dopri5}) {
    SampleConfig c = cpu_config(s);
    c.keep_trajectory = true;
    c.t0 = 0.9f;
    c.t1 = 0.2f;
    const std::vector<float> x0 = noise(c, 3);
    const SampleResult r = integrate(model, x0, c);
    ASSERT_GE(r.times.size(), 2u);
    EXPECT_EQ(r.times.front(), 0.9f);
    EXPECT_EQ(r.times.back(), 0.2f);
    for (size_t i = 1; i < r.times.size(); ++i) EXPECT_LT(r.times[i], r.times[i - 1]) << to_string(s);
    ASSERT_EQ(r.trajectory.size(), r.times.size() * x0.size());
    EXPECT_TRUE(std::equal(x0.begin(), x0.end(), r.trajectory.begin()));
    EXPECT_TRUE(
        std::equal(r.x.begin(), r.x.end(), r.trajectory.end() - static_cast<std::ptrdiff_t>(x0.size())));
  }
}

TEST(IntegrateArguments, RefusedWithTheReason) {
  const Model model(small_model(0), 5);
  SampleConfig c = cpu_config(Solver::Euler);
  const std::vector<float> x0 = noise(c, 3);
  auto message = [&](const SampleConfig& cfg, const std::vector<float>& x) -> std::string {
    try {
      integrate(model, x, cfg);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message(c, std::vector<float>(x0.begin(), x0.end() - 1)).find("x0 holds 599 floats"),
            std::string::npos);
  SampleConfig same = c;
  same.t0 = same.t1 = 0.5f;
  EXPECT_NE(message(same, x0).find("t0 != t1"), std::string::npos);
  SampleConfig outside = c;
  outside.t1 = 1.5f;
  EXPECT_NE(message(outside, x0).find("must lie in [0, 1]"), std::string::npos);
  outside.t1 = std::nanf("");
  EXPECT_NE(message(outside, x0).find("must lie in [0, 1]"), std::string::npos);
}

// The generic integrator backwards on dx/dt = -2 t x: x(t1) = x(t0) exp(t0^2 - t1^2).
TEST(IntegrateBackwards, GenericFieldAtItsOrder) {
  auto f = [](float t, const float* x, float* v) {
    for (int i = 0; i < 2; ++i) v[i] = -2.0f * t * x[i];
  };
  const std::vector<float> x0 = {0.7f, -1.3f};
  auto err = [&](Solver s, int steps) {
    const OdeResult r = integrate(f, x0, s, steps, 1e-7f, 1e-7f, 100000, 1.0f, 0.25f);
    const double g = std::exp(1.0 - 0.0625);
    return std::max(std::abs(r.x[0] - x0[0] * g), std::abs(r.x[1] - x0[1] * g));
  };
  EXPECT_NEAR(std::log2(err(Solver::Midpoint, 16) / err(Solver::Midpoint, 32)), 2.0, 0.3);
  EXPECT_NEAR(std::log2(err(Solver::RK4, 4) / err(Solver::RK4, 8)), 4.0, 0.3);
  EXPECT_LT(err(Solver::Dopri5, 0), 1e-5);
  EXPECT_THROW(integrate(f, x0, Solver::Euler, 4, 1e-6f, 1e-6f, 100, 0.5f, 0.5f), Error);
}

}  // namespace
