// The path, the time sampling and the loss with its gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "cufm/cufm.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "test_util.hpp"

namespace {

using namespace cufm;

TEST(Path, LinearPathByHand) {
  // t = 0.25, x1 = (1, 2), eps = (0.5, -1): x_t = (0.625, -0.25), u = (0.5, 3).
  EXPECT_FLOAT_EQ(hd::path_xt(0.25f, 1.0f, 0.5f, 0.0f), 0.625f);
  EXPECT_FLOAT_EQ(hd::path_xt(0.25f, 2.0f, -1.0f, 0.0f), -0.25f);
  EXPECT_FLOAT_EQ(hd::path_target(1.0f, 0.5f, 0.0f), 0.5f);
  EXPECT_FLOAT_EQ(hd::path_target(2.0f, -1.0f, 0.0f), 3.0f);
  // Ends: t = 0 is the noise, t = 1 the data.
  EXPECT_EQ(hd::path_xt(0.0f, 3.0f, -0.7f, 0.0f), -0.7f);
  EXPECT_EQ(hd::path_xt(1.0f, 3.0f, -0.7f, 0.0f), 3.0f);
}

TEST(Path, SigmaMinVariant) {
  const float s = 0.1f, t = 0.6f, x1 = 1.5f, eps = -0.4f;
  EXPECT_NEAR(hd::path_xt(t, x1, eps, s), t * x1 + (1 - (1 - s) * t) * eps, 1e-6);
  EXPECT_NEAR(hd::path_target(x1, eps, s), x1 - (1 - s) * eps, 1e-6);
  // d x_t / dt is the target.
  const double h = 1e-3;
  const double dxdt = (hd::path_xt(t + h, x1, eps, s) - hd::path_xt(t - h, x1, eps, s)) / (2 * h);
  EXPECT_NEAR(dxdt, hd::path_target(x1, eps, s), 1e-3);
}

TEST(TimeSampling, LogitNormalIsInsideAndCentred) {
  std::vector<float> ts;
  for (uint32_t i = 0; i < 20000; ++i) {
    ts.push_back(hd::draw_sample(1, 0, i, 1, TimeSampling::LogitNormal, 0.5f, 0.8f, 0.0f).t);
  }
  std::sort(ts.begin(), ts.end());
  EXPECT_GT(ts.front(), 0.0f);
  EXPECT_LT(ts.back(), 1.0f);
  EXPECT_NEAR(ts[ts.size() / 2], 1.0 / (1.0 + std::exp(-0.5)), 0.01);  // the median is sigmoid(mean)
}

TEST(Loss, LossByHand) {
  // One sample, D = 2: v = (1, 1), u = (0.5, 3): loss = (0.25 + 4) / 2 = 2.125.
  const double u0 = hd::path_target(1.0f, 0.5f, 0.0f), u1 = hd::path_target(2.0f, -1.0f, 0.0f);
  EXPECT_DOUBLE_EQ(((1 - u0) * (1 - u0) + (1 - u1) * (1 - u1)) / 2, 2.125);
}

// The batch loss and dL/dv against an independent double-precision recomputation from the draws.
TEST(Loss, BatchLossAndGradientMatchDoubleReference) {
  MlpConfig m;
  m.data_dim = 5;
  m.hidden = {8};
  TrainConfig tc;
  tc.batch_size = 700;
  tc.seed = 99;
  tc.path.sigma_min = 0.05f;
  Dataset data = make_toy("8gaussians", 300, 4);
  // A 5-D dataset from the 2-D toy plus derived columns.
  Dataset d5;
  d5.name = "d5";
  d5.n = data.n;
  d5.dim = 5;
  for (int64_t i = 0; i < data.n; ++i) {
    const float a = data.x[2 * i], b = data.x[2 * i + 1];
    for (float v : {a, b, a * b, a - b, 0.5f * a}) d5.x.push_back(v);
  }
  cpu::PreparedBatch batch;
  const uint64_t step = 12;
  cpu::fm_prepare(m, tc, d5, step, batch);
  std::vector<float> v(tc.batch_size * 5), grad(v.size(), NAN);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.37f * static_cast<float>(i));
  const float loss = cpu::fm_loss_grad(m, tc, d5, step, batch, v.data(), grad.data());

  double sum = 0.0;
  std::vector<double> want_grad(v.size());
  for (int i = 0; i < tc.batch_size; ++i) {
    const auto d = hd::draw_sample(tc.seed, step, i, d5.n, TimeSampling::Uniform, 0, 1, 0);
    ASSERT_EQ(d.data_index, batch.index[i]);
    ASSERT_EQ(d.t, batch.t[i]);
    for (int g = 0; g < 2; ++g) {
      float eps[4];
      rng::normal4(tc.seed, step, i, g, eps);
      for (int k = 0; k < 4 && 4 * g + k < 5; ++k) {
        const int j = 4 * g + k;
        const double x1 = d5.x[d.data_index * 5 + j];
        const double xt = d.t * x1 + (1.0 - (1.0 - 0.05) * d.t) * eps[k];
        EXPECT_NEAR(batch.input[i * m.input_dim() + j], xt, 1e-6);
        const double u = x1 - (1.0 - 0.05) * eps[k];
        const double diff = v[i * 5 + j] - u;
        sum += diff * diff;
        want_grad[i * 5 + j] = 2.0 * diff / (tc.batch_size * 5.0);
      }
    }
    EXPECT_EQ(batch.input[i * m.input_dim() + 5], d.t);  // raw t feature
  }
  EXPECT_NEAR(loss, sum / (tc.batch_size * 5.0), 1e-6 * sum / (tc.batch_size * 5.0));
  EXPECT_TRUE(test::all_close(grad.data(), want_grad.data(), grad.size(), 1e-9, 1e-5));
  EXPECT_GT(test::norm2(grad), 0.0);
}

TEST(Loss, ReductionIsIndependentOfThreadCount) {
  MlpConfig m;
  m.hidden = {4};
  TrainConfig tc;
  tc.batch_size = 3000;
  Dataset data = make_toy("moons", 500, 1);
  cpu::PreparedBatch batch;
  cpu::fm_prepare(m, tc, data, 0, batch);
  std::vector<float> v(tc.batch_size * 2, 0.3f), g(v.size());
  cpu::set_threads(1);
  const float l1 = cpu::fm_loss_grad(m, tc, data, 0, batch, v.data(), g.data());
  cpu::set_threads(2);
  const float l2 = cpu::fm_loss_grad(m, tc, data, 0, batch, v.data(), g.data());
  EXPECT_EQ(l1, l2);
}

TEST(TimeFeatures, SinusoidsMatchLibm) {
  for (float t : {0.0f, 0.13f, 0.5f, 0.77f, 0.999f}) {
    for (int i = 0; i < 16; ++i) {
      const int j = i / 2;
      const double a = 2 * M_PI * std::ldexp(1.0, j) * t;
      EXPECT_NEAR(hd::time_feature(t, 16, i), (i & 1) ? std::cos(a) : std::sin(a), 2e-5) << t << " " << i;
    }
  }
  EXPECT_EQ(hd::time_feature(0.3f, 0, 0), 0.3f);
}

}  // namespace
