// Adam and AdamW against their formulas (PyTorch's), gradient clipping and the EMA.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cufm/cufm.hpp"
#include "host/cpu/cpu_ops.hpp"
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
    for (size_t i = 0; i < n; ++i)
      g[i] = std::cos(0.3f * static_cast<float>(i * t)) * (1.0f + static_cast<float>(t));
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

TEST(Adam, MatchesFormula) {
  run(Optimizer::Adam, 0.0f, 0.0f, 0.0f);
}
TEST(Adam, L2WeightDecayFoldsIntoGradient) {
  run(Optimizer::Adam, 0.1f, 0.0f, 0.0f);
}
TEST(AdamW, DecoupledWeightDecay) {
  run(Optimizer::AdamW, 0.1f, 0.0f, 0.0f);
}
TEST(Adam, GradientClippingScalesByGlobalNorm) {
  run(Optimizer::Adam, 0.0f, 0.5f, 0.0f);
}
TEST(Adam, EmaTracksTheWeights) {
  run(Optimizer::AdamW, 0.01f, 1.0f, 0.9f);
}

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

// ---- learning-rate schedules (hd::scheduled_lr, which both backends' optimisers call) ----------
namespace {

double lr_at(const OptimConfig& o, uint64_t t) {
  return cpu::adam_coeffs(o, t, 0.0f).lr;
}

OptimConfig scheduled(LrSchedule s, uint64_t warmup, uint64_t decay, float min_lr) {
  OptimConfig o;
  o.lr = 3e-3f;
  o.lr_schedule = s;
  o.warmup_steps = warmup;
  o.decay_steps = decay;
  o.min_lr = min_lr;
  return o;
}

}  // namespace

TEST(LrSchedule, ConstantIsTheLrAtEveryStep) {
  const OptimConfig o;  // the default: constant, no warm-up
  for (uint64_t t : {1ull, 2ull, 1000ull, 1ull << 40}) EXPECT_EQ(lr_at(o, t), o.lr) << t;
}

TEST(LrSchedule, WarmupRampsLinearlyToTheLr) {
  const OptimConfig o = scheduled(LrSchedule::Constant, 100, 0, 0.0f);
  EXPECT_FLOAT_EQ(lr_at(o, 1), 3e-3f / 100);
  EXPECT_FLOAT_EQ(lr_at(o, 50), 3e-3f / 2);
  EXPECT_EQ(lr_at(o, 100), o.lr);
  EXPECT_EQ(lr_at(o, 101), o.lr);
}

TEST(LrSchedule, CosineAndLinearDecayToMinLr) {
  for (LrSchedule s : {LrSchedule::Cosine, LrSchedule::Linear}) {
    const OptimConfig o = scheduled(s, 10, 1000, 1e-4f);
    EXPECT_EQ(lr_at(o, 10), o.lr);  // the warm-up's end
    EXPECT_LT(lr_at(o, 11), o.lr);  // the decay's first step: 1/1000 of the way
    EXPECT_GT(lr_at(o, 11), 0.999 * o.lr);
    EXPECT_NEAR(lr_at(o, 510), 0.5 * (3e-3 + 1e-4), 1e-6);  // half-way: the mean, for both
    EXPECT_EQ(lr_at(o, 1010), o.min_lr);                    // the end, and after
    EXPECT_EQ(lr_at(o, 5000), o.min_lr);
    // Monotone, and the cosine against its formula in double.
    double prev = lr_at(o, 11);
    for (uint64_t t = 12; t <= 1010; ++t) {
      const double now = lr_at(o, t);
      EXPECT_LE(now, prev) << t;
      prev = now;
      const double p = static_cast<double>(t - 10) / 1000.0;
      const double want = s == LrSchedule::Cosine ? 1e-4 + (3e-3 - 1e-4) * 0.5 * (1 + std::cos(M_PI * p))
                                                  : 3e-3 - (3e-3 - 1e-4) * p;
      EXPECT_NEAR(now, want, 2e-9) << to_string(s) << " at step " << t;
    }
  }
}

TEST(LrSchedule, ConfigurationIsChecked) {
  TrainConfig c;
  c.optim.lr_schedule = LrSchedule::Cosine;
  EXPECT_THAT(test::error_of([&] { c.validate(); }), ::testing::HasSubstr("decay_steps >= 1"));
  c.optim.decay_steps = 10;
  c.optim.min_lr = 1.0f;
  EXPECT_THAT(test::error_of([&] { c.validate(); }), ::testing::HasSubstr("min_lr must be in [0, lr"));
  EXPECT_EQ(parse_lr_schedule("cosine"), LrSchedule::Cosine);
  EXPECT_THAT(test::error_of([] { parse_lr_schedule("step"); }), ::testing::HasSubstr("'step'"));
}

// The schedule reaches training: with a 1000-step warm-up, Adam's first step moves each weight by
// about lr / 1000 (its first update is lr * g / |g| for every weight) instead of about lr.
TEST(LrSchedule, WarmupScalesTheFirstTrainingStep) {
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {16};
  const Dataset data = make_toy("moons", 500, 1);
  const auto largest_move = [&](uint64_t warmup) {
    TrainConfig tc;
    tc.batch_size = 64;
    tc.optim.warmup_steps = warmup;
    const Model start(m, 3);
    Trainer tr(start, data, tc, test::on_cpu());
    tr.step();
    double most = 0.0;
    const std::vector<float> after = tr.model().params();
    for (size_t i = 0; i < after.size(); ++i)
      most = std::max(most, std::fabs(double(after[i]) - start.params()[i]));
    return most;
  };
  EXPECT_NEAR(largest_move(0), 1e-3, 1e-5);
  EXPECT_NEAR(largest_move(1000), 1e-6, 1e-7);  // a weight near 0.5 moves in float ulps of 6e-8
}
