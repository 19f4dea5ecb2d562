// Each solver's order of convergence on a field with a known solution, and Dormand-Prince
// meeting its tolerance.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "cufm/error.hpp"
#include "cufm/sampler.hpp"

namespace {

using namespace cufm;

// dx/dt = w t J x with J the 90-degree rotation: x(1) is x(0) rotated by w/2 radians. The field
// depends on t, so a solver must evaluate its stages at the right times to reach its order.
constexpr double kOmega = 3.0;
void field(float t, const float* x, float* v, int pairs) {
  const float wt = static_cast<float>(kOmega) * t;
  for (int i = 0; i < pairs; ++i) {
    v[2 * i] = -wt * x[2 * i + 1];
    v[2 * i + 1] = wt * x[2 * i];
  }
}

double error_at_one(Solver s, int steps, float atol = 1e-6f, float rtol = 1e-6f, OdeResult* out = nullptr) {
  const int pairs = 3;
  std::vector<float> x0 = {1.0f, 0.0f, 0.3f, -0.8f, -1.2f, 0.5f};
  OdeResult r =
      integrate([&](float t, const float* x, float* v) { field(t, x, v, pairs); }, x0, s, steps, atol, rtol);
  const double a = kOmega / 2, c = std::cos(a), sn = std::sin(a);
  double err = 0;
  for (int i = 0; i < pairs; ++i) {
    const double ex = c * x0[2 * i] - sn * x0[2 * i + 1], ey = sn * x0[2 * i] + c * x0[2 * i + 1];
    err = std::max({err, std::abs(r.x[2 * i] - ex), std::abs(r.x[2 * i + 1] - ey)});
  }
  if (out) *out = r;
  return err;
}

struct OrderCase {
  Solver solver;
  int order;
  int n;  // coarse step count; errors at n and 2n stay far above float rounding
};

class Order : public ::testing::TestWithParam<OrderCase> {};

TEST_P(Order, ConvergesAtItsOrder) {
  const OrderCase c = GetParam();
  EXPECT_EQ(solver_order(c.solver), c.order);
  const double e1 = error_at_one(c.solver, c.n), e2 = error_at_one(c.solver, 2 * c.n);
  const double observed = std::log2(e1 / e2);
  EXPECT_NEAR(observed, c.order, 0.3)
      << "errors " << e1 << " at " << c.n << " steps, " << e2 << " at " << 2 * c.n;
}

INSTANTIATE_TEST_SUITE_P(Solvers, Order,
                         ::testing::Values(OrderCase{Solver::Euler, 1, 64},
                                           OrderCase{Solver::Midpoint, 2, 16}, OrderCase{Solver::Heun, 2, 16},
                                           OrderCase{Solver::RK4, 4, 4}),
                         [](const auto& p) { return std::string(to_string(p.param.solver)); });

TEST(Dopri5, MeetsItsToleranceAndAdapts) {
  OdeResult loose, tight;
  const double e_loose = error_at_one(Solver::Dopri5, 0, 1e-3f, 1e-3f, &loose);
  const double e_tight = error_at_one(Solver::Dopri5, 0, 1e-6f, 1e-6f, &tight);
  EXPECT_LT(e_loose, 1e-2);  // global error within a small multiple of the tolerance
  EXPECT_LT(e_tight, 1e-5);
  EXPECT_LT(e_tight, e_loose);
  EXPECT_GT(tight.accepted_steps, loose.accepted_steps);
  EXPECT_GE(loose.evaluations, 6 * loose.accepted_steps);
}

TEST(Dopri5, GivesUpClearlyAtMaxSteps) {
  std::vector<float> x0 = {1.0f, 0.0f};
  EXPECT_THROW(integrate([](float t, const float* x, float* v) { field(t, x, v, 1); }, x0, Solver::Dopri5, 0,
                         1e-7f, 1e-7f, 2),
               cufm::Error);
}

}  // namespace
