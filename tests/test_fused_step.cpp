// The CPU backend's fused training step for narrow models (host/cpu/cpu_fused.cpp) against the
// layered one (mlp_forward, mse_given, mlp_backward) on the same inputs: the same loss and gradients
// up to fp32 rounding, over ragged widths, batches that are not multiples of its 256-row blocks,
// every activation, class and time-feature inputs and wide outputs; its bits independent of the
// thread count; and fm_loss_grad alike with its noise kept or drawn again. On a CPU without AVX-512
// the fused step does not run, and its tests skip saying so.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cufm/dataset.hpp"
#include "cufm/model.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "test_util.hpp"

namespace cufm {
namespace {

struct Case {
  std::vector<int> hidden;
  Activation act;
  int data_dim, time_features, classes;
  int64_t batch;
};

class FusedStep : public ::testing::TestWithParam<Case> {};

TEST_P(FusedStep, MatchesTheLayeredStep) {
  const Case c = GetParam();
  MlpConfig m;
  m.data_dim = c.data_dim;
  m.hidden = c.hidden;
  m.activation = c.act;
  m.time_features = c.time_features;
  m.num_classes = c.classes;
  if (!cpu::fused_step_applies(m, Precision::FP32)) {
    GTEST_SKIP() << "the fused step does not run here (it needs AVX-512, and widths of at most 256)";
  }
  const Model model(m, 17);
  const int64_t B = c.batch;
  const int D = m.data_dim, in = m.input_dim();
  const std::vector<float> input = test::random_floats(static_cast<size_t>(B) * in, -2.0f, 2.0f, 1);
  const std::vector<float> x1 = test::random_floats(static_cast<size_t>(B) * D, -2.0f, 2.0f, 2);
  const std::vector<float> eps = test::random_floats(static_cast<size_t>(B) * D, -2.0f, 2.0f, 3);
  const float sigma_min = 0.01f;
  cpu::set_threads(0);

  // Layered.
  cpu::MlpWorkspace ws;
  cpu::mlp_forward(m, model.params().data(), input.data(), B, ws);
  std::vector<float> dout(static_cast<size_t>(B) * D), want(model.num_params());
  const float want_loss = cpu::mse_given(B, D, ws.out.data(), x1.data(), eps.data(), sigma_min, dout.data());
  cpu::mlp_backward(m, model.params().data(), input.data(), B, dout.data(), ws, want.data());

  // Fused.
  std::vector<float> got(model.num_params(), NAN);
  cpu::FusedScratch scratch;
  const cpu::RowLoss rows = [&](int64_t r0, int64_t r1, const float* v, float* grad) {
    return cpu::mse_rows(B, D, r0, r1, v, x1.data(), eps.data(), sigma_min, grad);
  };
  const double sum = cpu::fused_step(m, model.params().data(), input.data(), B, rows, scratch, got.data());
  const float loss = static_cast<float>(sum / (static_cast<double>(B) * D));

  EXPECT_NEAR(loss, want_loss, 1e-5 * want_loss);
  // Every gradient, within fp32 rounding of sums over the batch (compared to each tensor's scale).
  const ParamLayout layout(m);
  for (int l = 0; l < m.num_layers(); ++l) {
    for (bool bias : {false, true}) {
      const size_t off = bias ? layout.bias_offset(l) : layout.weight_offset(l);
      const size_t n =
          bias ? static_cast<size_t>(m.layer_out(l)) : static_cast<size_t>(m.layer_out(l)) * m.layer_in(l);
      const std::vector<float> g(got.begin() + off, got.begin() + off + n),
          w(want.begin() + off, want.begin() + off + n);
      EXPECT_TRUE(test::close_to_scale(g, w, 1e-5, 1e-4)) << "layer " << l << (bias ? " bias" : " weight");
    }
  }
  EXPECT_GT(test::norm2(got), 0.0);
}

INSTANTIATE_TEST_SUITE_P(
    Models, FusedStep,
    ::testing::Values(Case{{64, 64, 64, 64, 64}, Activation::SiLU, 2, 0, 0, 4096},  // R2's shape
                      Case{{48, 37}, Activation::ReLU, 3, 8, 5, 700},               // ragged everywhere
                      Case{{129, 256}, Activation::GELU, 20, 16, 0, 513},           // wide output rows
                      Case{{16}, Activation::SiLU, 1, 0, 3, 1},                     // one row
                      Case{{100, 100, 100}, Activation::SiLU, 5, 4, 0, 255}));

// The chunks and their order are the batch's, never the team's: 1 and 2 threads give the same bits.
TEST(FusedStepBits, DoNotDependOnTheThreadCount) {
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {64, 64, 64};
  if (!cpu::fused_step_applies(m, Precision::FP32)) GTEST_SKIP() << "the fused step does not run here";
  const Model model(m, 4);
  const int64_t B = 9000;
  const std::vector<float> input =
      test::random_floats(static_cast<size_t>(B) * m.input_dim(), -2.0f, 2.0f, 1);
  const std::vector<float> x1 = test::random_floats(static_cast<size_t>(B) * 2, -2.0f, 2.0f, 2);
  const std::vector<float> eps = test::random_floats(static_cast<size_t>(B) * 2, -2.0f, 2.0f, 3);
  const cpu::RowLoss rows = [&](int64_t r0, int64_t r1, const float* v, float* grad) {
    return cpu::mse_rows(B, 2, r0, r1, v, x1.data(), eps.data(), 0.0f, grad);
  };
  std::vector<float> g1(model.num_params()), g2(model.num_params());
  cpu::FusedScratch s1, s2;
  cpu::set_threads(1);
  const double l1 = cpu::fused_step(m, model.params().data(), input.data(), B, rows, s1, g1.data());
  cpu::set_threads(2);
  const double l2 = cpu::fused_step(m, model.params().data(), input.data(), B, rows, s2, g2.data());
  cpu::set_threads(0);
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(g1, g2);
}

// fm_loss_grad reads back the noise fm_prepare drew; drawn again from the rows' counters (as the
// GPU kernel does) it gives the same bits, with and without a coupling.
TEST(FusedStepBits, TheKeptNoiseIsTheDrawnNoise) {
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {8};
  const Dataset data = make_toy("moons", 2000, 3);
  for (Coupling coupling : {Coupling::Independent, Coupling::Exact}) {
    TrainConfig tc;
    tc.batch_size = 600;
    tc.coupling = coupling;
    cpu::PreparedBatch batch;
    cpu::fm_prepare(m, tc, data, 5, batch);
    ASSERT_EQ(batch.eps.size(), 1200u);
    const std::vector<float> v = test::random_floats(1200, -1.0f, 1.0f, 9);
    std::vector<float> kept(1200), drawn(1200);
    const float lk = cpu::fm_loss_grad(m, tc, data, 5, batch, v.data(), kept.data());
    batch.eps.clear();
    const float ld = cpu::fm_loss_grad(m, tc, data, 5, batch, v.data(), drawn.data());
    EXPECT_EQ(lk, ld) << to_string(coupling);
    EXPECT_EQ(kept, drawn) << to_string(coupling);
  }
}

}  // namespace
}  // namespace cufm
