// Log-likelihoods: the divergence against a float64 finite-difference Jacobian trace of the same
// MLP (every activation, time features, classes, contexts, guidance), Hutchinson against the exact trace
// within its own standard error, a linear field's analytic density for every solver, and the
// round trips between log_prob, integrate and sample(with_log_prob). On the GPU:
// tests/gpu/test_gpu_likelihood.cpp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cufm/detail/path.hpp"
#include "cufm/error.hpp"
#include "cufm/likelihood.hpp"
#include "cufm/sampler.hpp"
#include "float64_mlp.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "test_util.hpp"

namespace {

using namespace cufm;
using test::error_of;
using ::testing::HasSubstr;

// v(x, t, label, context) in double through the float64 oracle (guided when w is set: the null
// field has the null class and the null context).
std::vector<double> v64(const MlpConfig& m, const std::vector<double>& p, const std::vector<double>& x,
                        float t, int32_t label, const float* context, const double* w) {
  const int D = m.data_dim, in = m.input_dim();
  auto pass = [&](int32_t l, const float* ctx) {
    std::vector<double> input(in);
    for (int d = 0; d < D; ++d) input[d] = x[d];
    for (int c = 0; c < in - D; ++c)
      input[D + c] = hd::input_tail_value(t, m.time_features, m.context_dim, ctx, m.num_classes, l, c);
    return test::forward64(m, p, input, 1);
  };
  if (!w) return pass(m.num_classes > 0 ? label : -1, context);
  const std::vector<double> cond = pass(label, context), null = pass(m.null_class(), nullptr);
  std::vector<double> v(D);
  for (int d = 0; d < D; ++d) v[d] = null[d] + *w * (cond[d] - null[d]);
  return v;
}

// The Jacobian dv/dx [D, D] by central differences in double.
std::vector<double> jacobian64(const MlpConfig& m, const std::vector<double>& p, const float* x, float t,
                               int32_t label, const float* context, const double* w) {
  const int D = m.data_dim;
  const double h = 1e-6;
  std::vector<double> J(static_cast<size_t>(D) * D);
  for (int j = 0; j < D; ++j) {
    std::vector<double> xp(x, x + D), xm(x, x + D);
    xp[j] += h;
    xm[j] -= h;
    const std::vector<double> vp = v64(m, p, xp, t, label, context, w),
                              vm = v64(m, p, xm, t, label, context, w);
    for (int i = 0; i < D; ++i) J[i * D + j] = (vp[i] - vm[i]) / (2 * h);
  }
  return J;
}

struct DivCase {
  Activation act;
  int time_features, classes;
  bool guided;
  int context = 0;
};

class DivergenceCase : public ::testing::TestWithParam<DivCase> {};

TEST_P(DivergenceCase, ExactIsTheFloat64JacobianTrace) {
  const DivCase c = GetParam();
  MlpConfig m;
  m.data_dim = 5;
  m.hidden = {24, 16};
  m.activation = c.act;
  m.time_features = c.time_features;
  m.num_classes = c.classes;
  m.context_dim = c.context;
  const Model model(m, 11);
  const std::vector<double> p(model.params().begin(), model.params().end());
  const int n = 40, D = m.data_dim;
  std::vector<float> x(static_cast<size_t>(n) * D);
  sampler_noise(3, 0, n, D, x.data());
  for (float& v : x) v *= 1.5f;
  std::vector<int32_t> labels;
  for (int i = 0; i < n && c.classes > 0; ++i) labels.push_back(i % (c.classes + 1));
  std::vector<float> context(static_cast<size_t>(n) * c.context);
  for (size_t j = 0; j < context.size(); ++j) context[j] = std::sin(0.7f * static_cast<float>(j) + 0.1f);
  const float* ctx = context.empty() ? nullptr : context.data();
  const float w = 2.5f;
  const double w64 = w;
  const float t = 0.37f;
  std::vector<float> v(x.size()), div(n), v_ref(x.size());
  cpu::DivergenceScratch scratch;
  cpu::evaluate_divergence(m, model.params().data(), x.data(), t, labels.empty() ? nullptr : labels.data(),
                           ctx, n, c.guided ? &w : nullptr, nullptr, D, v.data(), div.data(), scratch);
  cpu::FieldScratch fs;
  cpu::evaluate_model(m, model.params().data(), x.data(), nullptr, t,
                      labels.empty() ? nullptr : labels.data(), ctx, n, c.guided ? &w : nullptr, v_ref.data(),
                      fs);
  EXPECT_EQ(v, v_ref);  // the velocity is the field's own, bit for bit
  std::vector<double> want(n);
  double scale = 0.0;
  for (int i = 0; i < n; ++i) {
    const std::vector<double> J =
        jacobian64(m, p, x.data() + i * D, t, labels.empty() ? -1 : labels[i],
                   ctx ? ctx + static_cast<size_t>(i) * c.context : nullptr, c.guided ? &w64 : nullptr);
    for (int d = 0; d < D; ++d) want[i] += J[d * D + d];
    for (double e : J) scale = std::max(scale, std::abs(e));
  }
  EXPECT_TRUE(test::all_close(div.data(), want.data(), n, 1e-5 * scale, 1e-4));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, DivergenceCase,
    ::testing::Values(DivCase{Activation::SiLU, 0, 0, false}, DivCase{Activation::ReLU, 0, 0, false},
                      DivCase{Activation::GELU, 0, 0, false}, DivCase{Activation::SiLU, 6, 3, false},
                      DivCase{Activation::GELU, 4, 3, true}, DivCase{Activation::ReLU, 0, 2, true},
                      DivCase{Activation::SiLU, 0, 0, false, 4}, DivCase{Activation::SiLU, 0, 0, true, 6},
                      DivCase{Activation::GELU, 4, 3, true, 3}),
    [](const ::testing::TestParamInfo<DivCase>& pi) {
      const DivCase& c = pi.param;
      return std::string(to_string(c.act)) + "_tf" + std::to_string(c.time_features) + "_c" +
             std::to_string(c.classes) + "_k" + std::to_string(c.context) + (c.guided ? "_guided" : "");
    });

// Hutchinson with P probes: unbiased, with variance sum_{i != j} (J_ij^2 + J_ij J_ji) / P; many
// probes land within five of its standard errors of the exact trace, at every point.
TEST(Divergence, HutchinsonIsWithinItsStandardErrorOfTheTrace) {
  MlpConfig m;
  m.data_dim = 8;
  m.hidden = {32, 32};
  const Model model(m, 5);
  const std::vector<double> p(model.params().begin(), model.params().end());
  const int n = 12, D = 8, P = 1000;
  std::vector<float> x(static_cast<size_t>(n) * D);
  sampler_noise(4, 0, n, D, x.data());
  std::vector<float> probes(static_cast<size_t>(n) * P * D);
  cpu::rademacher_probes(99, 0, n, P, D, probes.data());
  double mean = 0.0;
  for (float e : probes) {
    ASSERT_TRUE(e == 1.0f || e == -1.0f);
    mean += e;
  }
  EXPECT_LT(std::abs(mean / probes.size()), 0.02);  // balanced signs
  std::vector<float> v(x.size()), hutch(n), exact(n);
  cpu::DivergenceScratch s;
  cpu::evaluate_divergence(m, model.params().data(), x.data(), 0.6f, nullptr, nullptr, n, nullptr,
                           probes.data(), P, v.data(), hutch.data(), s);
  cpu::evaluate_divergence(m, model.params().data(), x.data(), 0.6f, nullptr, nullptr, n, nullptr, nullptr, D,
                           v.data(), exact.data(), s);
  for (int i = 0; i < n; ++i) {
    const std::vector<double> J = jacobian64(m, p, x.data() + i * D, 0.6f, -1, nullptr, nullptr);
    double var = 0.0;
    for (int a = 0; a < D; ++a)
      for (int b = 0; b < D; ++b)
        if (a != b) var += J[a * D + b] * J[a * D + b] + J[a * D + b] * J[b * D + a];
    const double se = std::sqrt(var / P);
    EXPECT_GT(se, 0.0);
    EXPECT_LT(std::abs(hutch[i] - exact[i]), 5.0 * se + 1e-5) << "point " << i << ", standard error " << se;
  }
  // The same seed, the same probes; points keyed by their index, not by the call's first row.
  std::vector<float> again(static_cast<size_t>(P) * D);
  cpu::rademacher_probes(99, 5, 1, P, D, again.data());
  EXPECT_TRUE(std::equal(again.begin(), again.end(), probes.begin() + static_cast<ptrdiff_t>(5) * P * D));
}

// A model whose field is exactly v = A x: a ReLU layer of [x; -x] and the output A (h+ - h-). The
// flow is x(t) = e^{At} x(0), so p_1 = N(0, S) with S = e^A e^{A^T} and log det S = 2 tr A.
struct LinearField {
  std::vector<double> A;  // [D, D]
  int D;
  Model model;
};

LinearField linear_field(const std::vector<double>& A, int D) {
  MlpConfig m;
  m.data_dim = D;
  m.hidden = {2 * D};
  m.activation = Activation::ReLU;
  std::vector<float> params(ParamLayout(m).total(), 0.0f);
  const ParamLayout layout(m);
  const int in = m.input_dim();  // D + 1 (raw t)
  for (int k = 0; k < D; ++k) {
    params[layout.weight_offset(0) + k * in + k] = 1.0f;
    params[layout.weight_offset(0) + (D + k) * in + k] = -1.0f;
  }
  for (int i = 0; i < D; ++i) {
    for (int k = 0; k < D; ++k) {
      params[layout.weight_offset(1) + i * 2 * D + k] = static_cast<float>(A[i * D + k]);
      params[layout.weight_offset(1) + i * 2 * D + D + k] = static_cast<float>(-A[i * D + k]);
    }
  }
  return {A, D, Model(m, params)};
}

// The analytic log p_1 of the linear field at x.
std::vector<double> linear_log_density(const LinearField& f, const std::vector<float>& x) {
  const int D = f.D;
  // M = e^A by its series, S = M M^T, then S^{-1} by Gauss-Jordan.
  std::vector<double> M(D * D, 0.0), term(D * D, 0.0);
  for (int i = 0; i < D; ++i) M[i * D + i] = term[i * D + i] = 1.0;
  for (int k = 1; k < 40; ++k) {
    std::vector<double> next(D * D, 0.0);
    for (int i = 0; i < D; ++i)
      for (int j = 0; j < D; ++j)
        for (int l = 0; l < D; ++l) next[i * D + j] += term[i * D + l] * f.A[l * D + j] / k;
    term = next;
    for (int i = 0; i < D * D; ++i) M[i] += term[i];
  }
  std::vector<double> S(D * D, 0.0), inv(D * D, 0.0);
  for (int i = 0; i < D; ++i)
    for (int j = 0; j < D; ++j)
      for (int l = 0; l < D; ++l) S[i * D + j] += M[i * D + l] * M[j * D + l];
  for (int i = 0; i < D; ++i) inv[i * D + i] = 1.0;
  std::vector<double> a = S;
  for (int c = 0; c < D; ++c) {
    const double piv = a[c * D + c];
    for (int j = 0; j < D; ++j) a[c * D + j] /= piv, inv[c * D + j] /= piv;
    for (int r = 0; r < D; ++r) {
      if (r == c) continue;
      const double fct = a[r * D + c];
      for (int j = 0; j < D; ++j) a[r * D + j] -= fct * a[c * D + j], inv[r * D + j] -= fct * inv[c * D + j];
    }
  }
  double trA = 0.0;
  for (int i = 0; i < D; ++i) trA += f.A[i * D + i];
  const int n = static_cast<int>(x.size()) / D;
  std::vector<double> out(n);
  for (int r = 0; r < n; ++r) {
    double q = 0.0;
    for (int i = 0; i < D; ++i)
      for (int j = 0; j < D; ++j) q += x[r * D + i] * inv[i * D + j] * x[r * D + j];
    out[r] = -0.5 * q - 0.5 * D * std::log(2 * M_PI) - trA;
  }
  return out;
}

struct SolverCase {
  Solver solver;
  int steps;
  double tol;
};

class LinearDensity : public ::testing::TestWithParam<SolverCase> {};

TEST_P(LinearDensity, LogProbIsTheAnalyticDensity) {
  const SolverCase sc = GetParam();
  // A diagonal plus a skew part: Hutchinson's e^T A e is then exactly tr A for every probe, so
  // both divergences must give the analytic density to the solver's accuracy.
  const LinearField f = linear_field({0.3, -0.8, 0.2, 0.8, -0.5, 0.4, -0.2, -0.4, 0.1}, 3);
  std::vector<float> x(3 * 64);
  sampler_noise(8, 0, 64, 3, x.data());
  for (float& v : x) v *= 1.3f;
  const std::vector<double> want = linear_log_density(f, x);
  for (Divergence div : {Divergence::Exact, Divergence::Hutchinson}) {
    LogProbConfig c;
    c.solver = sc.solver;
    c.steps = sc.steps;
    c.atol = c.rtol = 1e-7f;
    c.divergence = div;
    c.probes = 3;
    c.device = Device::CPU;
    const LogProbResult r = log_prob(f.model, x, c);
    EXPECT_EQ(r.divergence, div);
    EXPECT_TRUE(test::all_close(r.log_prob.data(), want.data(), want.size(), sc.tol, 0.0))
        << to_string(sc.solver) << ", " << to_string(div);
    for (float a : r.div_integral) EXPECT_NEAR(a, 0.3 - 0.5 + 0.1, 1e-5);  // tr A, constant in x and t
  }
}

INSTANTIATE_TEST_SUITE_P(
    Solvers, LinearDensity,
    // Euler is first order: at 2,000 steps its error here is 5.4e-3 (h times the path's curvature);
    // a sign or offset error in the density is 0.2 and fails every row.
    ::testing::Values(SolverCase{Solver::Euler, 2000, 1e-2}, SolverCase{Solver::Midpoint, 200, 1e-4},
                      SolverCase{Solver::Heun, 200, 1e-4}, SolverCase{Solver::RK4, 40, 1e-4},
                      SolverCase{Solver::Dopri5, 0, 1e-4}),
    [](const ::testing::TestParamInfo<SolverCase>& pi) { return std::string(to_string(pi.param.solver)); });

// A trained-looking model (random weights, classes, guidance): log_prob carries the points to the
// noise that integrate() reaches, and sample(with_log_prob) gives the density log_prob finds at
// its samples; fixed-step samples keep their bits.
TEST(LogProb, AgreesWithIntegrateAndSampling) {
  MlpConfig m;
  m.data_dim = 3;
  m.hidden = {32, 32};
  m.time_features = 4;
  m.num_classes = 2;
  const Model model(m, 21);
  SampleConfig sc;
  sc.count = 64;
  sc.solver = Solver::RK4;
  sc.steps = 20;
  sc.labels = {1};
  sc.guidance = 1.5f;
  sc.device = Device::CPU;
  const SampleResult plain = sample(model, sc);
  sc.with_log_prob = true;
  const SampleResult with = sample(model, sc);
  EXPECT_EQ(with.x, plain.x);  // fixed steps: the same x, bit for bit
  ASSERT_EQ(with.log_prob.size(), 64u);
  LogProbConfig lc;
  lc.solver = Solver::RK4;
  lc.steps = 20;
  lc.labels = {1};
  lc.guidance = 1.5f;
  lc.device = Device::CPU;
  const LogProbResult lp = log_prob(model, with.x, lc);
  EXPECT_TRUE(test::all_close(lp.log_prob.data(), with.log_prob.data(), 64, 2e-3, 1e-4));
  EXPECT_EQ(lp.mlp, "cpu divergence");
  EXPECT_EQ(with.mlp, "cpu divergence");
  std::vector<float> noise(static_cast<size_t>(64) * 3);
  sampler_noise(sc.seed, 0, 64, 3, noise.data());
  EXPECT_TRUE(test::all_close(lp.noise.data(), noise.data(), noise.size(), 2e-4, 1e-4));  // back to the start
  SampleConfig back = sc;
  back.with_log_prob = false;
  back.t0 = 1.0f;
  back.t1 = 0.0f;
  const SampleResult b = integrate(model, with.x, back);
  EXPECT_EQ(b.x, lp.noise);  // the same x path, bit for bit
  // Dormand-Prince controls the divergence's component too: more work, a tighter density.
  lc.solver = Solver::Dopri5;
  const LogProbResult d = log_prob(model, with.x, lc);
  EXPECT_TRUE(test::all_close(d.log_prob.data(), with.log_prob.data(), 64, 2e-3, 1e-4));
  EXPECT_GT(d.accepted_steps, 0);
}

TEST(LogProb, RefusedWithTheReason) {
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {8};
  const Model model(m, 1);
  LogProbConfig c;
  c.device = Device::CPU;
  EXPECT_THAT(error_of([&] {
                log_prob(model, {1.0f, 2.0f, 3.0f}, c);
              }),
              HasSubstr("x must hold [n, 2] floats"));
  EXPECT_THAT(error_of([&] {
                log_prob(model, {1.0f, NAN}, c);
              }),
              HasSubstr("x at row 0, column 1 is not finite"));
  c.probes = 0;
  EXPECT_THAT(error_of([&] {
                log_prob(model, {1.0f, 2.0f}, c);
              }),
              HasSubstr("probes must be in [1, 1024], got 0"));
  c.probes = 1;
  c.labels = {0};
  EXPECT_THAT(error_of([&] { log_prob(model, {1.0f, 2.0f}, c); }), HasSubstr("the model is unconditional"));
  EXPECT_THAT(error_of([] { parse_divergence("trace"); }), HasSubstr("unknown divergence 'trace'"));
  SampleConfig s;
  s.with_log_prob = true;
  s.t0 = 0.5f;
  s.device = Device::CPU;
  EXPECT_THAT(error_of([&] { sample(model, s); }), HasSubstr("with_log_prob needs t0 = 0"));
}

}  // namespace
