// Log-likelihoods on the GPU against the CPU backend: the velocity and its divergence (exact and
// Hutchinson on the same probes; every activation, time features, classes, contexts, guidance; one
// chunk each: a chunk holds about 2^25 / (P x the widest layer) points), the flow kept on the device
// against the host solver (several chunks), then log_prob and sample(with_log_prob) end to end. Both
// run fp32 with their own GEMM summation orders, so the comparisons have tolerances, stated at each.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cufm/likelihood.hpp"
#include "cufm/sampler.hpp"
#include "fused_twin.hpp"
#include "gpu/gpu_test_util.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "host/cuda/cuda_backend.hpp"
#include "host/divergence_flow.hpp"

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
  if (c.act == Activation::ReLU) {  // act' jumps at 0: a rare point may flip (close_to_scale_but)
    EXPECT_TRUE(test::close_to_scale_but(div_gpu, div_cpu, 1e-5, 1e-4, div_cpu.size() / 100));
  } else {
    EXPECT_TRUE(test::close_to_scale(div_gpu, div_cpu, 1e-5, 1e-4));
  }
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

// The flow with its divergence kept on the device (cuda_integrate_with_divergence) against the host
// solver over the CPU's divergence: the divergence in several chunks (37 points each), a kept
// trajectory, classes with guidance, exact and Hutchinson, every solver, one CudaDivergence reused
// across the calls (each binds its own conditions); the layered path, as CUFM_GPU_MLP=layered sets.
TEST(GpuDivergenceFlow, MatchesTheHostSolverOverTheCpu) {
  CUFM_REQUIRE_GPU();
  const test::GpuMlpEnv layered("layered");  // the fused flow has tests of its own (GpuFusedDivergence)
  MlpConfig m;
  m.data_dim = 5;
  m.hidden = {48, 32};
  m.time_features = 4;
  m.num_classes = 2;
  const Model model(m, 31);
  const int n = test::pick(400, 120), D = m.data_dim;
  std::vector<float> x(static_cast<size_t>(n) * D);
  sampler_noise(8, 0, n, D, x.data());
  detail::CudaDivergencePtr gpu = detail::make_cuda_divergence(model, 37);
  for (Solver solver : {Solver::Euler, Solver::Midpoint, Solver::Heun, Solver::RK4, Solver::Dopri5}) {
    for (Divergence div : {Divergence::Exact, Divergence::Hutchinson}) {
      SCOPED_TRACE(std::string(to_string(solver)) + ", " + to_string(div));
      detail::DivergenceFlow f;
      f.solver = solver;
      f.steps = 9;
      f.atol = f.rtol = 1e-4f;
      f.t0 = 1.0f;
      f.t1 = 0.0f;
      for (int i = 0; i < n; ++i) f.labels.push_back(i % 3);  // 2: the null class
      f.guidance = 1.5f;
      f.divergence = div;
      f.probes = 3;
      f.seed = 5;
      f.device = Device::CPU;
      const detail::DivergenceFlowResult c = detail::integrate_with_divergence(model, x.data(), n, f, true);
      std::vector<float> probes;
      if (div == Divergence::Hutchinson) {
        probes.resize(static_cast<size_t>(n) * f.probes * D);
        cpu::rademacher_probes(f.seed, 0, n, f.probes, D, probes.data());
      }
      f.dim = D;
      const detail::DivergenceFlowResult g = detail::cuda_integrate_with_divergence(
          *gpu, x.data(), n, f, probes.empty() ? nullptr : probes.data(), true);
      // fp32 GEMMs in other orders, compounded along the path (as the end-to-end tests below).
      EXPECT_TRUE(test::close_to_scale(g.x, c.x, 1e-4, 1e-4));
      EXPECT_TRUE(test::all_close(g.integral.data(), c.integral.data(), c.integral.size(), 2e-3, 1e-4));
      EXPECT_GT(test::norm2(g.integral), 0.0);
      if (solver != Solver::Dopri5) {  // Dormand-Prince may step differently on a last-bit difference
        EXPECT_EQ(g.counts.evaluations, c.counts.evaluations);
        EXPECT_EQ(g.counts.accepted_steps, f.steps);
        EXPECT_EQ(g.times, c.times);
        EXPECT_TRUE(test::close_to_scale(g.trajectory, c.trajectory, 1e-4, 1e-4));
      } else {
        EXPECT_GT(g.counts.accepted_steps, 0);
        ASSERT_EQ(g.trajectory.size(), g.times.size() * x.size());
        EXPECT_FLOAT_EQ(g.times.front(), 1.0f);
        EXPECT_FLOAT_EQ(g.times.back(), 0.0f);
      }
    }
  }
}

// The fused flow (the fused sampler's kernel with the divergence's tangents riding along) against
// its CPU twin (the same program: only the activations' exp differs) and the layered flow on the
// device: exact and Hutchinson, classes, contexts and guidance, ragged counts, a trajectory.
TEST(GpuFusedDivergence, MatchesItsCpuTwinAndTheLayeredFlow) {
  CUFM_REQUIRE_GPU();
  const test::GpuMlpEnv automatic("auto");  // the fused path here, whatever the ctest variant sets
  const test::FusedCase cases[] = {
      {"silu midpoint, 4 x 128", {128, 128, 128, 128}, Activation::SiLU, 0, 0, 0, Solver::Midpoint, 4, false},
      {"relu euler, classes, guided", {64, 64}, Activation::ReLU, 8, 3, 0, Solver::Euler, 5, true},
      {"gelu rk4, context, guided", {40, 56}, Activation::GELU, 4, 0, 5, Solver::RK4, 3, true},
      {"one layer heun, classes", {96}, Activation::SiLU, 0, 2, 0, Solver::Heun, 4, false},
  };
  for (const test::FusedCase& k : cases) {
    const Model model(test::fused_case_model(k), 37);
    const int D = model.config().data_dim;
    detail::CudaDivergencePtr gpu = detail::make_cuda_divergence(model);
    for (const bool hutchinson : {false, true}) {
      for (const int64_t n : {int64_t{1}, int64_t{127}, int64_t{2000}}) {
        SCOPED_TRACE(std::string(k.name) + (hutchinson ? ", hutchinson" : ", exact") + ", n " +
                     std::to_string(n));
        const SampleConfig c = test::fused_case_config(k, n, Device::CUDA, 3, 1, 1.7f);
        std::vector<float> x(static_cast<size_t>(n) * D);
        sampler_noise(12, 0, n, D, x.data());
        const detail::DivergenceFlow f = test::fused_case_flow(k, c, D, hutchinson, Device::CUDA);
        const int P = hutchinson ? f.probes : D;
        const std::vector<float> probes = test::flow_probes(f, n);
        const bool keep = n == 127;
        const float* pr = probes.empty() ? nullptr : probes.data();
        const detail::DivergenceFlowResult fused =
            detail::cuda_integrate_with_divergence(*gpu, x.data(), n, f, pr, keep);
        EXPECT_EQ(fused.mlp, "cuda fused divergence");
        EXPECT_EQ(fused.counts.evaluations, int64_t{k.steps} * solver_evaluations_per_step(k.solver));
        const float* w = c.guidance ? &*c.guidance : nullptr;
        const test::FlowTwinRun twin = test::run_fused_flow_twin(model, x, k.solver, k.steps, 1.0f, 0.0f,
                                                                 c.labels, c.context, w, P, probes, keep, 32);
        EXPECT_TRUE(test::close_to_scale(fused.x, twin.x, 1e-5, 1e-4));
        EXPECT_TRUE(test::close_to_scale(fused.integral, twin.integral, 1e-5, 1e-4));
        // (all_close fails an empty comparison: the trajectories only where one is kept)
        if (keep) {
          EXPECT_TRUE(test::close_to_scale(fused.trajectory, twin.trajectory, 1e-5, 1e-4));
        }
        EXPECT_EQ(fused.trajectory.empty(), !keep);
        EXPECT_GT(test::norm2(fused.integral), 0.0);
        detail::DivergenceFlowResult layered;
        {
          const test::GpuMlpEnv env("layered");
          layered = detail::cuda_integrate_with_divergence(*gpu, x.data(), n, f, pr, keep);
        }
        EXPECT_EQ(layered.mlp, "cuda layered divergence");
        // cuBLAS's summation orders against the fused program's, compounded along the path.
        EXPECT_TRUE(test::close_to_scale(fused.x, layered.x, 1e-4, 1e-4));
        if (k.activation == Activation::ReLU) {  // act' jumps at 0: a rare point may flip
          EXPECT_TRUE(test::close_to_scale_but(fused.integral, layered.integral, 1e-4, 1e-4,
                                               static_cast<size_t>(n / 100)));
        } else {
          EXPECT_TRUE(test::close_to_scale(fused.integral, layered.integral, 1e-4, 1e-4));
        }
        EXPECT_EQ(fused.times, layered.times);
      }
    }
  }
}

// The log-likelihoods' path is chosen as sampling's: fused for narrow models and fixed steps,
// layered for Dormand-Prince and wide models, said in the result; forcing the fused path where it
// cannot run names why.
TEST(GpuFusedDivergence, ChoiceIsAutomaticVisibleAndOverridable) {
  CUFM_REQUIRE_GPU();
  const test::GpuMlpEnv automatic("auto");
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {64, 64};
  const Model narrow(m, 5);
  m.hidden = {256, 256};
  const Model wide(m, 5);
  std::vector<float> x(200);
  sampler_noise(1, 0, 100, 2, x.data());
  LogProbConfig lc;
  lc.solver = Solver::Midpoint;
  lc.steps = 4;
  lc.device = Device::CUDA;
  EXPECT_EQ(log_prob(narrow, x, lc).mlp, "cuda fused divergence");
  EXPECT_EQ(log_prob(wide, x, lc).mlp, "cuda layered divergence");
  SampleConfig sc;
  sc.count = 100;
  sc.solver = Solver::Midpoint;
  sc.steps = 4;
  sc.with_log_prob = true;
  sc.device = Device::CUDA;
  EXPECT_EQ(sample(narrow, sc).mlp, "cuda fused divergence");
  // Guided Hutchinson with classes on the fused path (gpu-check's racecheck runs this test).
  m.hidden = {48, 40};
  m.num_classes = 3;
  m.time_features = 4;
  const Model classes(m, 6);
  LogProbConfig gc = lc;
  gc.labels = {1};
  gc.guidance = 2.0f;
  gc.divergence = Divergence::Hutchinson;
  gc.probes = 3;
  const LogProbResult fused = log_prob(classes, x, gc);
  EXPECT_EQ(fused.mlp, "cuda fused divergence");
  gc.device = Device::CPU;
  const LogProbResult cpu = log_prob(classes, x, gc);
  EXPECT_TRUE(test::all_close(fused.log_prob.data(), cpu.log_prob.data(), cpu.log_prob.size(), 2e-3, 1e-4));
  lc.solver = Solver::Dopri5;
  EXPECT_EQ(log_prob(narrow, x, lc).mlp, "cuda layered divergence");
  {
    const test::GpuMlpEnv env("fused");
    EXPECT_NE(test::error_of([&] { (void)log_prob(narrow, x, lc); }).find("dopri5"), std::string::npos);
    lc.solver = Solver::Midpoint;
    EXPECT_NE(test::error_of([&] { (void)log_prob(wide, x, lc); }).find("256 wide"), std::string::npos);
  }
  lc.device = Device::CPU;
  EXPECT_EQ(log_prob(narrow, x, lc).mlp, "cpu divergence");
}

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
