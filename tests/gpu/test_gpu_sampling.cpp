// GPU sampling against the CPU sampler: every solver, with and without guidance, every way of
// giving labels, trajectories, and the other precisions. The initial noise and the stage
// combinations are bit-exact; only the GEMMs round differently, and the ODE carries that along:
// fp32 atol 1e-4 + rtol 1e-4; tf32 2e-2; bf16 5e-2 (on samples of magnitude ~1).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "cufm/error.hpp"
#include "cufm/sampler.hpp"
#include "cufm/velocity.hpp"
#include "fused_twin.hpp"
#include "gpu/gpu_test_util.hpp"
#include "host/cuda/cuda_backend.hpp"

namespace cufm {
namespace {

MlpConfig conditional_model() {
  MlpConfig mc;
  mc.data_dim = 2;
  mc.hidden = {48, 48};
  mc.time_features = 4;
  mc.num_classes = 3;
  return mc;
}

SampleConfig base_config() {
  SampleConfig c;
  c.count = test::pick(400, 40);
  c.steps = 6;
  c.seed = 77;
  c.atol = 1e-4f;
  c.rtol = 1e-4f;
  return c;
}

void expect_match(const SampleResult& gpu, const SampleResult& cpu, double atol, double rtol) {
  ASSERT_EQ(gpu.x.size(), cpu.x.size());
  EXPECT_EQ(gpu.device, Device::CUDA);
  EXPECT_TRUE(test::all_close(gpu.x.data(), cpu.x.data(), cpu.x.size(), atol, rtol));
  EXPECT_EQ(gpu.evaluations, cpu.evaluations);
  EXPECT_EQ(gpu.accepted_steps, cpu.accepted_steps);
  EXPECT_EQ(gpu.rejected_steps, cpu.rejected_steps);
  EXPECT_GT(test::norm2(gpu.x), 0.0);
}

struct SolverCase {
  Solver solver;
  bool guided;
};

class GpuSampling : public ::testing::TestWithParam<SolverCase> {};

TEST_P(GpuSampling, MatchesCpu) {
  CUFM_REQUIRE_GPU();
  const SolverCase sc = GetParam();
  const Model model(conditional_model(), 9);
  SampleConfig cfg = base_config();
  cfg.solver = sc.solver;
  for (int64_t i = 0; i < cfg.count; ++i) cfg.labels.push_back(static_cast<int32_t>(i % 3));
  if (sc.guided) cfg.guidance = 2.5f;
  cfg.device = Device::CPU;
  const SampleResult cpu = sample(model, cfg);
  cfg.device = Device::CUDA;
  const SampleResult gpu = detail::cuda_sample(model, cfg);
  expect_match(gpu, cpu, 1e-4, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(
    Solvers, GpuSampling,
    ::testing::Values(SolverCase{Solver::Euler, false}, SolverCase{Solver::Euler, true},
                      SolverCase{Solver::Midpoint, false}, SolverCase{Solver::Midpoint, true},
                      SolverCase{Solver::Heun, false}, SolverCase{Solver::Heun, true},
                      SolverCase{Solver::RK4, false}, SolverCase{Solver::RK4, true},
                      SolverCase{Solver::Dopri5, false}, SolverCase{Solver::Dopri5, true}),
    [](const ::testing::TestParamInfo<SolverCase>& pi) {
      return std::string(to_string(pi.param.solver)) + (pi.param.guided ? "_guided" : "");
    });

// The model evaluated over chunks of points (three here, the last one short) gives the CPU's samples:
// per-sample labels, guidance and the adaptive solver's whole-batch error norm included.
TEST(GpuSamplingChunks, ChunkedEvaluationMatchesCpu) {
  CUFM_REQUIRE_GPU();
  const Model model(conditional_model(), 13);
  for (Solver solver : {Solver::RK4, Solver::Dopri5}) {
    SampleConfig cfg = base_config();
    cfg.solver = solver;
    for (int64_t i = 0; i < cfg.count; ++i) cfg.labels.push_back(static_cast<int32_t>((i * 7) % 3));
    cfg.guidance = 1.5f;
    cfg.device = Device::CPU;
    const SampleResult cpu = sample(model, cfg);
    const SampleResult gpu = detail::cuda_sample(*detail::make_cuda_sampler(cfg.count / 3 + 1), model, cfg);
    expect_match(gpu, cpu, 1e-4, 1e-4);
  }
}

// A model with a context, per sample, guided, the model evaluated in three chunks: the sampler's
// context offsets per chunk. Then a kept sampler called with other contexts of the same shape
// (rewritten in place under the same graphs) and with one context for all: each a fresh sampler's.
TEST(GpuSampling, ContextInChunksMatchesCpuAndKeptGraphs) {
  CUFM_REQUIRE_GPU();
  MlpConfig m;
  m.data_dim = 3;
  m.hidden = {48, 48};
  m.context_dim = 4;
  const Model model(m, 15);
  SampleConfig cfg = base_config();
  cfg.solver = Solver::Midpoint;
  cfg.context.resize(static_cast<size_t>(cfg.count) * 4);
  for (size_t j = 0; j < cfg.context.size(); ++j) cfg.context[j] = std::sin(0.37f * static_cast<float>(j));
  cfg.guidance = 2.0f;
  cfg.device = Device::CPU;
  const SampleResult cpu = sample(model, cfg);
  const int64_t chunk = cfg.count / 3 + 1;
  const SampleResult gpu = detail::cuda_sample(*detail::make_cuda_sampler(chunk), model, cfg);
  expect_match(gpu, cpu, 1e-4, 1e-4);
  const detail::CudaSamplerPtr kept = detail::make_cuda_sampler(chunk);
  (void)detail::cuda_sample(*kept, model, cfg);
  SampleConfig other = cfg;
  for (float& c : other.context) c = -0.5f * c + 0.25f;
  SampleConfig one = cfg;
  one.context = {0.5f, -1.0f, 0.0f, 2.0f};
  for (const SampleConfig* c : {&other, &one, &cfg}) {
    const SampleResult got = detail::cuda_sample(*kept, model, *c);
    const SampleResult want = detail::cuda_sample(*detail::make_cuda_sampler(chunk), model, *c);
    EXPECT_EQ(got.x, want.x);
  }
}

// One kept sampler over a sequence of calls: new weights, seed and label contents through the same
// graphs; then a trajectory, other label modes, step counts, solvers (Euler then Midpoint, Dopri5,
// a Dopri5 call that throws), guidance, count, precision and model, each rebuilding what it must;
// then the first call again. Each result is a fresh sampler's, bit for bit. Run with the default
// chunking and with the model evaluated in three chunks.
TEST(GpuSamplerReuse, EveryCallMatchesAFreshSampler) {
  CUFM_REQUIRE_GPU();
  const Model a(conditional_model(), 14);
  Model a2 = a;
  for (float& p : a2.params()) p *= 0.9f;
  MlpConfig unc;
  unc.data_dim = 3;
  unc.hidden = {24, 24};
  const Model b(unc, 15);
  SampleConfig first = base_config();
  first.device = Device::CUDA;
  for (int64_t i = 0; i < first.count; ++i) first.labels.push_back(static_cast<int32_t>(i % 3));
  struct Call {
    const Model* model;
    SampleConfig cfg;
    bool throws;
  };
  std::vector<Call> calls;
  calls.push_back({&a, first, false});
  SampleConfig c = first;
  c.seed = 78;
  for (int32_t& l : c.labels) l = 2 - l;
  calls.push_back({&a2, c, false});  // the same graphs: weights, noise and labels rewritten in place
  c.labels = {1};
  calls.push_back({&a2, c, false});  // one label for all: new graphs
  c.steps = 9;
  calls.push_back({&a2, c, false});
  c.keep_trajectory = true;
  calls.push_back({&a2, c, false});
  c.keep_trajectory = false;
  c.solver = Solver::Euler;
  calls.push_back({&a2, c, false});
  c.solver = Solver::Midpoint;  // needs the stage-point buffer Euler did not
  calls.push_back({&a2, c, false});
  c.solver = Solver::Dopri5;
  calls.push_back({&a2, c, false});
  SampleConfig gives_up = c;
  gives_up.max_steps = 1;
  gives_up.atol = gives_up.rtol = 1e-7f;
  calls.push_back({&a2, gives_up, true});  // dopri5 gives up: the sampler drops everything
  c.solver = Solver::RK4;
  c.guidance = 2.0f;
  calls.push_back({&a2, c, false});  // guidance: 2n rows, a new shape
  c.count = first.count / 2 + 3;
  calls.push_back({&a2, c, false});
  c.precision = Precision::TF32;
  calls.push_back({&a2, c, false});
  c.precision = Precision::BF16;
  calls.push_back({&a2, c, false});
  calls.push_back({&a, c, false});  // new weights through the same bf16 graphs: the bf16 copy is rewritten
  SampleConfig cu = base_config();
  cu.device = Device::CUDA;
  calls.push_back({&b, cu, false});  // another model
  calls.push_back({&a, first, false});
  for (const int64_t chunk : {int64_t{0}, first.count / 3 + 1}) {
    SCOPED_TRACE("max chunk rows " + std::to_string(chunk));
    const detail::CudaSamplerPtr kept = detail::make_cuda_sampler(chunk);
    for (size_t i = 0; i < calls.size(); ++i) {
      SCOPED_TRACE("call " + std::to_string(i));
      const Call& call = calls[i];
      if (call.throws) {
        EXPECT_THROW(detail::cuda_sample(*kept, *call.model, call.cfg), Error);
        continue;
      }
      const SampleResult got = detail::cuda_sample(*kept, *call.model, call.cfg);
      const SampleResult want = detail::cuda_sample(*detail::make_cuda_sampler(chunk), *call.model, call.cfg);
      ASSERT_EQ(got.x.size(), want.x.size());
      EXPECT_TRUE(test::bits_equal(got.x.data(), want.x.data(), want.x.size()));
      ASSERT_EQ(got.trajectory.size(), want.trajectory.size());
      EXPECT_TRUE(test::bits_equal(got.trajectory.data(), want.trajectory.data(), want.trajectory.size()));
      EXPECT_EQ(got.times, want.times);
      EXPECT_EQ(got.evaluations, want.evaluations);
      EXPECT_EQ(got.accepted_steps, want.accepted_steps);
      EXPECT_EQ(got.rejected_steps, want.rejected_steps);
    }
  }
  // The public Sampler, against the CPU, so that "the same as a fresh sampler" means something.
  SampleConfig on_cpu = first;
  on_cpu.device = Device::CPU;
  const SampleResult cpu = sample(a, on_cpu);
  Sampler sampler;
  expect_match(sampler.sample(a, first), cpu, 1e-4, 1e-4);
  expect_match(sampler.sample(a, first), cpu, 1e-4, 1e-4);
  sampler.release();
  expect_match(sampler.sample(a, first), cpu, 1e-4, 1e-4);
}

TEST(GpuSamplingLabels, NoneOneAndUnconditional) {
  CUFM_REQUIRE_GPU();
  const Model model(conditional_model(), 10);
  for (int variant = 0; variant < 3; ++variant) {
    SampleConfig cfg = base_config();
    cfg.solver = Solver::Heun;
    if (variant == 1) cfg.labels = {2};
    if (variant == 2) {
      cfg.labels = {1};
      cfg.guidance = -0.5f;
    }
    cfg.device = Device::CPU;
    const SampleResult cpu = sample(model, cfg);
    const SampleResult gpu = detail::cuda_sample(model, cfg);
    expect_match(gpu, cpu, 1e-4, 1e-4);
  }
  MlpConfig unc;
  unc.data_dim = 5;
  unc.hidden = {40};
  unc.activation = Activation::GELU;
  const Model m2(unc, 11);
  SampleConfig cfg = base_config();
  cfg.solver = Solver::RK4;
  cfg.device = Device::CPU;
  expect_match(detail::cuda_sample(m2, cfg), sample(m2, cfg), 1e-4, 1e-4);
}

TEST(GpuSamplingTrajectory, FixedAndAdaptive) {
  CUFM_REQUIRE_GPU();
  const Model model(conditional_model(), 12);
  for (Solver s : {Solver::Midpoint, Solver::Dopri5}) {
    SampleConfig cfg = base_config();
    cfg.solver = s;
    cfg.keep_trajectory = true;
    cfg.device = Device::CPU;
    const SampleResult cpu = sample(model, cfg);
    const SampleResult gpu = detail::cuda_sample(model, cfg);
    expect_match(gpu, cpu, 1e-4, 1e-4);
    ASSERT_EQ(gpu.times.size(), cpu.times.size());
    // Dopri5's step sizes come from an error estimate that cancels: cuBLAS's and OpenBLAS's fp32
    // sums shift the times by ~1e-6 (seen on an H200). The times get the states' own tolerance: a
    // time off by 1e-4 moves a state by |v| * 1e-4.
    EXPECT_TRUE(test::all_close(gpu.times.data(), cpu.times.data(), cpu.times.size(), 1e-4, 1e-4));
    ASSERT_EQ(gpu.trajectory.size(), cpu.trajectory.size());
    EXPECT_TRUE(
        test::all_close(gpu.trajectory.data(), cpu.trajectory.data(), cpu.trajectory.size(), 1e-4, 1e-4));
  }
}

// integrate() from the caller's points, backwards and over part of [0, 1], against the CPU; and
// sample() is integrate() from the seed's noise bit for bit on the GPU as on the CPU.
TEST(GpuIntegrate, CallersPointsBothDirectionsMatchCpu) {
  CUFM_REQUIRE_GPU();
  const Model model(conditional_model(), 14);
  for (Solver s : {Solver::Midpoint, Solver::RK4, Solver::Dopri5}) {
    for (const auto& [t0, t1] : {std::pair{1.0f, 0.0f}, std::pair{0.8f, 0.3f}, std::pair{0.2f, 0.9f}}) {
      SampleConfig cfg = base_config();
      cfg.solver = s;
      cfg.keep_trajectory = true;
      cfg.labels = {2};
      cfg.guidance = 1.5f;
      cfg.t0 = t0;
      cfg.t1 = t1;
      std::vector<float> x0 = test::random_floats(static_cast<size_t>(cfg.count) * 2, -2.0f, 2.0f, 91);
      cfg.device = Device::CPU;
      const SampleResult cpu = integrate(model, x0, cfg);
      cfg.device = Device::CUDA;
      const SampleResult gpu = integrate(model, x0, cfg);
      SCOPED_TRACE(std::string(to_string(s)) + " from " + std::to_string(t0) + " to " + std::to_string(t1));
      expect_match(gpu, cpu, 1e-4, 1e-4);
      ASSERT_EQ(gpu.times.size(), cpu.times.size());
      EXPECT_EQ(gpu.times.front(), t0);
      EXPECT_EQ(gpu.times.back(), t1);
      EXPECT_TRUE(test::all_close(gpu.times.data(), cpu.times.data(), cpu.times.size(), 1e-4, 1e-4));
      ASSERT_EQ(gpu.trajectory.size(), cpu.trajectory.size());
      EXPECT_TRUE(
          test::all_close(gpu.trajectory.data(), cpu.trajectory.data(), cpu.trajectory.size(), 1e-4, 1e-4));
    }
  }
  Sampler sampler;  // one sampler: the graphs must follow the span and the starting points
  for (Solver s : {Solver::Heun, Solver::Dopri5}) {
    SampleConfig cfg = base_config();
    cfg.solver = s;
    cfg.device = Device::CUDA;
    std::vector<float> noise(static_cast<size_t>(cfg.count) * 2);
    sampler_noise(cfg.seed, 0, cfg.count, 2, noise.data());
    const SampleResult a = sampler.sample(model, cfg);
    const SampleResult b = sampler.integrate(model, noise, cfg);
    EXPECT_TRUE(test::bits_equal(b.x.data(), a.x.data(), a.x.size())) << to_string(s);
    // The same key again from other points: the kept graphs must start from them, not the noise.
    const std::vector<float> other = test::random_floats(noise.size(), -1.0f, 1.0f, 92);
    const SampleResult c = sampler.integrate(model, other, cfg);
    cfg.device = Device::CPU;
    expect_match(c, integrate(model, other, cfg), 1e-4, 1e-4);
    cfg.device = Device::CUDA;
    cfg.t0 = 1.0f;
    cfg.t1 = 0.0f;
    const SampleResult back = sampler.integrate(model, a.x, cfg);
    cfg.device = Device::CPU;
    expect_match(back, integrate(model, a.x, cfg), 1e-4, 1e-4);
  }
}

// VelocityField on the GPU against the CPU's, over several chunks, with host and device pointers,
// guidance, new weights and the other precisions.
TEST(GpuVelocityField, MatchesCpuHostAndDevicePointers) {
  CUFM_REQUIRE_GPU();
  const Model model(conditional_model(), 15), other(conditional_model(), 16);
  const int64_t n = test::pick(3000, 300);
  const std::vector<float> x = test::random_floats(static_cast<size_t>(n) * 2, -3.0f, 3.0f, 17);
  std::vector<int32_t> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = static_cast<int32_t>(i % 4);  // 3: the null class
  for (bool guided : {false, true}) {
    FieldOptions o;
    o.device = Device::CPU;
    if (guided) o.guidance = 2.0f;
    std::vector<float> want(x.size()), got(x.size()), dev_got(x.size());
    VelocityField cpu(model, o);
    cpu.evaluate(0.6f, x.data(), labels.data(), n, want.data());
    o.device = Device::CUDA;
    o.max_rows = 1024;  // three chunks, the last one short
    VelocityField gpu(model, o);
    EXPECT_EQ(gpu.device(), Device::CUDA);
    gpu.evaluate(0.6f, x.data(), labels.data(), n, got.data());
    EXPECT_TRUE(test::all_close(got.data(), want.data(), want.size(), 1e-4, 1e-4))
        << (guided ? "guided" : "");
    // Device pointers on the caller's stream: the same bits as the host-pointer call.
    test::DeviceArray<float> x_dev(x), v_dev(x.size());
    test::DeviceArray<int32_t> l_dev(labels);
    cudaStream_t stream;
    CUFM_CUDA_CHECK(cudaStreamCreate(&stream));
    v_dev.poison();
    gpu.evaluate_device(0.6f, x_dev.get(), l_dev.get(), n, v_dev.get(), stream);
    CUFM_CUDA_CHECK(cudaStreamSynchronize(stream));
    CUFM_CUDA_CHECK(cudaStreamDestroy(stream));
    dev_got = v_dev.download();
    EXPECT_TRUE(test::bits_equal(dev_got.data(), got.data(), got.size()));
    // A device call on a non-blocking stream, then at once a host call: the host call waits for it
    // on the device (they share the field's buffers), and both come out right.
    cudaStream_t async;
    CUFM_CUDA_CHECK(cudaStreamCreateWithFlags(&async, cudaStreamNonBlocking));
    v_dev.poison();
    std::vector<float> at_once(x.size());
    gpu.evaluate_device(0.6f, x_dev.get(), l_dev.get(), n, v_dev.get(), async);
    gpu.evaluate(0.9f, x.data(), labels.data(), n, at_once.data());
    CUFM_CUDA_CHECK(cudaStreamSynchronize(async));
    CUFM_CUDA_CHECK(cudaStreamDestroy(async));
    EXPECT_TRUE(test::bits_equal(v_dev.download().data(), got.data(), got.size()));
    std::vector<float> later(x.size());
    gpu.evaluate(0.9f, x.data(), labels.data(), n, later.data());
    EXPECT_TRUE(test::bits_equal(at_once.data(), later.data(), later.size()));
    if (!guided) {  // no labels: the null class
      gpu.evaluate(0.6f, x.data(), nullptr, n, got.data());
      cpu.evaluate(0.6f, x.data(), nullptr, n, want.data());
      EXPECT_TRUE(test::all_close(got.data(), want.data(), want.size(), 1e-4, 1e-4));
    }
    // New weights: a fresh field's bits.
    gpu.set_weights(other);
    gpu.evaluate(0.6f, x.data(), labels.data(), n, got.data());
    VelocityField fresh(other, o);
    fresh.evaluate(0.6f, x.data(), labels.data(), n, want.data());
    EXPECT_TRUE(test::bits_equal(got.data(), want.data(), want.size()));
  }
  for (Precision p : {Precision::TF32, Precision::BF16}) {
    FieldOptions o;
    o.device = Device::CPU;
    std::vector<float> want(x.size()), got(x.size());
    VelocityField(model, o).evaluate(0.3f, x.data(), labels.data(), n, want.data());
    o.device = Device::CUDA;
    o.precision = p;
    VelocityField(model, o).evaluate(0.3f, x.data(), labels.data(), n, got.data());
    const double tol = p == Precision::TF32 ? 2e-2 : 5e-2;
    EXPECT_TRUE(test::all_close(got.data(), want.data(), want.size(), tol, tol)) << to_string(p);
  }
}

TEST(GpuSamplingPrecision, Tf32AndBf16StayClose) {
  CUFM_REQUIRE_GPU();
  // Every activation: inference runs cuBLASLt's RELU_BIAS at every precision and GELU_BIAS at
  // TF32 and BF16 (tanh.approx, below those precisions' own error), SiLU through cuFM's kernel.
  for (Activation act : {Activation::SiLU, Activation::ReLU, Activation::GELU}) {
    MlpConfig mc = conditional_model();
    mc.activation = act;
    const Model model(mc, 13);
    SampleConfig cfg = base_config();
    cfg.solver = Solver::RK4;
    cfg.labels = {0};
    cfg.guidance = 1.5f;
    cfg.device = Device::CPU;
    const SampleResult cpu = sample(model, cfg);
    for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
      cfg.precision = p;
      const SampleResult gpu = detail::cuda_sample(model, cfg);
      const double tol = p == Precision::FP32 ? 1e-4 : p == Precision::TF32 ? 2e-2 : 5e-2;
      EXPECT_TRUE(test::all_close(gpu.x.data(), cpu.x.data(), cpu.x.size(), tol, tol))
          << to_string(act) << " " << to_string(p);
      EXPECT_GT(test::norm2(gpu.x), 0.0);
    }
  }
}

// The fused sampler (kernels/fused_sampler.cu) against its CPU twin (the same block program: only
// the activations' exp differs) and against the layered path, for every fixed-step solver,
// activation, classes and contexts with guidance, time features, ragged counts and trajectories.
TEST(GpuFusedSampler, MatchesItsCpuTwinAndTheLayeredPath) {
  CUFM_REQUIRE_GPU();
  const test::GpuMlpEnv automatic("auto");  // the fused path here, whatever the ctest variant sets
  const test::FusedCase cases[] = {
      {"R7's shape", {128, 128, 128, 128}, Activation::SiLU, 0, 0, 0, Solver::Midpoint, 5, false},
      {"relu, classes, guided", {64, 64}, Activation::ReLU, 8, 3, 0, Solver::Euler, 5, true},
      {"gelu, context, guided", {40, 56}, Activation::GELU, 4, 0, 5, Solver::RK4, 5, true},
      {"one layer, classes", {96}, Activation::SiLU, 0, 2, 0, Solver::Heun, 5, false},
  };
  for (const test::FusedCase& k : cases) {
    const Model model(test::fused_case_model(k), 23);
    for (const int64_t count : {int64_t{1}, int64_t{127}, int64_t{129}, int64_t{2000}}) {
      SCOPED_TRACE(std::string(k.name) + ", count " + std::to_string(count));
      SampleConfig c = test::fused_case_config(k, count, Device::CUDA, 8, 7, 2.0f);
      c.keep_trajectory = count == 129;
      const SampleResult fused = detail::cuda_sample(model, c);
      EXPECT_EQ(fused.mlp, "cuda fused");
      const test::TwinRun twin = test::run_fused_twin(model, c, 32);
      EXPECT_TRUE(test::close_to_scale(fused.x, twin.x, 1e-5, 1e-4));
      // (all_close fails an empty comparison: the trajectories only where one is kept)
      if (c.keep_trajectory) {
        EXPECT_TRUE(test::close_to_scale(fused.trajectory, twin.trajectory, 1e-5, 1e-4));
      }
      EXPECT_EQ(fused.trajectory.empty(), !c.keep_trajectory);
      EXPECT_EQ(fused.evaluations, int64_t{5} * solver_evaluations_per_step(k.solver));
      EXPECT_GT(test::norm2(fused.x), 0.0);
      SampleResult layered;
      {
        const test::GpuMlpEnv env("layered");
        layered = detail::cuda_sample(model, c);
      }
      EXPECT_EQ(layered.mlp, "cuda layered");
      // cuBLASLt's summation orders against the fused program's, over 4 x 128 layers and 5 steps.
      EXPECT_TRUE(test::close_to_scale(fused.x, layered.x, 1e-4, 1e-4));
      if (c.keep_trajectory) {
        EXPECT_TRUE(test::close_to_scale(fused.trajectory, layered.trajectory, 1e-4, 1e-4));
      }
    }
  }
}

// TF32 and BF16 on the tensor cores (wmma tiles over rows and widths padded to 16) against the CPU
// twin (the same program with the operands rounded as the hardware rounds them and summed one term at
// a time: the hardware's order within a k step differs), the layered path at the same precision and
// the CPU's fp32 sampler (GpuSamplingPrecision's tolerances), ragged counts and a trajectory.
TEST(GpuFusedSampler, TensorCoresMatchTheirTwinAndTheLayeredPath) {
  CUFM_REQUIRE_GPU();
  const test::GpuMlpEnv automatic("auto");
  const test::FusedCase cases[] = {
      {"R7's shape", {128, 128, 128, 128}, Activation::SiLU, 0, 0, 0, Solver::Midpoint, 5, false},
      {"gelu, context, guided", {40, 56}, Activation::GELU, 4, 0, 5, Solver::RK4, 5, true},
      {"relu, classes, guided", {64, 64}, Activation::ReLU, 8, 3, 0, Solver::Euler, 5, true},
  };
  for (const test::FusedCase& k : cases) {
    const Model model(test::fused_case_model(k), 41);
    for (const Precision precision : {Precision::TF32, Precision::BF16})
      for (const int64_t count : {int64_t{1}, int64_t{129}, int64_t{2000}}) {
        SCOPED_TRACE(std::string(k.name) + ", " + to_string(precision) + ", count " + std::to_string(count));
        // bf16's rounding (8 bits) against fp32: GpuSamplingPrecision's 5e-2; tf32's 2e-2.
        const double tol = precision == Precision::BF16 ? 5e-2 : 2e-2;
        SampleConfig c = test::fused_case_config(k, count, Device::CUDA, 8, 7, 2.0f);
        c.precision = precision;
        c.keep_trajectory = count == 129;
        const SampleResult fused = detail::cuda_sample(model, c);
        EXPECT_EQ(fused.mlp, "cuda fused");
        const test::TwinRun twin = test::run_fused_twin(model, c, 32);
        EXPECT_TRUE(test::all_close(fused.x.data(), twin.x.data(), twin.x.size(), 2e-3, 2e-3));
        if (c.keep_trajectory) {
          EXPECT_TRUE(test::all_close(fused.trajectory.data(), twin.trajectory.data(), twin.trajectory.size(),
                                      2e-3, 2e-3));
        }
        SampleResult layered;
        {
          const test::GpuMlpEnv env("layered");
          layered = detail::cuda_sample(model, c);
        }
        EXPECT_EQ(layered.mlp, "cuda layered");
        EXPECT_TRUE(test::all_close(fused.x.data(), layered.x.data(), layered.x.size(), tol, tol));
        c.precision = Precision::FP32;
        c.device = Device::CPU;
        const SampleResult cpu = sample(model, c);
        EXPECT_TRUE(test::all_close(fused.x.data(), cpu.x.data(), cpu.x.size(), tol, tol));
      }
  }
}

// Where the fused sampler does not apply the layered path runs and says so; forcing the fused one
// there is an error naming why; a bad CUFM_GPU_MLP is refused.
TEST(GpuFusedSampler, ChoiceIsAutomaticVisibleAndOverridable) {
  CUFM_REQUIRE_GPU();
  const test::GpuMlpEnv automatic("auto");
  MlpConfig m;
  m.hidden = {256, 256};
  const Model wide(m, 2);
  SampleConfig c;
  c.count = 64;
  c.steps = 2;
  c.device = Device::CUDA;
  EXPECT_EQ(detail::cuda_sample(wide, c).mlp, "cuda layered");
  m.hidden = {64};
  const Model narrow(m, 2);
  for (Precision p : {Precision::TF32, Precision::BF16}) {  // on the tensor cores
    c.precision = p;
    EXPECT_EQ(detail::cuda_sample(narrow, c).mlp, "cuda fused") << to_string(p);
  }
  c.solver = Solver::Dopri5;
  EXPECT_EQ(detail::cuda_sample(narrow, c).mlp, "cuda layered");
  {
    const test::GpuMlpEnv env("fused");
    EXPECT_NE(test::error_of([&] { (void)detail::cuda_sample(narrow, c); }).find("dopri5"),
              std::string::npos);
    c.solver = Solver::Euler;
    c.precision = Precision::FP32;
    EXPECT_NE(test::error_of([&] { (void)detail::cuda_sample(wide, c); }).find("256 wide"), std::string::npos);
    EXPECT_EQ(detail::cuda_sample(narrow, c).mlp, "cuda fused");
  }
  {
    const test::GpuMlpEnv env("fast");
    EXPECT_NE(test::error_of([&] { (void)detail::cuda_sample(narrow, c); }).find("CUFM_GPU_MLP='fast'"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace cufm
