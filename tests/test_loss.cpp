// loss_and_grad against an independent float64 oracle (the MLP in double, x_t and u in double,
// the gradient by central differences of the float64 loss), with and without classes, and its
// refusals. On the GPU: tests/gpu/test_gpu_training.cpp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cufm/error.hpp"
#include "cufm/loss.hpp"
#include "cufm/sampler.hpp"
#include "float64_mlp.hpp"
#include "test_util.hpp"

namespace {

using namespace cufm;
using test::error_of;
using ::testing::HasSubstr;

struct Draws {
  std::vector<float> x1, t, eps;
  std::vector<int32_t> labels;
  FlowBatch batch() const {
    FlowBatch b;
    b.size = static_cast<int64_t>(t.size());
    b.x1 = x1.data();
    b.t = t.data();
    b.eps = eps.data();
    b.labels = labels.empty() ? nullptr : labels.data();
    return b;
  }
};

Draws make_draws(int n, int dim, int classes, uint64_t seed) {
  Draws d;
  d.x1.resize(static_cast<size_t>(n) * dim);
  d.eps.resize(d.x1.size());
  sampler_noise(seed, 0, n, dim, d.x1.data());
  sampler_noise(seed + 1, 0, n, dim, d.eps.data());
  for (float& v : d.x1) v = 2.0f * v + 0.5f;
  for (int i = 0; i < n; ++i) {
    d.t.push_back(static_cast<float>(i + 0.5) / static_cast<float>(n));
    if (classes > 0) d.labels.push_back(i % (classes + 1));  // the null class too
  }
  return d;
}

// The float64 loss: input rows [x_t | raw t | one-hot], x_t and u in double.
double loss64(const MlpConfig& m, const std::vector<double>& p, const Draws& d, double sigma) {
  const int n = static_cast<int>(d.t.size()), D = m.data_dim, in = m.input_dim();
  std::vector<double> input(static_cast<size_t>(n) * in, 0.0);
  for (int i = 0; i < n; ++i) {
    const double t = d.t[i];
    for (int k = 0; k < D; ++k)
      input[i * in + k] = t * d.x1[i * D + k] + (1 - (1 - sigma) * t) * d.eps[i * D + k];
    input[i * in + D] = t;
    if (m.num_classes > 0) input[i * in + D + 1 + d.labels[i]] = 1.0;
  }
  const std::vector<double> v = test::forward64(m, p, input, n);
  double s = 0.0;
  for (int j = 0; j < n * D; ++j) {
    const double diff = v[j] - (d.x1[j] - (1 - sigma) * d.eps[j]);
    s += diff * diff;
  }
  return s / (static_cast<double>(n) * D);
}

struct Case {
  Activation act;
  int classes;
  float sigma;
};

class LossAndGrad : public ::testing::TestWithParam<Case> {};

TEST_P(LossAndGrad, MatchesTheFloat64Oracle) {
  const Case c = GetParam();
  MlpConfig m;
  m.data_dim = 3;
  m.hidden = {9, 7};
  m.activation = c.act;
  m.num_classes = c.classes;
  const Model model(m, 21);
  const Draws d = make_draws(24, 3, c.classes, 5);
  PathConfig path;
  path.sigma_min = c.sigma;
  RunOptions run;
  run.device = Device::CPU;
  const LossGrad r = loss_and_grad(model, d.batch(), path, run);
  std::vector<double> p(model.params().begin(), model.params().end());
  const double want = loss64(m, p, d, c.sigma);
  EXPECT_NEAR(r.loss, want, 2e-6 * want);
  ASSERT_EQ(r.grad.size(), p.size());
  std::vector<double> fd(p.size());
  double scale = 0.0;
  for (size_t i = 0; i < p.size(); ++i) {
    const double h = 1e-6 * std::max(1.0, std::abs(p[i]));
    const double keep = p[i];
    p[i] = keep + h;
    const double up = loss64(m, p, d, c.sigma);
    p[i] = keep - h;
    const double down = loss64(m, p, d, c.sigma);
    p[i] = keep;
    fd[i] = (up - down) / (2 * h);
    scale = std::max(scale, std::abs(fd[i]));
  }
  // fp32 arithmetic against float64: a small fraction of the largest gradient, per element.
  EXPECT_TRUE(test::all_close(r.grad.data(), fd.data(), fd.size(), 2e-5 * scale, 1e-3));
}

INSTANTIATE_TEST_SUITE_P(Cases, LossAndGrad,
                         ::testing::Values(Case{Activation::SiLU, 0, 0.0f}, Case{Activation::GELU, 4, 0.0f},
                                           Case{Activation::SiLU, 3, 0.1f}),
                         [](const auto& p) {
                           return std::string(to_string(p.param.act)) + "_classes" +
                                  std::to_string(p.param.classes) + (p.param.sigma > 0 ? "_sigma" : "");
                         });

// No labels for a conditional model: every row takes the null class.
TEST(LossAndGradArguments, NoLabelsMeansTheNullClass) {
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {8};
  m.num_classes = 3;
  const Model model(m, 3);
  Draws d = make_draws(10, 2, 3, 9);
  RunOptions run;
  run.device = Device::CPU;
  d.labels.assign(10, 3);
  const LossGrad with_null = loss_and_grad(model, d.batch(), {}, run);
  d.labels.clear();
  const LossGrad none = loss_and_grad(model, d.batch(), {}, run);
  EXPECT_EQ(with_null.loss, none.loss);
  EXPECT_EQ(with_null.grad, none.grad);
}

TEST(LossAndGradArguments, RefusedWithTheReason) {
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {8};
  const Model model(m, 3);
  Draws d = make_draws(10, 2, 0, 9);
  RunOptions run;
  run.device = Device::CPU;
  FlowBatch b = d.batch();
  b.size = 0;
  EXPECT_THAT(error_of([&] { loss_and_grad(model, b, {}, run); }),
              HasSubstr("batch size must be in [1, 2^31 - 1]"));
  b = d.batch();
  b.eps = nullptr;
  EXPECT_THAT(error_of([&] { loss_and_grad(model, b, {}, run); }), HasSubstr("must not be null"));
  d.t[4] = 1.5f;
  EXPECT_THAT(error_of([&] { loss_and_grad(model, d.batch(), {}, run); }), HasSubstr("t at row 4 is 1.5"));
  d.t[4] = 0.5f;
  d.labels.assign(10, 0);
  EXPECT_THAT(error_of([&] { loss_and_grad(model, d.batch(), {}, run); }),
              HasSubstr("the model is unconditional"));
  d.labels.clear();
  PathConfig bad;
  bad.sigma_min = 1.0f;
  EXPECT_THAT(error_of([&] { loss_and_grad(model, d.batch(), bad, run); }),
              HasSubstr("sigma_min must be in [0, 1)"));
  RunOptions tf32 = run;
  tf32.precision = Precision::TF32;  // bf16 runs on CPUs that have it (test_cpu_bf16)
  EXPECT_THAT(error_of([&] { loss_and_grad(model, d.batch(), {}, tf32); }),
              HasSubstr("tf32 needs the CUDA backend"));
}

}  // namespace
