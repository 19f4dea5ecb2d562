// Log-likelihoods on the GPU against the CPU backend: the velocity and its divergence (exact and
// Hutchinson on the same probes; every activation, time features, classes, contexts, guidance; one
// chunk each: a chunk holds about 2^25 / (P x the widest layer) points), then log_prob and
// sample(with_log_prob) end to end. Both run fp32 with their own GEMM summation orders, so the comparisons
// have tolerances, stated at each.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cufm/likelihood.hpp"
#include "cufm/sampler.hpp"
#include "gpu/gpu_test_util.hpp"
#include "host/cuda/cuda_backend.hpp"
#include "host/cpu/cpu_ops.hpp"

namespace cufm {
namespace {

struct Case {
  Activation act;
  int time_features, classes;
  bool guided, hutchinson;
  int context = 0;
};

class GpuDivergence : public ::testing::TestWithParam<Case> {};

TEST_P(GpuDivergence, MatchesTheCpu) {
  CUFM_REQUIRE_GPU();
  const Case c = GetParam();
  MlpConfig m;
  m.data_dim = 6;
  m.hidden = {40, 24, 32};
  m.activation = c.act;
  m.time_features = c.time_features;
  m.num_classes = c.classes;
  m.context_dim = c.context;
  const Model model(m, 17);
  const int n = test::pick(3000, 300), D = m.data_dim, P = c.hutchinson ? 5 : D;
  std::vector<float> x(static_cast<size_t>(n) * D);
  sampler_noise(2, 0, n, D, x.data());
  std::vector<int32_t> labels;
  for (int i = 0; i < n && c.classes > 0; ++i) labels.push_back(i % (c.classes + 1));
  std::vector<float> context(static_cast<size_t>(n) * c.context);
  for (size_t j = 0; j < context.size(); ++j) context[j] = std::sin(0.3f * static_cast<float>(j));
  const float* ctx = context.empty() ? nullptr : context.data();
  std::vector<float> probes;
  if (c.hutchinson) {
    probes.resize(static_cast<size_t>(n) * P * D);
    cpu::rademacher_probes(4, 0, n, P, D, probes.data());
  }
  const float w = 1.7f;
  std::vector<float> v_cpu(x.size()), div_cpu(n), v_gpu(x.size()), div_gpu(n);
  cpu::DivergenceScratch s;
  cpu::evaluate_divergence(m, model.params().data(), x.data(), 0.45f,
                           labels.empty() ? nullptr : labels.data(), ctx, n, c.guided ? &w : nullptr,
                           c.hutchinson ? probes.data() : nullptr, P, v_cpu.data(), div_cpu.data(), s);
  detail::CudaDivergencePtr gpu = detail::make_cuda_divergence(model);
  detail::cuda_divergence_evaluate(*gpu, 0.45f, x.data(), labels.empty() ? nullptr : labels.data(), ctx, n,
                                   c.guided ? &w : nullptr, c.hutchinson ? probes.data() : nullptr, P,
                                   v_gpu.data(), div_gpu.data());
  // fp32 GEMMs summed in other orders, and the device's fast exp in SiLU/GELU: a few ulps per layer.
  EXPECT_TRUE(test::close_to_scale(v_gpu, v_cpu, 1e-5, 1e-4));
  EXPECT_TRUE(test::close_to_scale(div_gpu, div_cpu, 1e-5, 1e-4));
  EXPECT_GT(test::norm2(div_gpu), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Cases, GpuDivergence,
                         ::testing::Values(Case{Activation::SiLU, 0, 0, false, false},
                                           Case{Activation::ReLU, 0, 0, false, true},
                                           Case{Activation::GELU, 8, 0, false, false},
                                           Case{Activation::SiLU, 6, 4, true, false},
                                           Case{Activation::GELU, 0, 3, true, true},
                                           Case{Activation::SiLU, 0, 0, false, false, 20},
                                           Case{Activation::SiLU, 4, 2, true, true, 7}),
                         [](const ::testing::TestParamInfo<Case>& pi) {
                           const Case& c = pi.param;
                           return std::string(to_string(c.act)) + "_tf" + std::to_string(c.time_features) +
                                  "_c" + std::to_string(c.classes) + (c.guided ? "_guided" : "") +
                                  (c.hutchinson ? "_hutchinson" : "_exact") + "_k" +
                                  std::to_string(c.context);
                         });

// log_prob and sample(with_log_prob) end to end on both devices: the same solver steps (fixed
// steps; Dormand-Prince may take other steps on a last-bit difference), densities within 2e-3.
TEST(GpuLogProb, MatchesTheCpuEndToEnd) {
  CUFM_REQUIRE_GPU();
  MlpConfig m;
  m.data_dim = 4;
  m.hidden = {64, 64};
  m.time_features = 8;
  m.num_classes = 3;
  const Model model(m, 23);
  SampleConfig sc;
  sc.count = test::pick(2000, 200);
  sc.solver = Solver::RK4;
  sc.steps = 16;
  sc.labels = {2};
  sc.guidance = 2.0f;
  sc.with_log_prob = true;
  sc.device = Device::CPU;
  const SampleResult a = sample(model, sc);
  sc.device = Device::CUDA;
  const SampleResult b = sample(model, sc);
  EXPECT_EQ(b.device, Device::CUDA);
  EXPECT_TRUE(test::close_to_scale(b.x, a.x, 1e-4, 1e-4));
  EXPECT_TRUE(test::all_close(b.log_prob.data(), a.log_prob.data(), a.log_prob.size(), 2e-3, 1e-4));
  for (Solver solver : {Solver::Midpoint, Solver::Dopri5}) {
    for (Divergence div : {Divergence::Exact, Divergence::Hutchinson}) {
      LogProbConfig lc;
      lc.solver = solver;
      lc.steps = 16;
      lc.labels = {2};
      lc.guidance = 2.0f;
      lc.divergence = div;
      lc.probes = 3;
      lc.device = Device::CPU;
      const LogProbResult c = log_prob(model, a.x, lc);
      lc.device = Device::CUDA;
      const LogProbResult g = log_prob(model, a.x, lc);
      EXPECT_EQ(g.device, Device::CUDA);
      SCOPED_TRACE(std::string(to_string(solver)) + ", " + to_string(div));
      EXPECT_TRUE(test::all_close(g.log_prob.data(), c.log_prob.data(), c.log_prob.size(), 2e-3, 1e-4));
      EXPECT_TRUE(test::close_to_scale(g.noise, c.noise, 1e-4, 1e-4));
    }
  }
}

// A model with a context (one per point, guided towards it): sampling, log_prob and the field on
// both devices.
TEST(GpuLogProb, WithAContextMatchesTheCpu) {
  CUFM_REQUIRE_GPU();
  MlpConfig m;
  m.data_dim = 3;
  m.hidden = {64, 64};
  m.context_dim = 5;
  const Model model(m, 29);
  SampleConfig sc;
  sc.count = test::pick(1500, 150);
  sc.solver = Solver::Midpoint;
  sc.steps = 12;
  sc.context.resize(static_cast<size_t>(sc.count) * 5);
  for (size_t j = 0; j < sc.context.size(); ++j) sc.context[j] = std::cos(0.37f * static_cast<float>(j));
  sc.guidance = 1.5f;
  sc.with_log_prob = true;
  sc.device = Device::CPU;
  const SampleResult a = sample(model, sc);
  sc.device = Device::CUDA;
  const SampleResult b = sample(model, sc);
  EXPECT_TRUE(test::close_to_scale(b.x, a.x, 1e-4, 1e-4));
  EXPECT_TRUE(test::all_close(b.log_prob.data(), a.log_prob.data(), a.log_prob.size(), 2e-3, 1e-4));
  sc.with_log_prob = false;  // the solver's graphs, with the context staged per sample
  const SampleResult g = sample(model, sc);
  sc.device = Device::CPU;
  const SampleResult h = sample(model, sc);
  EXPECT_TRUE(test::close_to_scale(g.x, h.x, 1e-4, 1e-4));
  LogProbConfig lc;
  lc.solver = Solver::Midpoint;
  lc.steps = 12;
  lc.context = sc.context;
  lc.device = Device::CPU;
  const LogProbResult c = log_prob(model, a.x, lc);
  lc.device = Device::CUDA;
  const LogProbResult d = log_prob(model, a.x, lc);
  EXPECT_TRUE(test::all_close(d.log_prob.data(), c.log_prob.data(), c.log_prob.size(), 2e-3, 1e-4));
  FieldOptions fo;
  fo.device = Device::CUDA;
  VelocityField field(model, fo);
  fo.device = Device::CPU;
  VelocityField field_cpu(model, fo);
  std::vector<float> v_gpu(a.x.size()), v_cpu(a.x.size());
  field.evaluate(0.4f, a.x.data(), nullptr, sc.context.data(), sc.count, v_gpu.data());
  field_cpu.evaluate(0.4f, a.x.data(), nullptr, sc.context.data(), sc.count, v_cpu.data());
  // The field runs cuBLASLt (its own summation orders), as test_gpu_sampling's field test does.
  EXPECT_TRUE(test::close_to_scale(v_gpu, v_cpu, 1e-4, 1e-4));
}

}  // namespace
}  // namespace cufm
