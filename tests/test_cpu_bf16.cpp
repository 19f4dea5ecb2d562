// Precision::BF16 on the CPU backend: the GPU's bf16 semantics (fp32 master weights and optimiser,
// bf16 GEMM inputs, fp32 accumulation), tested against the fp32 CPU run with the tolerances of the
// GPU's bf16 tests (tests/gpu/test_gpu_training.cpp, test_gpu_sampling.cpp). On a CPU or a build
// without bf16 every test that needs it skips and gives cpu_bf16_unavailable_reason(); the errors
// are tested everywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cufm/loss.hpp"
#include "cufm/sampler.hpp"
#include "cufm/trainer.hpp"
#include "cufm/velocity.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "test_util.hpp"

namespace cufm {
namespace {

#define CUFM_REQUIRE_CPU_BF16()                                               \
  do {                                                                        \
    const std::string why = cpu_bf16_unavailable_reason();                    \
    if (!why.empty()) GTEST_SKIP() << "no bf16 on this CPU backend: " << why; \
  } while (0)

RunOptions cpu_at(Precision p, int threads = 0) {
  RunOptions r = test::on_cpu(threads);
  r.precision = p;
  return r;
}

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

TEST(CpuBf16, RoundsToNearestEven) {
  // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
  EXPECT_EQ(cpu::bf16_bits(1.0f + 0x1p-8f), 0x3f80);
  // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up, to even.
  EXPECT_EQ(cpu::bf16_bits(1.0f + 3 * 0x1p-8f), 0x3f82);
  EXPECT_EQ(cpu::bf16_bits(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);  // above the tie: up
  EXPECT_EQ(cpu::bf16_bits(-2.0f), 0xc000);
  EXPECT_EQ(cpu::bf16_bits(0.0f), 0x0000);
  EXPECT_EQ(cpu::bf16_bits(-0.0f), 0x8000);
  EXPECT_EQ(cpu::bf16_bits(std::numeric_limits<float>::infinity()), 0x7f80);
  // The largest float rounds up to infinity; a NaN stays a NaN (quiet), whatever its payload.
  EXPECT_EQ(cpu::bf16_bits(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_TRUE(std::isnan(cpu::bf16_value(cpu::bf16_bits(bits_to_float(0x7f800001u)))));
  EXPECT_TRUE(std::isnan(cpu::bf16_value(cpu::bf16_bits(std::numeric_limits<float>::quiet_NaN()))));
  // round_to_bf16 (vectorised, sliced over threads) agrees with the scalar rounding everywhere.
  std::vector<float> x = test::random_floats(100003, -1e3f, 1e3f, 5);
  x[7] = 1.0f + 0x1p-8f;
  x[8] = std::numeric_limits<float>::quiet_NaN();
  x[9] = -std::numeric_limits<float>::infinity();
  std::vector<uint16_t> got(x.size());
  cpu::round_to_bf16(x.data(), static_cast<int64_t>(x.size()), got.data());
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(got[i], cpu::bf16_bits(x[i])) << "element " << i;
}

// gemm_bf16 against a double-precision product of the same bf16 inputs: only the fp32
// accumulation's rounding may differ (bounded by K * 2^-24 * sum |a b|, taken with margin).
struct GemmCase {
  bool ta, tb;
  int64_t M, N, K;
  bool accumulate;
};

class CpuBf16Gemm : public ::testing::TestWithParam<GemmCase> {};

TEST_P(CpuBf16Gemm, MatchesTheExactProductOfItsRoundedInputs) {
  CUFM_REQUIRE_CPU_BF16();
  const GemmCase c = GetParam();
  const int64_t lda = (c.ta ? c.M : c.K) + 3, ldb = (c.tb ? c.K : c.N) + 5, ldc = c.N + 2;
  const int64_t a_rows = c.ta ? c.K : c.M, b_rows = c.tb ? c.N : c.K;
  const std::vector<float> af = test::random_floats(static_cast<size_t>(a_rows * lda), -2.0f, 2.0f, 11);
  const std::vector<float> bf = test::random_floats(static_cast<size_t>(b_rows * ldb), -2.0f, 2.0f, 12);
  std::vector<uint16_t> a(af.size()), b(bf.size());
  cpu::round_to_bf16(af.data(), static_cast<int64_t>(af.size()), a.data());
  cpu::round_to_bf16(bf.data(), static_cast<int64_t>(bf.size()), b.data());
  std::vector<float> cmat = test::random_floats(static_cast<size_t>(c.M * ldc), -1.0f, 1.0f, 13);
  const std::vector<float> c0 = cmat;
  cpu::set_threads(0);
  cpu::gemm_bf16(c.ta, c.tb, c.M, c.N, c.K, a.data(), lda, b.data(), ldb, c.accumulate, cmat.data(), ldc);
  for (int64_t i = 0; i < c.M; ++i) {
    for (int64_t j = 0; j < c.N; ++j) {
      double want = c.accumulate ? c0[i * ldc + j] : 0.0, mag = std::abs(want);
      for (int64_t k = 0; k < c.K; ++k) {
        const double x = cpu::bf16_value(c.ta ? a[k * lda + i] : a[i * lda + k]);
        const double y = cpu::bf16_value(c.tb ? b[j * ldb + k] : b[k * ldb + j]);
        want += x * y;
        mag += std::abs(x * y);
      }
      const double got = cmat[i * ldc + j];
      ASSERT_LE(std::abs(got - want), 4.0 * static_cast<double>(c.K + 1) * 0x1p-24 * mag + 1e-30)
          << "C[" << i << ", " << j << "] of " << c.M << " x " << c.N << " x " << c.K;
    }
    // The padding beyond each row's N columns is left alone.
    for (int64_t j = c.N; j < ldc; ++j) ASSERT_EQ(cmat[i * ldc + j], c0[i * ldc + j]);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CpuBf16Gemm,
                         ::testing::Values(GemmCase{false, true, 67, 45, 131, false},   // forward
                                           GemmCase{false, true, 300, 3, 64, true},     // last layer
                                           GemmCase{false, false, 129, 70, 33, false},  // input grad
                                           GemmCase{true, false, 48, 65, 1000, false},  // weight grad
                                           GemmCase{true, true, 17, 19, 23, true},
                                           GemmCase{false, true, 1, 1, 1, false}));

Dataset data_for(int dim, int classes, int64_t n = 2000) {
  Dataset d;
  d.name = "bf16-test";
  d.n = n;
  d.dim = dim;
  d.x = test::random_floats(static_cast<size_t>(n) * dim, -2.0f, 2.0f, 61);
  if (classes > 0) {
    d.num_classes = classes;
    for (int64_t i = 0; i < n; ++i) d.labels.push_back(static_cast<int32_t>(i % classes));
  }
  return d;
}

TrainConfig train_config() {
  TrainConfig c;
  c.batch_size = 512;
  c.seed = 2024;
  c.optim.lr = 1e-3f;
  c.optim.eps = 1e-3f;  // as in test_gpu_training.cpp: an update smooth in the gradient
  c.optim.grad_clip = 0.5f;
  c.optim.ema_decay = 0.9f;
  c.label_dropout = 0.2f;
  return c;
}

struct RunCase {
  Activation act;
  int time_features, classes;
};

class CpuBf16Training : public ::testing::TestWithParam<RunCase> {};

// test_gpu_training's GpuVsCpu at bf16, with the CPU's bf16 in the GPU's place: loss rtol 5e-2,
// weights 5e-3 / 5e-2 of their scale, the weights' movement within 1e-1 of its own scale.
TEST_P(CpuBf16Training, FollowsTheFp32Run) {
  CUFM_REQUIRE_CPU_BF16();
  const RunCase rc = GetParam();
  MlpConfig mc;
  mc.data_dim = 3;
  mc.hidden = {64, 48};
  mc.activation = rc.act;
  mc.time_features = rc.time_features;
  mc.num_classes = rc.classes;
  const Model init(mc, 7);
  const Dataset data = data_for(mc.data_dim, rc.classes);
  const TrainConfig cfg = train_config();
  Trainer fp32(init, data, cfg, cpu_at(Precision::FP32)), bf16(init, data, cfg, cpu_at(Precision::BF16));
  for (int s = 0; s < 6; ++s) {
    const float l32 = fp32.step(), l16 = bf16.step();
    EXPECT_NEAR(l16, l32, 5e-2 * std::abs(l32)) << "step " << s;
    EXPECT_GT(l32, 0.0f);
  }
  const TrainState a = fp32.state(), b = bf16.state();
  EXPECT_TRUE(test::close_to_scale(b.params, a.params, 5e-3, 5e-2)) << "params";
  EXPECT_TRUE(test::close_to_scale(b.adam_m, a.adam_m, 5e-2, 5e-1)) << "adam m";
  EXPECT_TRUE(test::close_to_scale(b.ema, a.ema, 5e-3, 5e-2)) << "ema";
  std::vector<float> moved32(a.params.size()), moved16(a.params.size());
  for (size_t i = 0; i < a.params.size(); ++i) {
    moved32[i] = a.params[i] - init.params()[i];
    moved16[i] = b.params[i] - init.params()[i];
  }
  EXPECT_GT(test::norm2(moved32), 0.0);
  // The movement as a whole, within 5e-2 of its norm: elementwise, a ReLU whose pre-activation
  // bf16 rounding moves across 0 changes the few weights it feeds by more than 10% of the largest
  // move (measured: 1 of 4291 in the ReLU case; the whole within 2.8%). A botched update misses by
  // about 1.
  EXPECT_LT(test::relative_l2(moved16, moved32), 5e-2) << "weight updates";
  // And it is a different computation: a bf16 run that silently ran fp32 would match bit for bit.
  EXPECT_NE(a.params, b.params);
}

INSTANTIATE_TEST_SUITE_P(Cases, CpuBf16Training,
                         ::testing::Values(RunCase{Activation::SiLU, 0, 0}, RunCase{Activation::ReLU, 8, 3},
                                           RunCase{Activation::GELU, 16, 10}));

// The bits do not depend on the thread count, as at fp32 (checkpoints resume alike on any machine).
TEST(CpuBf16, TrainingBitsDoNotDependOnTheThreadCount) {
  CUFM_REQUIRE_CPU_BF16();
  MlpConfig mc;
  mc.data_dim = 2;
  mc.hidden = {256, 256};  // products above oneDNN's threading thresholds
  const Model init(mc, 3);
  const Dataset data = data_for(2, 0, 5000);
  TrainConfig cfg = train_config();
  cfg.batch_size = 2048;
  Trainer one(init, data, cfg, cpu_at(Precision::BF16, 1)), two(init, data, cfg, cpu_at(Precision::BF16, 2));
  for (int s = 0; s < 3; ++s) EXPECT_EQ(one.step(), two.step()) << "step " << s;
  EXPECT_EQ(one.state().params, two.state().params);
}

// loss_and_grad and Trainer::step(batch) at bf16: the gradient within the bf16 tolerance of fp32's.
TEST(CpuBf16, LossAndGradientFollowFp32) {
  CUFM_REQUIRE_CPU_BF16();
  MlpConfig mc;
  mc.data_dim = 4;
  mc.hidden = {96, 96};
  const Model model(mc, 9);
  const int64_t B = 700;
  const std::vector<float> x1 = test::random_floats(B * 4, -2.0f, 2.0f, 1);
  const std::vector<float> eps = test::random_floats(B * 4, -2.0f, 2.0f, 2);
  const std::vector<float> t = test::random_floats(B, 0.0f, 1.0f, 3);
  FlowBatch batch;
  batch.size = B;
  batch.x1 = x1.data();
  batch.eps = eps.data();
  batch.t = t.data();
  const LossGrad g32 = loss_and_grad(model, batch, {}, cpu_at(Precision::FP32));
  const LossGrad g16 = loss_and_grad(model, batch, {}, cpu_at(Precision::BF16));
  EXPECT_NEAR(g16.loss, g32.loss, 5e-2 * g32.loss);
  EXPECT_TRUE(test::close_to_scale(g16.grad, g32.grad, 2e-2, 1e-1));
  EXPECT_NE(g16.grad, g32.grad);
}

// Sampling and the velocity field at bf16 against fp32: test_gpu_sampling's bf16 tolerance
// (5e-2 on samples of magnitude about 1).
TEST(CpuBf16, SamplingAndTheFieldFollowFp32) {
  CUFM_REQUIRE_CPU_BF16();
  MlpConfig mc;
  mc.data_dim = 2;
  mc.hidden = {128, 128, 128};
  mc.num_classes = 4;
  const Model model(mc, 21);
  SampleConfig sc;
  sc.count = 3000;
  sc.steps = 16;
  sc.solver = Solver::Midpoint;
  sc.seed = 8;
  sc.labels = {2};
  sc.guidance = 2.0f;
  sc.device = Device::CPU;
  Sampler sampler;
  const SampleResult s32 = sampler.sample(model, sc);
  sc.precision = Precision::BF16;
  const SampleResult s16 = sampler.sample(model, sc);
  EXPECT_TRUE(test::all_close(s16.x.data(), s32.x.data(), s32.x.size(), 5e-2, 5e-2));
  EXPECT_NE(s16.x, s32.x);

  FieldOptions o;
  o.device = Device::CPU;
  VelocityField f32(model, o);
  o.precision = Precision::BF16;
  VelocityField f16(model, o);
  const std::vector<float> x = test::random_floats(2 * 500, -2.0f, 2.0f, 4);
  std::vector<float> v32(x.size()), v16(x.size());
  f32.evaluate(0.4f, x.data(), nullptr, 500, v32.data());
  f16.evaluate(0.4f, x.data(), nullptr, 500, v16.data());
  EXPECT_TRUE(test::all_close(v16.data(), v32.data(), v32.size(), 5e-2, 5e-2));
  EXPECT_NE(v16, v32);
}

TEST(CpuBf16, Tf32IsRefusedOnTheCpuAndBf16SaysWhyWhereItCannotRun) {
  MlpConfig mc;
  mc.data_dim = 2;
  mc.hidden = {16};
  const Model model(mc, 1);
  const Dataset data = data_for(2, 0, 100);
  TrainConfig cfg = train_config();
  cfg.batch_size = 32;
  const std::string tf32 = test::error_of([&] { Trainer(model, data, cfg, cpu_at(Precision::TF32)); });
  EXPECT_NE(tf32.find("tf32 needs the CUDA backend"), std::string::npos) << tf32;
  SampleConfig sc;
  sc.count = 10;
  sc.device = Device::CPU;
  sc.precision = Precision::TF32;
  const std::string s = test::error_of([&] { Sampler().sample(model, sc); });
  EXPECT_NE(s.find("sampling: precision tf32"), std::string::npos) << s;
  // bf16: runs where it is available, and otherwise names the reason.
  const std::string why = cpu_bf16_unavailable_reason();
  if (why.empty()) {
    EXPECT_GT(Trainer(model, data, cfg, cpu_at(Precision::BF16)).step(), 0.0f);
  } else {
    const std::string bf16 = test::error_of([&] { Trainer(model, data, cfg, cpu_at(Precision::BF16)); });
    EXPECT_NE(bf16.find("precision bf16 on the CPU backend: " + why), std::string::npos) << bf16;
  }
  // Log-likelihoods run in fp32 on every device (the divergence's tangents need it).
  sc.precision = Precision::BF16;
  sc.with_log_prob = true;
  const std::string lp = test::error_of([&] { Sampler().sample(model, sc); });
  EXPECT_NE(lp.find("with_log_prob runs in fp32"), std::string::npos) << lp;
}

}  // namespace
}  // namespace cufm
