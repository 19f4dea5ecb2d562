// Adam and AdamW against their formulas (PyTorch's), gradient clipping and the EMA.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "host/cpu_ops.hpp"
#include "test_util.hpp"

namespace {

using namespace cufm;

struct Reference {  // Kingma & Ba with bias correction, in double
  double p, m = 0, v = 0;
};

void run(Optimizer kind, float wd, float clip, float ema_decay) {
  OptimConfig o;
  o.kind = kind;
  o.lr = 0.01f;
  o.weight_decay = wd;
  o.grad_clip = clip;
  o.ema_decay = ema_decay;
  const size_t n = 50;
  std::vector<float> p(n), m(n, 0), v(n, 0), ema(n), g(n);
  std::vector<Reference> ref(n);
  std::vector<double> ema_ref(n);
  for (size_t i = 0; i < n; ++i) {
    p[i] = std::sin(static_cast<float>(i));
    ref[i].p = p[i];
    ema[i] = p[i];
    ema_ref[i] = p[i];
  }
  for (int t = 1; t <= 7; ++t) {
    for (size_t i = 0; i < n; ++i) g[i] = std::cos(0.3f * static_cast<float>(i * t)) * (1.0f + static_cast<float>(t));
    const double norm = cpu::l2_norm(g.data(), n);
    double norm_ref = 0;
    for (float x : g) norm_ref += static_cast<double>(x) * x;
    ASSERT_NEAR(norm, std::sqrt(norm_ref), 1e-9 * std::sqrt(norm_ref));
    const hd::AdamCoeffs c = cpu::adam_coeffs(o, t, static_cast<float>(norm));
    cpu::adam_step(c, g.data(), n, p.data(), m.data(), v.data(), ema_decay > 0 ? ema.data() : nullptr);
    const double scale = clip > 0 ? std::min(1.0, clip / (norm + 1e-6)) : 1.0;
    for (size_t i = 0; i < n; ++i) {
      Reference& r = ref[i];
      double gi = g[i] * scale;
      if (kind == Optimizer::AdamW) {
        r.p -= o.lr * wd * r.p;
      } else {
        gi += wd * r.p;
      }
      r.m = 0.9 * r.m + 0.1 * gi;
      r.v = 0.999 * r.v + 0.001 * gi * gi;
      const double mhat = r.m / (1 - std::pow(0.9, t)), vhat = r.v / (1 - std::pow(0.999, t));
      r.p -= o.lr * mhat / (std::sqrt(vhat) + 1e-8);
      ema_ref[i] = ema_decay * ema_ref[i] + (1 - ema_decay) * r.p;
    }
  }
  std::vector<double> want(n);
  for (size_t i = 0; i < n; ++i) want[i] = ref[i].p;
  EXPECT_TRUE(test::all_close(p.data(), want.data(), n, 1e-6, 1e-5));
  if (ema_decay > 0) {
    EXPECT_TRUE(test::all_close(ema.data(), ema_ref.data(), n, 1e-6, 1e-5));
  }
  EXPECT_GT(test::norm2(p), 0.0);
}

TEST(Adam, MatchesFormula) { run(Optimizer::Adam, 0.0f, 0.0f, 0.0f); }
TEST(Adam, L2WeightDecayFoldsIntoGradient) { run(Optimizer::Adam, 0.1f, 0.0f, 0.0f); }
TEST(AdamW, DecoupledWeightDecay) { run(Optimizer::AdamW, 0.1f, 0.0f, 0.0f); }
TEST(Adam, GradientClippingScalesByGlobalNorm) { run(Optimizer::Adam, 0.0f, 0.5f, 0.0f); }
TEST(Adam, EmaTracksTheWeights) { run(Optimizer::AdamW, 0.01f, 1.0f, 0.9f); }

TEST(Adam, FirstStepMovesEachWeightByLr) {
  // With bias correction the first step is lr * g / (|g| + eps): a step of lr per weight.
  OptimConfig o;
  o.lr = 0.05f;
  std::vector<float> p = {1.0f, -2.0f}, m(2, 0), v(2, 0), g = {3.0f, -0.001f};
  cpu::adam_step(cpu::adam_coeffs(o, 1, 0.0f), g.data(), 2, p.data(), m.data(), v.data(), nullptr);
  EXPECT_NEAR(p[0], 0.95f, 1e-6);
  EXPECT_NEAR(p[1], -1.95f, 1e-4);
}

}  // namespace
