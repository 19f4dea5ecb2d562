// Whole training runs on the GPU against the CPU backend from the same initial weights, graph
// replay against eager launches (bit for bit), run-to-run determinism, resuming, and the errors.
// Adam's eps is 1e-3 here (not 1e-8) so that the update is smooth in the gradient: with a tiny eps
// a gradient within rounding of zero becomes a full +-lr step whose sign is noise, which would
// test nothing but luck. Tolerances (atol as a fraction of the tensor's scale, rtol):
// fp32 loss rtol 1e-5, weights 1e-5 / 1e-4; tf32 loss 1e-2, weights 1e-3 / 1e-2; bf16 loss 5e-2,
// weights 5e-3 / 5e-2.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "cufm/kernels.hpp"
#include "cufm/loss.hpp"
#include "cufm/sampler.hpp"
#include "cufm/trainer.hpp"
#include "fused_train_twin.hpp"
#include "gpu/gpu_test_util.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "host/cuda/cuda_backend.hpp"
#include "host/cuda/cuda_trainer.hpp"
#include "kernels/fused_train_launch.hpp"

namespace cufm {
namespace {

Dataset data_for(int dim, int classes, int64_t n = 2000, int context = 0) {
  Dataset d;
  d.name = "gpu-test";
  d.n = n;
  d.dim = dim;
  d.x = test::random_floats(static_cast<size_t>(n) * dim, -2.0f, 2.0f, 61);
  if (classes > 0) {
    d.num_classes = classes;
    for (int64_t i = 0; i < n; ++i) d.labels.push_back(static_cast<int32_t>(i % classes));
  }
  d.context_dim = context;
  d.context = test::random_floats(static_cast<size_t>(n) * context, -1.0f, 1.0f, 62);
  return d;
}

// A 2-D unconditional model with the given hidden widths.
MlpConfig plain_mlp(std::vector<int> hidden) {
  MlpConfig mc;
  mc.data_dim = 2;
  mc.hidden = std::move(hidden);
  return mc;
}

RunOptions on(Device d, Precision p = Precision::FP32) {
  RunOptions r;
  r.device = d;
  r.precision = p;
  return r;
}

TrainConfig train_config() {
  TrainConfig c;
  c.batch_size = test::pick(512, 64);
  c.seed = 2024;
  c.optim.lr = 1e-3f;
  c.optim.eps = 1e-3f;
  c.optim.grad_clip = 0.5f;
  c.optim.ema_decay = 0.9f;
  c.label_dropout = 0.2f;
  c.path.sigma_min = 0.001f;
  return c;
}

struct RunCase {
  Precision precision;
  Activation act;
  int time_features, classes;
  TimeSampling ts;
  int context = 0;
};

class GpuVsCpu : public ::testing::TestWithParam<RunCase> {};

TEST_P(GpuVsCpu, LossesAndWeightsAgree) {
  CUFM_REQUIRE_GPU();
  const RunCase rc = GetParam();
  MlpConfig mc;
  mc.data_dim = 3;
  mc.hidden = {64, 48};
  mc.activation = rc.act;
  mc.time_features = rc.time_features;
  mc.num_classes = rc.classes;
  mc.context_dim = rc.context;
  const Model init(mc, 7);
  const Dataset data = data_for(mc.data_dim, rc.classes, 2000, rc.context);
  TrainConfig cpu_cfg = train_config();
  cpu_cfg.context_dropout = rc.context > 0 ? 0.25f : 0.0f;
  cpu_cfg.path.time_sampling = rc.ts;
  Trainer cpu(init, data, cpu_cfg, on(Device::CPU)), gpu(init, data, cpu_cfg, on(Device::CUDA, rc.precision));
  ASSERT_EQ(gpu.device(), Device::CUDA);
  double loss_rtol = 1e-5, w_atol = 1e-5, w_rtol = 1e-4;
  if (rc.precision == Precision::TF32) loss_rtol = 1e-2, w_atol = 1e-3, w_rtol = 1e-2;
  if (rc.precision == Precision::BF16) loss_rtol = 5e-2, w_atol = 5e-3, w_rtol = 5e-2;
  const int steps = test::pick(6, 3);
  for (int s = 0; s < steps; ++s) {
    const float lc = cpu.step(), lg = gpu.step();
    EXPECT_NEAR(lg, lc, loss_rtol * std::abs(lc)) << "step " << s;
    EXPECT_GT(lc, 0.0f);
  }
  const TrainState a = cpu.state(), b = gpu.state();
  EXPECT_EQ(b.step, static_cast<uint64_t>(steps));
  EXPECT_TRUE(test::close_to_scale(b.params, a.params, w_atol, w_rtol)) << "params";
  EXPECT_TRUE(test::close_to_scale(b.adam_m, a.adam_m, 10 * w_atol, 10 * w_rtol)) << "adam m";
  EXPECT_TRUE(test::close_to_scale(b.ema, a.ema, w_atol, w_rtol)) << "ema";
  EXPECT_GT(test::norm2(b.params), 0.0);
  // The weights move little in a few steps, so compare the movement itself, against its own
  // scale: a GPU that skipped or botched the update cannot pass this (the weights check above
  // could, at the TF32/BF16 tolerances).
  std::vector<float> moved_cpu(a.params.size()), moved_gpu(a.params.size());
  for (size_t i = 0; i < a.params.size(); ++i) {
    moved_cpu[i] = a.params[i] - init.params()[i];
    moved_gpu[i] = b.params[i] - init.params()[i];
  }
  double move_frac = 1e-3;  // FP32: the updates agree to rounding
  if (rc.precision == Precision::TF32) move_frac = 3e-2;
  EXPECT_GT(test::norm2(moved_cpu), 0.0);
  if (rc.precision == Precision::BF16) {
    // As a whole (test_cpu_bf16 measured the CPU's own bf16 against fp32: where bf16 rounding moves a
    // ReLU's pre-activation across 0, the few weights it feeds move more than 10% of the largest
    // move apart, while the whole stays within 3%).
    EXPECT_LT(test::relative_l2(moved_gpu, moved_cpu), 5e-2) << "weight updates";
  } else {
    EXPECT_TRUE(test::close_to_scale(moved_gpu, moved_cpu, move_frac, move_frac)) << "weight updates";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, GpuVsCpu,
    ::testing::Values(RunCase{Precision::FP32, Activation::SiLU, 0, 0, TimeSampling::Uniform},
                      RunCase{Precision::FP32, Activation::ReLU, 8, 0, TimeSampling::LogitNormal},
                      RunCase{Precision::FP32, Activation::GELU, 0, 4, TimeSampling::Uniform},
                      RunCase{Precision::FP32, Activation::SiLU, 16, 10, TimeSampling::LogitNormal},
                      RunCase{Precision::TF32, Activation::SiLU, 0, 0, TimeSampling::Uniform},
                      RunCase{Precision::TF32, Activation::GELU, 8, 3, TimeSampling::Uniform},
                      RunCase{Precision::BF16, Activation::SiLU, 0, 0, TimeSampling::Uniform},
                      RunCase{Precision::BF16, Activation::ReLU, 8, 3, TimeSampling::LogitNormal},
                      RunCase{Precision::FP32, Activation::SiLU, 0, 0, TimeSampling::Uniform, 20},
                      RunCase{Precision::FP32, Activation::GELU, 8, 3, TimeSampling::Uniform, 5},
                      RunCase{Precision::BF16, Activation::SiLU, 0, 0, TimeSampling::Uniform, 20}),
    [](const ::testing::TestParamInfo<RunCase>& pi) {
      const RunCase& c = pi.param;
      return std::string(to_string(c.precision)) + "_" + to_string(c.act) + "_tf" +
             std::to_string(c.time_features) + "_c" + std::to_string(c.classes) + "_k" +
             std::to_string(c.context) + (c.ts == TimeSampling::Uniform ? "_uniform" : "_logitnormal");
    });

struct TrainRun {
  std::vector<float> losses;
  TrainState state;
};

TrainRun run_backend(const MlpConfig& mc, const TrainConfig& cfg, const Dataset& data, TrainState init,
                     int steps, const detail::CudaTrainerOptions& opt) {
  auto t = detail::make_cuda_trainer_with(mc, cfg, data, std::move(init), opt);
  TrainRun r;
  for (int s = 0; s < steps; ++s) {
    t->run(1);
    r.losses.push_back(t->loss());
  }
  r.state = t->state();
  return r;
}

void expect_same_bits(const TrainRun& a, const TrainRun& b) {
  ASSERT_EQ(a.losses.size(), b.losses.size());
  EXPECT_TRUE(test::bits_equal(a.losses.data(), b.losses.data(), a.losses.size())) << "losses";
  EXPECT_EQ(a.state.step, b.state.step);
  EXPECT_TRUE(test::bits_equal(a.state.params.data(), b.state.params.data(), a.state.params.size()))
      << "params";
  EXPECT_TRUE(test::bits_equal(a.state.adam_m.data(), b.state.adam_m.data(), a.state.adam_m.size())) << "m";
  EXPECT_TRUE(test::bits_equal(a.state.adam_v.data(), b.state.adam_v.data(), a.state.adam_v.size())) << "v";
  ASSERT_EQ(a.state.ema.size(), b.state.ema.size());
  EXPECT_TRUE(test::bits_equal(a.state.ema.data(), b.state.ema.data(), a.state.ema.size())) << "ema";
}

// `steps` steps with `options`, captured as a graph and launched eagerly, and the graph once more:
// the same bits all three times, and the weights moved.
void expect_graph_equals_eager_and_repeats(const MlpConfig& mc, const TrainConfig& cfg, const Dataset& data,
                                           const TrainState& init, int steps,
                                           const detail::CudaTrainerOptions& options) {
  detail::CudaTrainerOptions graph = options, eager = options;
  graph.launch = detail::StepLaunch::Graph;
  eager.launch = detail::StepLaunch::Eager;
  const TrainRun g1 = run_backend(mc, cfg, data, init, steps, graph);
  const TrainRun e1 = run_backend(mc, cfg, data, init, steps, eager);
  const TrainRun g2 = run_backend(mc, cfg, data, init, steps, graph);
  expect_same_bits(g1, e1);
  expect_same_bits(g1, g2);
  EXPECT_GT(test::norm2(g1.state.params), 0.0);
}

class Determinism : public ::testing::TestWithParam<Precision> {};

TEST_P(Determinism, GraphEqualsEagerAndRunsRepeat) {
  CUFM_REQUIRE_GPU();
  MlpConfig mc;
  mc.data_dim = 2;
  mc.hidden = {128, 128};
  mc.num_classes = 3;
  mc.time_features = 8;
  const Dataset data = data_for(2, 3);
  const TrainConfig cfg = train_config();
  const TrainState init{0, Model(mc, 3).params(), {}, {}, {}};
  detail::CudaTrainerOptions options;
  options.precision = GetParam();
  expect_graph_equals_eager_and_repeats(mc, cfg, data, init, test::pick(5, 2), options);
}

INSTANTIATE_TEST_SUITE_P(Precisions, Determinism,
                         ::testing::Values(Precision::FP32, Precision::TF32, Precision::BF16),
                         [](const ::testing::TestParamInfo<Precision>& pi) {
                           return std::string(to_string(pi.param));
                         });

// loss_and_grad on the GPU (the trainer's kernels with the caller's draws) against the CPU's, at
// every precision, with and without classes (and no labels: the null class).
TEST(GpuLossAndGrad, MatchesCpu) {
  CUFM_REQUIRE_GPU();
  for (int classes : {0, 4}) {
    MlpConfig m;
    m.data_dim = 5;
    m.hidden = {64, 40};
    m.time_features = 8;
    m.num_classes = classes;
    const Model model(m, 31);
    const int n = test::pick(700, 70);
    const std::vector<float> x1 = test::random_floats(static_cast<size_t>(n) * 5, -2.0f, 2.0f, 32),
                             eps = test::random_floats(x1.size(), -2.0f, 2.0f, 33),
                             t = test::random_floats(static_cast<size_t>(n), 0.0f, 1.0f, 34);
    std::vector<int32_t> labels;
    for (int i = 0; i < n; ++i) labels.push_back(i % (classes + 1));
    for (bool given_labels : {true, false}) {
      if (!given_labels && classes == 0) continue;
      FlowBatch b;
      b.size = n;
      b.x1 = x1.data();
      b.t = t.data();
      b.eps = eps.data();
      b.labels = classes > 0 && given_labels ? labels.data() : nullptr;
      PathConfig path;
      path.sigma_min = 0.05f;
      RunOptions run;
      run.device = Device::CPU;
      const LossGrad cpu = loss_and_grad(model, b, path, run);
      run.device = Device::CUDA;
      for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
        run.precision = p;
        const LossGrad gpu = loss_and_grad(model, b, path, run);
        const double tol = p == Precision::FP32 ? 1e-5 : p == Precision::TF32 ? 1e-2 : 5e-2;
        SCOPED_TRACE(std::string(to_string(p)) + " classes " + std::to_string(classes));
        EXPECT_NEAR(gpu.loss, cpu.loss, tol * cpu.loss);
        ASSERT_EQ(gpu.grad.size(), cpu.grad.size());
        EXPECT_TRUE(test::close_to_scale(gpu.grad, cpu.grad, p == Precision::FP32 ? 1e-5 : tol, 10 * tol));
      }
    }
  }
}

// loss_and_grad with a context on the GPU: per-row contexts with some rows null, and none at all
// (every row null), against the CPU.
TEST(GpuLossAndGrad, WithAContextMatchesCpu) {
  CUFM_REQUIRE_GPU();
  MlpConfig m;
  m.data_dim = 4;
  m.hidden = {64, 40};
  m.context_dim = 6;
  const Model model(m, 35);
  const int n = test::pick(600, 60);
  const std::vector<float> x1 = test::random_floats(static_cast<size_t>(n) * 4, -2.0f, 2.0f, 36),
                           eps = test::random_floats(x1.size(), -2.0f, 2.0f, 37),
                           t = test::random_floats(static_cast<size_t>(n), 0.0f, 1.0f, 38),
                           context = test::random_floats(static_cast<size_t>(n) * 6, -1.0f, 1.0f, 39);
  std::vector<uint8_t> null(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) null[i] = i % 4 == 0;
  for (int mode = 0; mode < 3; ++mode) {  // per-row null flags, none null, no context at all
    FlowBatch b;
    b.size = n;
    b.x1 = x1.data();
    b.t = t.data();
    b.eps = eps.data();
    b.context = mode < 2 ? context.data() : nullptr;
    b.context_null = mode == 0 ? null.data() : nullptr;
    RunOptions run;
    run.device = Device::CPU;
    const LossGrad cpu = loss_and_grad(model, b, PathConfig{}, run);
    run.device = Device::CUDA;
    const LossGrad gpu = loss_and_grad(model, b, PathConfig{}, run);
    SCOPED_TRACE("mode " + std::to_string(mode));
    EXPECT_NEAR(gpu.loss, cpu.loss, 1e-5 * cpu.loss);
    EXPECT_TRUE(test::close_to_scale(gpu.grad, cpu.grad, 1e-5, 1e-4));
  }
}

// Trainer::step(batch) on a GPU trainer without a dataset against the CPU's, step by step; a GPU
// trainer with a dataset mixes both kinds of step.
TEST(GpuTrainBatch, MatchesCpu) {
  CUFM_REQUIRE_GPU();
  for (const auto& [classes, context] : {std::pair{0, 0}, std::pair{3, 0}, std::pair{0, 6}}) {
    MlpConfig m;
    m.data_dim = 3;
    m.hidden = {48, 48};
    m.time_features = 4;
    m.num_classes = classes;
    m.context_dim = context;
    const Model model(m, 41);
    TrainConfig tc;
    tc.batch_size = 256;
    tc.seed = 42;
    tc.label_dropout = 0.2f;
    tc.context_dropout = context > 0 ? 0.3f : 0.0f;
    tc.optim.eps = 1e-3f;  // smooth in the gradient (see the top of this file)
    Trainer cpu(model, tc, on(Device::CPU));
    Trainer gpu(model, tc, on(Device::CUDA));
    const Dataset data = data_for(3, classes, 4096, context);
    for (int k = 0; k < 5; ++k) {
      DataBatch b;
      b.size = tc.batch_size;
      b.x1 = data.x.data() + static_cast<size_t>(k) * tc.batch_size * 3;
      b.labels = classes > 0 ? data.labels.data() + static_cast<size_t>(k) * tc.batch_size : nullptr;
      b.context =
          context > 0 ? data.context.data() + static_cast<size_t>(k) * tc.batch_size * context : nullptr;
      const float lc = cpu.step(b), lg = gpu.step(b);
      EXPECT_NEAR(lg, lc, 1e-5 * lc) << "step " << k << ", " << classes << " classes";
    }
    EXPECT_EQ(gpu.step_count(), 5u);
    EXPECT_TRUE(test::close_to_scale(gpu.state().params, cpu.state().params, 1e-5, 1e-4));
    EXPECT_THROW(gpu.run(1), Error);
    // Both kinds of step, mixed, against the CPU doing the same: the step counter and the draws of
    // each kind follow the other's steps.
    DataBatch b;
    b.size = tc.batch_size;
    b.x1 = data.x.data();
    b.labels = classes > 0 ? data.labels.data() : nullptr;
    b.context = context > 0 ? data.context.data() : nullptr;
    Trainer mixed(model, data, tc, on(Device::CUDA));
    Trainer mixed_cpu(model, data, tc, on(Device::CPU));
    mixed.run(2);
    mixed_cpu.run(2);
    const float lg = mixed.step(b), lc = mixed_cpu.step(b);
    EXPECT_NEAR(lg, lc, 1e-5 * lc);
    mixed.run(1);
    mixed_cpu.run(1);
    EXPECT_EQ(mixed.step_count(), 4u);
    EXPECT_NEAR(mixed.loss(), mixed_cpu.loss(), 1e-5 * mixed_cpu.loss());
    EXPECT_TRUE(test::close_to_scale(mixed.state().params, mixed_cpu.state().params, 1e-5, 1e-4));
  }
}

// step(batch) draws on the device (fm_prepare with rows_in_order, fm_couple): bit for bit the
// bits of the staged path it replaced (the host's draws of the same Philox streams, uploaded and run
// by step_given); with exact coupling, the CPU's step(batch) to the GPU's tolerance (the GPU's
// Jacobi auction may pick another pairing of equal cost where the CPU's bids Gauss-Seidel).
TEST(GpuTrainBatch, DrawsOnTheDeviceEqualTheStagedDraws) {
  CUFM_REQUIRE_GPU();
  for (const auto& [classes, context] : {std::pair{0, 0}, std::pair{3, 0}, std::pair{0, 5}}) {
    MlpConfig m;
    m.data_dim = 3;
    m.hidden = {40, 56};
    m.num_classes = classes;
    m.context_dim = context;
    TrainConfig tc;
    tc.batch_size = 129;
    tc.seed = 17;
    tc.label_dropout = 0.25f;
    tc.context_dropout = context > 0 ? 0.3f : 0.0f;
    const TrainState init{0, Model(m, 3).params(), {}, {}, {}};
    const Dataset none = data_for(3, classes, 0, context);
    auto on_device = detail::make_cuda_trainer(m, tc, none, init, Precision::FP32);
    auto staged = detail::make_cuda_trainer(m, tc, none, init, Precision::FP32);
    const Dataset data = data_for(3, classes, 4 * 129, context);
    for (int k = 0; k < 4; ++k) {
      DataBatch b;
      b.size = tc.batch_size;
      b.x1 = data.x.data() + static_cast<size_t>(k) * 129 * 3;
      b.labels = classes > 0 ? data.labels.data() + static_cast<size_t>(k) * 129 : nullptr;
      b.context = context > 0 ? data.context.data() + static_cast<size_t>(k) * 129 * context : nullptr;
      std::vector<float> t, eps;
      std::vector<int32_t> labels;
      std::vector<uint8_t> drop;
      cpu::draw_given(m, tc, staged->step_count(), b.size, b.labels, t, eps, labels, drop);
      FlowBatch fb;
      fb.size = b.size;
      fb.x1 = b.x1;
      fb.t = t.data();
      fb.eps = eps.data();
      fb.labels = labels.empty() ? nullptr : labels.data();
      fb.context = b.context;
      fb.context_null = drop.empty() ? nullptr : drop.data();
      const float l_staged = staged->step_given(fb), l_device = on_device->step_batch(b);
      EXPECT_EQ(l_device, l_staged) << "step " << k << ", " << classes << " classes, context " << context;
    }
    EXPECT_EQ(on_device->state().params, staged->state().params) << classes << " classes, context " << context;
  }
  // Exact coupling: the GPU's step(batch) against the CPU's.
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {32, 32};
  TrainConfig tc;
  tc.batch_size = 127;
  tc.coupling = Coupling::Exact;
  tc.optim.eps = 1e-3f;
  const Model model(m, 5);
  Trainer cpu(model, tc, on(Device::CPU)), gpu(model, tc, on(Device::CUDA));
  const Dataset data = data_for(2, 0, 3 * 127);
  for (int k = 0; k < 3; ++k) {
    DataBatch b;
    b.size = tc.batch_size;
    b.x1 = data.x.data() + static_cast<size_t>(k) * 127 * 2;
    const float lc = cpu.step(b), lg = gpu.step(b);
    EXPECT_NEAR(lg, lc, 1e-4 * lc) << "step " << k;
  }
}

TEST(GpuTraining, ResumeContinuesExactly) {
  CUFM_REQUIRE_GPU();
  const MlpConfig mc = plain_mlp({32, 32});
  const Dataset data = data_for(2, 0);
  const TrainConfig cfg = train_config();
  const TrainState init{0, Model(mc, 5).params(), {}, {}, {}};
  const detail::CudaTrainerOptions opt;
  const TrainRun straight = run_backend(mc, cfg, data, init, 5, opt);
  const TrainRun first = run_backend(mc, cfg, data, init, 3, opt);
  TrainRun second = run_backend(mc, cfg, data, first.state, 2, opt);
  second.losses.insert(second.losses.begin(), first.losses.begin(), first.losses.end());
  expect_same_bits(straight, second);
}

TEST(GpuTraining, RunEnqueuesWithoutReadingBack) {
  CUFM_REQUIRE_GPU();
  const MlpConfig mc = plain_mlp({32});
  TrainConfig cfg = train_config();
  Trainer t(Model(mc, 1), data_for(2, 0), cfg, on(Device::CUDA));
  t.run(20);
  EXPECT_EQ(t.step_count(), 20u);
  const float l = t.loss();
  EXPECT_TRUE(std::isfinite(l));
  EXPECT_GT(l, 0.0f);
}

TEST(GpuTraining, OversizeDatasetThrowsCufmError) {
  CUFM_REQUIRE_GPU();
  const MlpConfig mc = plain_mlp({16});
  detail::CudaTrainerOptions opt;
  // Pretend the GPU has 40 MiB free: the model, its optimiser, a batch's activations and the
  // 32 MiB cuBLASLt workspace fit, and so do 1000 points; 2M points (16 MB) do not.
  opt.memory_limit = size_t{40} << 20;
  const TrainState state{0, Model(mc, 1).params(), {}, {}, {}};
  EXPECT_NO_THROW(detail::make_cuda_trainer_with(mc, train_config(), data_for(2, 0, 1000), state, opt));
  try {
    detail::make_cuda_trainer_with(mc, train_config(), data_for(2, 0, 2000000), state, opt);
    FAIL() << "expected cufm::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the dataset needs 15 MiB"), std::string::npos) << e.what();
  }
}

// A fault on the device reaches the caller as a cufm::Error that names the CUDA error, never as an
// abort, and the trainer's destructor survives it. A fault poisons the CUDA context for the rest
// of the process, so this runs in a child process (gtest's threadsafe style re-executes the binary;
// compute-sanitizer runs leave it out, as it faults on purpose).
TEST(GpuTrainingDeathTest, DeviceFaultIsACufmError) {
  CUFM_REQUIRE_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const auto fault_then_step = [] {
    bool caught = false;
    {
      const MlpConfig mc = plain_mlp({16});
      TrainConfig cfg = train_config();
      Trainer trainer(Model(mc, 1), data_for(2, 0), cfg, on(Device::CUDA));
      trainer.run(2);
      (void)trainer.loss();
      // fm_prepare reading its data from the first pages of the address space, which neither the
      // CPU (Linux's mmap_min_addr) nor CUDA ever maps.
      test::DeviceArray<uint64_t> step(std::vector<uint64_t>{0});
      test::DeviceArray<float> input(static_cast<size_t>(64) * 8);
      kernels::FmBatch b;
      b.step = step.get();
      b.batch = 64;
      b.dim = 2;
      b.data = reinterpret_cast<const float*>(uintptr_t{0x100});
      b.n_data = 1000;
      kernels::FmPrepareOutputs out;
      out.input = input.get();
      kernels::fm_prepare(b, kernels::FmInputLayout{0, 0, 8}, out, nullptr);
      (void)cudaDeviceSynchronize();
      try {
        trainer.run(1);
        (void)trainer.loss();
      } catch (const Error& e) {
        std::fprintf(stderr, "cufm::Error: %s\n", e.what());
        caught = true;
      }
    }  // the destructors run after the fault: they log, they do not throw or abort
    if (!caught) std::fprintf(stderr, "no cufm::Error after a device fault\n");
    std::exit(caught ? 0 : 1);
  };
  EXPECT_EXIT(fault_then_step(), ::testing::ExitedWithCode(0), "cufm::Error: .*cudaError");
}

// A trainer and a sampler created on device 1 keep running there while device 0 is current, and
// give device 0's results bit for bit. Needs two GPUs of one model (the same cuBLASLt algorithms).
TEST(GpuTraining, RunsOnItsOwnDeviceWhateverIsCurrent) {
  CUFM_REQUIRE_GPU();
  const std::vector<DeviceInfo> gpus = cuda_devices();
  if (gpus.size() < 2 || gpus[0].name != gpus[1].name) {
    GTEST_SKIP() << "needs two GPUs of one model, found " << gpus.size();
  }
  const MlpConfig mc = plain_mlp({32});
  const Dataset data = data_for(2, 0);
  TrainConfig cfg = train_config();
  SampleConfig sc;
  sc.count = 100;
  sc.device = Device::CUDA;
  const auto train_and_sample = [&](int create_on, int run_on) {
    CUFM_CUDA_CHECK(cudaSetDevice(create_on));
    Trainer t(Model(mc, 1), data, cfg, on(Device::CUDA));
    Sampler sampler;
    (void)sampler.sample(Model(mc, 2), sc);  // binds the sampler to create_on
    CUFM_CUDA_CHECK(cudaSetDevice(run_on));
    t.run(3);
    const float loss = t.loss();
    std::vector<float> x = sampler.sample(t.model(), sc).x;
    int current = -1;
    CUFM_CUDA_CHECK(cudaGetDevice(&current));
    EXPECT_EQ(current, run_on);  // the caller's device is left as it was
    x.push_back(loss);
    return x;
  };
  const std::vector<float> on_one = train_and_sample(1, 0);
  const std::vector<float> on_zero = train_and_sample(0, 0);
  CUFM_CUDA_CHECK(cudaSetDevice(0));
  EXPECT_TRUE(test::bits_equal(on_one.data(), on_zero.data(), on_zero.size()));
}

TEST(GpuTraining, WrongStateSizeThrowsCufmError) {
  CUFM_REQUIRE_GPU();
  const MlpConfig mc = plain_mlp({16});
  EXPECT_THROW(detail::make_cuda_trainer_with(mc, train_config(), data_for(2, 0),
                                              TrainState{0, std::vector<float>(5, 0.1f), {}, {}, {}},
                                              detail::CudaTrainerOptions{}),
               Error);
}

// ---- the fused training step (kernels/fused_train.cu) ------------------------------------------
// The kernel against its CPU twin (tests/test_fused_train.cpp holds the twin to the CPU backend) on
// the caller's draws, the same tile and blocks: the same sums in the same order, apart from the
// activations' exp (with ReLU, none: bit for bit); then the trainer's fused step against its layered one, and
// its bits from run to run. These tests choose the path themselves (the layered variants of this file skip
// them).

using FusedTrainCase = test::TrainCase;

MlpConfig fused_train_model(const FusedTrainCase& k) {
  return test::train_case_model(k);
}

TEST(GpuFusedTrain, KernelMatchesItsTwin) {
  CUFM_REQUIRE_GPU();
  const FusedTrainCase cases[] = {
      {"silu", {32, 48}, Activation::SiLU, 2, 0, 0, 0},
      {"relu, time features", {64, 64, 64}, Activation::ReLU, 3, 8, 0, 0},
      {"gelu, classes, context", {128, 96}, Activation::GELU, 5, 4, 4, 5},
      {"relu, one hidden layer", {48}, Activation::ReLU, 2, 0, 0, 0},
      {"silu, 8 layers of 128, D 64", {128, 128, 128, 128, 128, 128, 128}, Activation::SiLU, 64, 2, 0, 0},
  };
  const float sigma_min = 0.001f;
  for (const FusedTrainCase& k : cases) {
    const MlpConfig m = fused_train_model(k);
    const Model model(m, 13);
    for (const int64_t B : {int64_t{1}, int64_t{127}, int64_t{129}, int64_t{5000}}) {
      if (test::small_run() && B != 1 && B != 129) continue;  // under the sanitizers
      SCOPED_TRACE(std::string(k.name) + ", B " + std::to_string(B));
      const test::FlowRows rows = test::random_flow_rows(m, B, 41);
      const std::vector<float> input = test::flow_rows_input(m, rows, sigma_min);
      test::DeviceArray<float> params(model.params()), x1(rows.x1), t(rows.t), eps(rows.eps), in(input);
      for (const Precision precision : {Precision::FP32, Precision::TF32, Precision::BF16}) {
        const bool tc = precision != Precision::FP32, bf16 = precision == Precision::BF16;
        cuda::FusedTrain probe = test::fused_train_over(m, params.get(), B, 16, 1);
        probe.precision = precision;
        // The trainer's tile (the largest that fits) with its blocks, and 16 rows in 3 runs of tiles.
        const int largest = cuda::fused_train_tile(probe);
        ASSERT_GE(largest, tc ? 16 : 8);
        for (const auto& [tile, blocks] : {std::pair<int, int>{largest, cuda::fused_train_blocks(B, largest)},
                                          std::pair<int, int>{16, 3}}) {
          if (blocks > (B + tile - 1) / tile) continue;
          SCOPED_TRACE(std::string(to_string(precision)) + ", tile " + std::to_string(tile) + ", blocks " +
                       std::to_string(blocks));
          cuda::FusedTrain p = test::fused_train_over(m, params.get(), B, tile, blocks);
          p.precision = precision;
          test::DeviceArray<float> partial(static_cast<size_t>(blocks) * p.total), grad(p.total), loss(1);
          test::DeviceArray<double> loss_partial(static_cast<size_t>(blocks));
          partial.poison();  // NaN: a block's first tile writes over every element (no padding here)
          p.input = in.get();
          p.partial = partial.get();
          p.loss_partial = loss_partial.get();
          kernels::FmBatch b;
          b.batch = static_cast<int>(B);
          b.dim = m.data_dim;
          b.data = x1.get();
          b.n_data = static_cast<uint32_t>(B);
          b.sigma_min = sigma_min;
          b.given_t = t.get();
          b.given_eps = eps.get();
          cuda::fused_train(p, b, grad.get(), loss.get(), nullptr);
          const std::vector<float> got = grad.download();
          const float got_loss = loss.download()[0];
          const test::TwinStep want = test::run_train_twin(model, rows, sigma_min, tile, blocks, precision);
          // The tensor cores sum each k step in an order (and with roundings) of their own; at bf16 a
          // last-bit difference may move an activation's or a gradient's bf16 copy by a bf16 ulp.
          const double tol = bf16 ? 1e-2 : tc ? 2e-3 : 1e-5;
          EXPECT_NEAR(got_loss, want.loss, (tc ? tol : 1e-5) * want.loss);
          EXPECT_TRUE(test::close_to_scale(got, want.grad, tol, tc ? tol : 1e-4));
          EXPECT_GT(test::norm2(got), 0.0);
          if (k.activation == Activation::ReLU && !tc) {  // no exp: the twin's every operation is the block's
            EXPECT_TRUE(test::bits_equal(got.data(), want.grad.data(), got.size()));
            EXPECT_TRUE(test::bits_equal(&got_loss, &want.loss, 1));
          }
        }
      }
    }
  }
}

TEST(GpuFusedTrain, TrainerMatchesTheLayeredStep) {
  CUFM_REQUIRE_GPU();
  const FusedTrainCase cases[] = {
      {"silu, classes", {64, 64}, Activation::SiLU, 2, 8, 3, 0},
      {"gelu, context", {128, 128, 128}, Activation::GELU, 3, 0, 0, 4},
      {"relu", {48}, Activation::ReLU, 5, 0, 0, 0},
  };
  for (const FusedTrainCase& k : cases) {
    for (const Precision precision : {Precision::FP32, Precision::TF32, Precision::BF16}) {
      for (const int batch : {129, test::pick(4096, 512)}) {
        SCOPED_TRACE(std::string(k.name) + ", " + to_string(precision) + ", batch " + std::to_string(batch));
        // Two roundings of the tensor cores' products (cuBLASLt's and the fused kernel's), as GpuVsCpu
        // allows against the CPU's fp32: loss, weights (atol of scale, rtol), Adam's m.
        const bool tf32 = precision == Precision::TF32, bf16 = precision == Precision::BF16;
        const double loss_rtol = bf16 ? 5e-2 : tf32 ? 1e-2 : 1e-5;
        const double w_atol = bf16 ? 5e-3 : tf32 ? 1e-3 : 1e-5, w_rtol = bf16 ? 5e-2 : tf32 ? 1e-2 : 1e-4;
        const MlpConfig m = fused_train_model(k);
        const Dataset data = data_for(m.data_dim, k.classes, 2000, k.context);
        TrainConfig cfg = train_config();
        cfg.batch_size = batch;
        cfg.context_dropout = k.context > 0 ? 0.25f : 0.0f;
        const TrainState init{0, Model(m, 3).params(), {}, {}, {}};
        detail::CudaTrainerOptions fused, layered;
        fused.mlp = cuda::GpuMlp::Fused;
        layered.mlp = cuda::GpuMlp::Layered;
        fused.precision = layered.precision = precision;
        EXPECT_EQ(detail::make_cuda_trainer_with(m, cfg, data, init, fused)->mlp(), "cuda fused");
        EXPECT_EQ(detail::make_cuda_trainer_with(m, cfg, data, init, layered)->mlp(), "cuda layered");
        const int steps = test::pick(5, 2);
        const TrainRun a = run_backend(m, cfg, data, init, steps, fused);
        const TrainRun b = run_backend(m, cfg, data, init, steps, layered);
        for (int s = 0; s < steps; ++s)
          EXPECT_NEAR(a.losses[s], b.losses[s], loss_rtol * b.losses[s]) << "step " << s;
        EXPECT_TRUE(test::close_to_scale(a.state.params, b.state.params, w_atol, w_rtol)) << "params";
        EXPECT_TRUE(test::close_to_scale(a.state.adam_m, b.state.adam_m, 10 * w_atol, 10 * w_rtol))
            << "adam m";
        std::vector<float> moved_a(a.state.params.size()), moved_b(a.state.params.size());
        for (size_t i = 0; i < moved_a.size(); ++i) {
          moved_a[i] = a.state.params[i] - init.params[i];
          moved_b[i] = b.state.params[i] - init.params[i];
        }
        EXPECT_GT(test::norm2(moved_b), 0.0);
        if (bf16) {  // as a whole: see GpuVsCpu
          EXPECT_LT(test::relative_l2(moved_a, moved_b), 5e-2) << "weight updates";
        } else {
          EXPECT_TRUE(test::close_to_scale(moved_a, moved_b, tf32 ? 3e-2 : 1e-3, tf32 ? 3e-2 : 1e-3))
              << "weight updates";
        }
      }
    }
  }
}

TEST(GpuFusedTrain, GraphEqualsEagerAndRunsRepeat) {
  CUFM_REQUIRE_GPU();
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {128, 128, 128, 128};
  m.num_classes = 3;
  m.time_features = 8;
  const Dataset data = data_for(2, 3);
  TrainConfig cfg = train_config();
  cfg.batch_size = test::pick(8191, 1029);  // many runs of several tiles, the last one ragged
  const TrainState init{0, Model(m, 3).params(), {}, {}, {}};
  for (const Precision precision : {Precision::FP32, Precision::TF32, Precision::BF16}) {
    SCOPED_TRACE(to_string(precision));
    detail::CudaTrainerOptions options;
    options.mlp = cuda::GpuMlp::Fused;
    options.precision = precision;
    expect_graph_equals_eager_and_repeats(m, cfg, data, init, test::pick(5, 2), options);
  }
}

TEST(GpuFusedTrain, RefusalsNameTheLayeredPath) {
  CUFM_REQUIRE_GPU();
  const auto state_of = [](const MlpConfig& m) { return TrainState{0, Model(m, 1).params(), {}, {}, {}}; };
  const MlpConfig wide = plain_mlp({256}), narrow = plain_mlp({64});
  detail::CudaTrainerOptions fused;
  fused.mlp = cuda::GpuMlp::Fused;
  const std::string e = test::error_of(
      [&] { detail::make_cuda_trainer_with(wide, train_config(), data_for(2, 0), state_of(wide), fused); });
  EXPECT_NE(e.find("256"), std::string::npos) << e;
  EXPECT_NE(e.find("layered"), std::string::npos) << e;
  const MlpConfig deep = plain_mlp(std::vector<int>(8, 16));  // 9 layers
  const std::string d = test::error_of(
      [&] { detail::make_cuda_trainer_with(deep, train_config(), data_for(2, 0), state_of(deep), fused); });
  EXPECT_NE(d.find("9 layers"), std::string::npos) << d;
  // Auto: the layered path where the fused one does not apply, the fused one where it does.
  detail::CudaTrainerOptions automatic;
  automatic.mlp = cuda::GpuMlp::Auto;
  EXPECT_EQ(
      detail::make_cuda_trainer_with(wide, train_config(), data_for(2, 0), state_of(wide), automatic)->mlp(),
      "cuda layered");
  EXPECT_EQ(
      detail::make_cuda_trainer_with(narrow, train_config(), data_for(2, 0), state_of(narrow), automatic)
          ->mlp(),
      "cuda fused");
}

}  // namespace
}  // namespace cufm
