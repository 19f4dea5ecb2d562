// The fused sampler's block program (kernels/fused_sampler.hpp) through its CPU twin
// (cpu::fused_sample): against the CPU backend's sampler at fp32's tolerance for every solver,
// activation, classes, contexts, time features and guidance; bit for bit the same whatever the tile
// (each element is computed whole, in an order of its own); ragged counts; the divergence riding
// along for log-likelihoods, against the CPU's flow; the refusals. The GPU
// runs the same program (tests/gpu/test_gpu_sampling.cpp holds it to this twin).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cufm/cufm.hpp"
#include "fused_twin.hpp"
#include "kernels/fused_sampler.hpp"
#include "test_util.hpp"

namespace cufm {
namespace {

using test::FusedCase;
using test::run_fused_twin;
using test::TwinRun;

TEST(FusedSamplerTwin, MatchesTheCpuSampler) {
  const FusedCase cases[] = {
      {"silu euler", {32, 48}, Activation::SiLU, 0, 0, 0, Solver::Euler, 5, false},
      {"relu midpoint, time features", {64, 64, 64}, Activation::ReLU, 8, 0, 0, Solver::Midpoint, 4, false},
      {"gelu heun, classes, guided", {40, 40}, Activation::GELU, 0, 3, 0, Solver::Heun, 3, true},
      {"silu rk4, context, guided", {128, 96}, Activation::SiLU, 4, 0, 5, Solver::RK4, 3, true},
      {"silu midpoint, classes, unguided", {16}, Activation::SiLU, 0, 4, 0, Solver::Midpoint, 2, false},
  };
  for (const FusedCase& k : cases) {
    SCOPED_TRACE(k.name);
    const Model model(test::fused_case_model(k), 17);
    for (const int64_t count : {int64_t{1}, int64_t{127}, int64_t{129}}) {
      SampleConfig c = test::fused_case_config(k, count, Device::CPU, 3, 1, 1.7f);
      c.keep_trajectory = true;
      const SampleResult want = sample(model, c);
      const TwinRun got = run_fused_twin(model, c, 32);
      EXPECT_TRUE(test::close_to_scale(got.x, want.x, 1e-5, 1e-4)) << "count " << count;
      EXPECT_TRUE(test::close_to_scale(got.trajectory, want.trajectory, 1e-5, 1e-4)) << "count " << count;
      EXPECT_GT(test::relative_l2(got.x, std::vector<float>(got.x.size(), 0.0f)), 0.0);
      // The tiles change nothing: each element is computed whole, in its own order.
      const TwinRun other = run_fused_twin(model, c, 5);
      EXPECT_EQ(other.x, got.x) << "count " << count;
      EXPECT_EQ(other.trajectory, got.trajectory) << "count " << count;
    }
  }
}

// Log-likelihoods' flow: the divergence's integral riding along as one more state component, from
// tangent rows through the same layers. The twin's final points, integral and trajectory against
// the CPU backend's flow (the host solver over cpu::evaluate_divergence) from t = 1 back to 0, exact
// and Hutchinson, for the cases above; bit for bit whatever the tile.
TEST(FusedSamplerTwin, CarriesTheDivergenceAsTheCpuFlowDoes) {
  const FusedCase cases[] = {
      {"silu euler", {32, 48}, Activation::SiLU, 0, 0, 0, Solver::Euler, 5, false},
      {"relu midpoint, time features", {64, 64, 64}, Activation::ReLU, 8, 0, 0, Solver::Midpoint, 4, false},
      {"gelu heun, classes, guided", {40, 40}, Activation::GELU, 0, 3, 0, Solver::Heun, 3, true},
      {"silu rk4, context, guided", {128, 96}, Activation::SiLU, 4, 0, 5, Solver::RK4, 3, true},
  };
  for (const FusedCase& k : cases) {
    const Model model(test::fused_case_model(k), 19);
    const int D = model.config().data_dim;
    for (const bool hutchinson : {false, true}) {
      for (const int64_t n : {int64_t{1}, int64_t{37}}) {
        SCOPED_TRACE(std::string(k.name) + (hutchinson ? ", hutchinson" : ", exact") + ", n " +
                     std::to_string(n));
        const SampleConfig c = test::fused_case_config(k, n, Device::CPU, 3, 1, 1.7f);
        std::vector<float> x(static_cast<size_t>(n) * D);
        sampler_noise(11, 0, n, D, x.data());
        const detail::DivergenceFlow f = test::fused_case_flow(k, c, D, hutchinson, Device::CPU);
        const detail::DivergenceFlowResult want =
            detail::integrate_with_divergence(model, x.data(), n, f, true);
        const int P = hutchinson ? f.probes : D;
        const std::vector<float> probes = test::flow_probes(f, n);
        const float* w = c.guidance ? &*c.guidance : nullptr;
        const test::FlowTwinRun got = test::run_fused_flow_twin(model, x, k.solver, k.steps, 1.0f, 0.0f,
                                                                c.labels, c.context, w, P, probes, true, 32);
        EXPECT_TRUE(test::close_to_scale(got.x, want.x, 1e-5, 1e-4));
        EXPECT_TRUE(test::close_to_scale(got.trajectory, want.trajectory, 1e-5, 1e-4));
        if (k.activation == Activation::ReLU) {  // act' jumps at 0: a rare point may flip
          EXPECT_TRUE(
              test::close_to_scale_but(got.integral, want.integral, 1e-5, 1e-4, static_cast<size_t>(n / 10)));
        } else {
          EXPECT_TRUE(test::close_to_scale(got.integral, want.integral, 1e-5, 1e-4));
        }
        EXPECT_GT(test::relative_l2(got.integral, std::vector<float>(got.integral.size(), 0.0f)), 0.0);
        const test::FlowTwinRun other = test::run_fused_flow_twin(
            model, x, k.solver, k.steps, 1.0f, 0.0f, c.labels, c.context, w, P, probes, false, 5);
        EXPECT_EQ(other.x, got.x);
        EXPECT_EQ(other.integral, got.integral);
      }
    }
  }
}

// TF32 and BF16 (the tensor cores' program: rows and widths padded to 16, operands rounded to tf32,
// or read as bf16 bits): the twin against the CPU's fp32 sampler at the GPU sampling tests'
// tolerances (2e-2, 5e-2), bit for bit whatever the tile, and visibly rounded (not fp32's result).
TEST(FusedSamplerTwin, TensorCoresPadAndRoundAsTheHardwareDoes) {
  const FusedCase cases[] = {
      {"silu midpoint, D 3 padded", {40, 24}, Activation::SiLU, 0, 0, 0, Solver::Midpoint, 4, false},
      {"gelu rk4, context, guided", {128, 96}, Activation::GELU, 4, 0, 5, Solver::RK4, 3, true},
      {"relu heun, classes, guided", {64, 64, 64}, Activation::ReLU, 8, 3, 0, Solver::Heun, 3, true},
  };
  for (const FusedCase& k : cases) {
    SCOPED_TRACE(k.name);
    const Model model(test::fused_case_model(k), 29);
    for (const Precision precision : {Precision::TF32, Precision::BF16}) {
      for (const int64_t count : {int64_t{1}, int64_t{37}}) {
        SCOPED_TRACE(std::string(to_string(precision)) + ", count " + std::to_string(count));
        const double tol = precision == Precision::BF16 ? 5e-2 : 2e-2;
        SampleConfig c = test::fused_case_config(k, count, Device::CPU, 4, 1, 1.5f);
        c.keep_trajectory = true;
        const SampleResult want = sample(model, c);
        const TwinRun fp32 = run_fused_twin(model, c, 32);
        c.precision = precision;
        const TwinRun got = run_fused_twin(model, c, 32);
        EXPECT_TRUE(test::all_close(got.x.data(), want.x.data(), want.x.size(), tol, tol));
        EXPECT_TRUE(
            test::all_close(got.trajectory.data(), want.trajectory.data(), want.trajectory.size(), tol, tol));
        EXPECT_NE(got.x, fp32.x) << "the tensor cores' rounding cannot equal fp32 to the bit";
        const TwinRun other = run_fused_twin(model, c, 5);
        EXPECT_EQ(other.x, got.x) << "count " << count;
      }
    }
  }
}

TEST(FusedSamplerTwin, OneLabelForAllAndTheNullContextAndABackwardSpan) {
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {24, 24};
  m.num_classes = 2;
  m.context_dim = 3;
  const Model model(m, 4);
  SampleConfig c;
  c.count = 70;
  c.steps = 6;
  c.device = Device::CPU;
  c.labels = {1};
  c.context = {0.5f, -0.25f, 2.0f};  // one row for all
  c.guidance = 2.5f;
  c.t0 = 0.9f;
  c.t1 = 0.1f;
  EXPECT_TRUE(test::close_to_scale(run_fused_twin(model, c, 16).x, sample(model, c).x, 1e-5, 1e-4));
  EXPECT_EQ(sample(model, c).mlp, "cpu");
  c.context.clear();
  c.guidance.reset();
  EXPECT_TRUE(test::close_to_scale(run_fused_twin(model, c, 16).x, sample(model, c).x, 1e-5, 1e-4));
}

TEST(FusedSamplerTwin, RefusesWhatItDoesNotRunNamingTheLayeredPath) {
  MlpConfig m;
  m.hidden = {256, 256};
  const Model wide(m, 1);
  const std::string why =
      cuda::fused_sampler_refusal(cuda::fused_net(m, wide.params().data()), 2, Precision::FP32, Solver::Euler);
  EXPECT_NE(why.find("256 wide"), std::string::npos) << why;
  EXPECT_NE(why.find("layered path"), std::string::npos) << why;
  m.hidden = {64};
  const Model narrow(m, 1);
  const cuda::FusedNet net = cuda::fused_net(m, narrow.params().data());
  EXPECT_EQ(cuda::fused_sampler_refusal(net, 2, Precision::FP32, Solver::RK4), "");
  EXPECT_EQ(cuda::fused_sampler_refusal(net, 2, Precision::TF32, Solver::RK4), "");
  EXPECT_EQ(cuda::fused_sampler_refusal(net, 2, Precision::BF16, Solver::RK4), "");
  cuda::FusedSample flow;  // log-likelihoods' tangents: fp32 only
  flow.dim = 2;
  flow.tangents = 2;
  float integral = 0.0f;
  flow.integral = &integral;
  EXPECT_EQ(cuda::fused_tangents_error(flow), "");
  flow.precision = Precision::TF32;
  EXPECT_NE(cuda::fused_tangents_error(flow).find("run fp32"), std::string::npos);
  flow.precision = Precision::FP32;
  flow.tangents = 3;  // the exact trace takes D
  EXPECT_NE(cuda::fused_tangents_error(flow).find("D = 2"), std::string::npos);
  EXPECT_NE(cuda::fused_sampler_refusal(net, 2, Precision::FP32, Solver::Dopri5).find("dopri5"),
            std::string::npos);
  EXPECT_NE(cuda::fused_sampler_refusal(net, 65, Precision::FP32, Solver::Euler).find("D = 65"),
            std::string::npos);
  m.hidden = std::vector<int>(8, 16);  // 9 layers
  const Model deep(m, 1);
  EXPECT_NE(cuda::fused_sampler_refusal(cuda::fused_net(m, deep.params().data()), 2, Precision::FP32,
                                        Solver::Euler)
                .find("9 layers"),
            std::string::npos);
}

}  // namespace
}  // namespace cufm
