// Every layer's gradient (weights, biases, through each activation) and the loss's gradient
// against central differences of an independent float64 forward pass.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "cufm/cufm.hpp"
#include "float64_mlp.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "test_util.hpp"

namespace {

using namespace cufm;
using test::forward64;

struct Case {
  Activation act;
  int time_features;
  int classes;
  int context = 0;
};

class Gradients : public ::testing::TestWithParam<Case> {};

TEST_P(Gradients, BackwardMatchesFloat64CentralDifferences) {
  const Case c = GetParam();
  MlpConfig m;
  m.data_dim = 3;
  m.hidden = {7, 6, 5};
  m.activation = c.act;
  m.time_features = c.time_features;
  m.num_classes = c.classes;
  m.context_dim = c.context;
  const Model model(m, 17);
  const int batch = 6, in = m.input_dim();
  // Fresh random inputs: x, t, labels (including the null class) and contexts (every third null).
  std::vector<float> input(static_cast<size_t>(batch) * in);
  for (int r = 0; r < batch; ++r) {
    float x[3], z[4];
    rng::normal4(5, 0, r, 0, z);
    for (int k = 0; k < 3; ++k) x[k] = z[k];
    std::vector<float> ctx(static_cast<size_t>(c.context));
    for (int k = 0; k < c.context; ++k)
      ctx[k] = std::sin(0.9f * static_cast<float>(r * c.context + k) + 0.2f);
    cpu::write_input_row(m, x, 0.1f + 0.13f * r, c.classes > 0 ? r % (c.classes + 1) : -1,
                         c.context > 0 && r % 3 != 0 ? ctx.data() : nullptr, input.data() + r * in);
  }
  std::vector<float> weights(static_cast<size_t>(batch) * m.data_dim);  // L = sum(out * weights)
  for (size_t i = 0; i < weights.size(); ++i) weights[i] = std::cos(1.7f * static_cast<float>(i) + 0.3f);

  cpu::MlpWorkspace ws;
  cpu::mlp_forward(m, model.params().data(), input.data(), batch, ws);
  std::vector<double> p64(model.params().begin(), model.params().end());
  const std::vector<double> out64 = forward64(m, p64, input, batch);
  EXPECT_TRUE(test::all_close(ws.out.data(), out64.data(), out64.size(), 1e-5, 1e-5)) << "forward";

  std::vector<float> grads(model.num_params(), NAN);
  cpu::mlp_backward(m, model.params().data(), input.data(), batch, weights.data(), ws, grads.data());

  auto loss64 = [&](const std::vector<double>& p) {
    const std::vector<double> o = forward64(m, p, input, batch);
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * weights[i];
    return s;
  };
  std::vector<double> fd(model.num_params());
  const double h = 1e-6;
  for (size_t k = 0; k < fd.size(); ++k) {
    std::vector<double> q = p64;
    q[k] += h;
    const double up = loss64(q);
    q[k] -= 2 * h;
    fd[k] = (up - loss64(q)) / (2 * h);
  }
  for (const TensorSlot& t : model.layout().tensors()) {
    EXPECT_TRUE(test::all_close(grads.data() + t.offset, fd.data() + t.offset, t.size, 2e-5, 2e-4)) << t.name;
  }
  EXPECT_GT(test::norm2(grads), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Activations, Gradients,
                         ::testing::Values(Case{Activation::SiLU, 0, 0}, Case{Activation::ReLU, 0, 0},
                                           Case{Activation::GELU, 0, 0}, Case{Activation::SiLU, 8, 0},
                                           Case{Activation::GELU, 4, 3}, Case{Activation::ReLU, 0, 4},
                                           Case{Activation::SiLU, 0, 0, 3}, Case{Activation::GELU, 4, 2, 5}),
                         [](const auto& p) {
                           return std::string(to_string(p.param.act)) + "_tf" +
                                  std::to_string(p.param.time_features) + "_c" +
                                  std::to_string(p.param.classes) + "_k" + std::to_string(p.param.context);
                         });

// dL/dv of the MSE loss against central differences of the loss itself, in double.
TEST(LossGradient, MatchesCentralDifferences) {
  MlpConfig m;
  m.hidden = {4};
  TrainConfig tc;
  tc.batch_size = 5;
  const Dataset data = make_toy("rings", 64, 2);
  cpu::PreparedBatch batch;
  cpu::fm_prepare(m, tc, data, 3, batch);
  std::vector<float> v(10);
  for (size_t i = 0; i < v.size(); ++i) v[i] = 0.4f * std::sin(static_cast<float>(i));
  std::vector<float> grad(v.size(), NAN);
  cpu::fm_loss_grad(m, tc, data, 3, batch, v.data(), grad.data());
  std::vector<float> scratch(v.size());
  for (size_t k = 0; k < v.size(); ++k) {
    const float h = 1e-2f;  // the loss is quadratic: central differences are exact up to rounding
    std::vector<float> q = v;
    q[k] += h;
    const double up = cpu::fm_loss_grad(m, tc, data, 3, batch, q.data(), scratch.data());
    q[k] -= 2 * h;
    const double down = cpu::fm_loss_grad(m, tc, data, 3, batch, q.data(), scratch.data());
    EXPECT_NEAR(grad[k], (up - down) / (2 * h), 2e-5) << "element " << k;
  }
}

}  // namespace
