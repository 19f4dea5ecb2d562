// Trainer::step(batch): the caller's batches, with the step's own draws, on a trainer with or
// without a dataset; its loss is loss_and_grad's on those draws; it learns; it refuses clearly.
// prepare_flow and flow_mse: the same draws for a model of the caller's own.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cufm/cufm.hpp"
#include "cufm/detail/path.hpp"
#include "test_util.hpp"

namespace {

using namespace cufm;
using test::error_of;
using ::testing::HasSubstr;

MlpConfig model_config(int classes) {
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {32, 32};
  m.time_features = 4;
  m.num_classes = classes;
  return m;
}

TrainConfig train_config() {
  TrainConfig tc;
  tc.batch_size = 128;
  tc.seed = 5;
  tc.optim.lr = 3e-3f;
  tc.label_dropout = 0.25f;
  return tc;
}

// Rows of a toy dataset as the caller's batch k.
DataBatch batch_of(const Dataset& data, int k, int size) {
  DataBatch b;
  b.size = size;
  const int64_t first = (static_cast<int64_t>(k) * size) % (data.n - size);
  b.x1 = data.x.data() + first * data.dim;
  b.labels = data.labels.empty() ? nullptr : data.labels.data() + first;
  return b;
}

// The first step's loss is loss_and_grad's on the step's draws, recomputed here from the public
// draw functions (block 0 of row i's counter: t and dropout; blocks 1..: eps).
TEST(TrainBatch, FirstLossIsLossAndGradOnTheStepsDraws) {
  const Dataset data = make_toy("moons", 2000, 3);
  for (int classes : {0, 2}) {
    Dataset d = data;
    if (classes == 0) {
      d.labels.clear();
      d.num_classes = 0;
    }
    const MlpConfig m = model_config(classes);
    const Model model(m, 8);
    const TrainConfig tc = train_config();
    Trainer trainer(model, tc, test::on_cpu(1));
    const DataBatch b = batch_of(d, 0, tc.batch_size);
    std::vector<float> t(tc.batch_size), eps(static_cast<size_t>(tc.batch_size) * 2);
    std::vector<int32_t> labels;
    for (int i = 0; i < tc.batch_size; ++i) {
      const hd::SampleDraw s =
          hd::draw_sample(tc.seed, 0, i, tc.batch_size, TimeSampling::Uniform, 0.0f, 1.0f, tc.label_dropout);
      t[i] = s.t;
      if (classes > 0) labels.push_back(s.drop_label ? classes : b.labels[i]);
      float z[4];
      rng::normal4(tc.seed, 0, i, 0, z);
      eps[2 * i] = z[0];
      eps[2 * i + 1] = z[1];
    }
    FlowBatch fb;
    fb.size = tc.batch_size;
    fb.x1 = b.x1;
    fb.t = t.data();
    fb.eps = eps.data();
    fb.labels = labels.empty() ? nullptr : labels.data();
    RunOptions run;
    run.device = Device::CPU;
    const float want = loss_and_grad(model, fb, tc.path, run).loss;
    EXPECT_EQ(trainer.step(b), want) << classes << " classes";
    EXPECT_EQ(trainer.step_count(), 1u);
    if (classes > 0) {
      EXPECT_GT(std::count(labels.begin(), labels.end(), classes), 0);  // some were dropped
    }
  }
}

// prepare_flow + the caller's own forward + flow_mse is Trainer::step(batch)'s loss, step after
// step: the draws a model of one's own gets (cufm.torch.flow_matching_loss) are the trainer's.
TEST(FlowOps, PrepareFlowAndFlowMseAreTheTrainersStep) {
  const Dataset data = make_toy("moons", 2000, 3);
  for (int classes : {0, 2}) {
    Dataset d = data;
    if (classes == 0) {
      d.labels.clear();
      d.num_classes = 0;
    }
    const MlpConfig m = model_config(classes);
    const TrainConfig tc = train_config();
    Trainer trainer(Model(m, 8), tc, test::on_cpu(1));
    StepDraws draws;
    draws.seed = tc.seed;
    draws.path = tc.path;
    draws.num_classes = classes;
    draws.label_dropout = tc.label_dropout;
    const int B = tc.batch_size;
    for (uint64_t step = 0; step < 3; ++step) {
      const Model current = trainer.model();
      const DataBatch b = batch_of(d, static_cast<int>(step), B);
      draws.step = step;
      std::vector<float> xt(static_cast<size_t>(B) * 2), t(B), v(xt.size()), grad(xt.size());
      std::vector<int32_t> labels_out(classes > 0 ? B : 0);
      prepare_flow(draws, B, 2, b.x1, b.labels, xt.data(), t.data(),
                   classes > 0 ? labels_out.data() : nullptr);
      current.forward(xt.data(), t.data(), classes > 0 ? labels_out.data() : nullptr, B, v.data());
      const float loss = flow_mse(draws, B, 2, b.x1, v.data(), grad.data(), 1);
      const float want = trainer.step(b);
      EXPECT_NEAR(loss, want, 2e-6 * want) << classes << " classes, step " << step;
      if (classes > 0) {
        EXPECT_GT(std::count(labels_out.begin(), labels_out.end(), classes), 0);  // some were dropped
        for (int i = 0; i < B; ++i) ASSERT_TRUE(labels_out[i] == classes || labels_out[i] == b.labels[i]);
      }
    }
  }
}

// Against a float64 oracle on the public Philox draws: x_t, t, the loss and dL/dv = 2 (v - u)/(BD),
// with sigma_min and logit-normal times; the loss's bits do not depend on the thread count.
TEST(FlowOps, MatchTheFloat64PathOnTheDraws) {
  const int B = 700, D = 5;  // several of the loss's 256-row blocks, a partial Philox group
  std::vector<float> x1(static_cast<size_t>(B) * D), v(x1.size());
  sampler_noise(3, 0, B, D, x1.data());
  sampler_noise(4, 0, B, D, v.data());
  StepDraws draws;
  draws.seed = 77;
  draws.step = 12;
  draws.path.sigma_min = 0.05f;
  draws.path.time_sampling = TimeSampling::LogitNormal;
  draws.path.logit_mean = 0.2f;
  draws.path.logit_std = 0.9f;
  std::vector<float> xt(x1.size()), t(B), grad(x1.size()), grad2(x1.size()), eps(x1.size());
  prepare_flow(draws, B, D, x1.data(), nullptr, xt.data(), t.data(), nullptr, eps.data());
  std::vector<double> xt64(x1.size()), grad64(x1.size());
  double loss64 = 0.0;
  const double s = draws.path.sigma_min;
  for (int i = 0; i < B; ++i) {
    const hd::SampleDraw sd = hd::draw_sample(draws.seed, draws.step, i, B, draws.path.time_sampling,
                                              draws.path.logit_mean, draws.path.logit_std, 0.0f);
    ASSERT_EQ(t[i], sd.t) << "row " << i;
    for (int g = 0; g < (D + 3) / 4; ++g) {
      float z[4];
      rng::normal4(draws.seed, draws.step, i, g, z);
      for (int k = 0; k < 4 && 4 * g + k < D; ++k) {
        const size_t j = static_cast<size_t>(i) * D + 4 * g + k;
        ASSERT_EQ(eps[j], z[k]) << "row " << i;
        xt64[j] = sd.t * static_cast<double>(x1[j]) + (1.0 - (1.0 - s) * sd.t) * z[k];
        const double diff = v[j] - (x1[j] - (1.0 - s) * z[k]);
        grad64[j] = 2.0 * diff / (static_cast<double>(B) * D);
        loss64 += diff * diff;
      }
    }
  }
  loss64 /= static_cast<double>(B) * D;
  EXPECT_TRUE(test::all_close(xt.data(), xt64.data(), xt.size(), 1e-6, 1e-6));
  const float loss = flow_mse(draws, B, D, x1.data(), v.data(), grad.data(), 1);
  EXPECT_NEAR(loss, loss64, 1e-6 * loss64);
  // grad = 2 (v - u) / (BD) cancels where v ~ u: an absolute floor of 1e-9 covers fp32's rounding of
  // v - u (~3e-7 x 2 / 3500 = 2e-10); the typical gradient is ~1e-3.
  EXPECT_TRUE(test::all_close(grad.data(), grad64.data(), grad.size(), 1e-9, 1e-6));
  const float loss2 = flow_mse(draws, B, D, x1.data(), v.data(), grad2.data(), 2);
  EXPECT_EQ(loss, loss2);
  EXPECT_EQ(grad, grad2);
  EXPECT_EQ(flow_mse(draws, B, D, x1.data(), v.data(), nullptr), loss);  // the loss alone
  draws.step = 13;                                                       // another step, other draws
  EXPECT_NE(flow_mse(draws, B, D, x1.data(), v.data(), nullptr), loss);
}

TEST(FlowOps, RefusedWithTheReason) {
  const int B = 4, D = 2;
  std::vector<float> x1(B * D, 0.5f), xt(B * D), t(B), v(B * D);
  std::vector<int32_t> labels = {0, 1, 2, 3}, out(B);
  StepDraws draws;
  EXPECT_THAT(error_of([&] { prepare_flow(draws, 0, D, x1.data(), nullptr, xt.data(), t.data(), nullptr); }),
              HasSubstr("prepare_flow: the batch must have [1, 2^31 - 1] rows, got 0"));
  EXPECT_THAT(error_of([&] { flow_mse(draws, B, 0, x1.data(), v.data(), nullptr); }),
              HasSubstr("flow_mse: D must be in [1, 65536], got 0"));
  EXPECT_THAT(
      error_of([&] { prepare_flow(draws, B, D, x1.data(), labels.data(), xt.data(), t.data(), out.data()); }),
      HasSubstr("labels given, but num_classes is 0"));
  draws.num_classes = 2;
  EXPECT_THAT(
      error_of([&] { prepare_flow(draws, B, D, x1.data(), labels.data(), xt.data(), t.data(), out.data()); }),
      HasSubstr("label 3 at row 3 is outside [0, 2]"));
  EXPECT_THAT(
      error_of([&] { prepare_flow(draws, B, D, x1.data(), labels.data(), xt.data(), t.data(), nullptr); }),
      HasSubstr("needs labels_out"));
  draws.num_classes = 0;
  x1[5] = NAN;
  EXPECT_THAT(error_of([&] { prepare_flow(draws, B, D, x1.data(), nullptr, xt.data(), t.data(), nullptr); }),
              HasSubstr("x1 at row 2, column 1 is not finite"));
  draws.path.sigma_min = 1.0f;
  EXPECT_THAT(error_of([&] { flow_mse(draws, B, D, x1.data(), v.data(), nullptr); }),
              HasSubstr("sigma_min must be in [0, 1), got 1"));
  draws.path.sigma_min = 0.0f;
  draws.label_dropout = 2.0f;
  EXPECT_THAT(error_of([&] { flow_mse(draws, B, D, x1.data(), v.data(), nullptr); }),
              HasSubstr("label_dropout must be in [0, 1], got 2"));
}

TEST(TrainBatch, LearnsAndRepeatsAndMixesWithOwnSteps) {
  const Dataset data = make_toy("moons", 4000, 3);
  const Model model(model_config(0), 9);
  Dataset unlabelled = data;
  unlabelled.labels.clear();
  unlabelled.num_classes = 0;
  const TrainConfig tc = train_config();
  Trainer a(model, tc, test::on_cpu(1)), b(model, tc);
  float first = 0.0f, last = 0.0f;
  for (int k = 0; k < 200; ++k) {
    const float la = a.step(batch_of(unlabelled, k, tc.batch_size));
    const float lb = b.step(batch_of(unlabelled, k, tc.batch_size));
    ASSERT_EQ(la, lb) << "step " << k;  // same batches, same seed: the same bits
    if (k < 10) first += la;
    if (k >= 190) last += la;
  }
  EXPECT_LT(last, 0.7f * first);  // it learns
  EXPECT_EQ(a.state().params, b.state().params);
  // A trainer with a dataset takes both kinds of step.
  Trainer mixed(model, unlabelled, tc, test::on_cpu(1));
  mixed.step();
  mixed.step(batch_of(unlabelled, 0, tc.batch_size));
  mixed.run(2);
  EXPECT_EQ(mixed.step_count(), 4u);
}

TEST(TrainBatch, RefusedWithTheReason) {
  const Dataset data = make_toy("moons", 1000, 3);
  const TrainConfig tc = train_config();
  Trainer none(Model(model_config(0), 1), tc, test::on_cpu(1));
  EXPECT_THAT(error_of([&] { none.step(); }),
              HasSubstr("built without one: pass your batches to step(batch)"));
  EXPECT_THAT(error_of([&] { none.run(3); }), HasSubstr("run() draws from a dataset"));
  EXPECT_THAT(error_of([&] { none.fit(3); }), HasSubstr("fit() draws from a dataset"));
  DataBatch b = batch_of(data, 0, tc.batch_size);
  b.labels = nullptr;
  b.size = 64;
  EXPECT_THAT(error_of([&] { none.step(b); }),
              HasSubstr("the batch has 64 rows; the config's batch_size is 128"));
  b.size = tc.batch_size;
  std::vector<float> x(data.x.begin(), data.x.begin() + 2 * tc.batch_size);
  x[7] = std::nanf("");
  b.x1 = x.data();
  EXPECT_THAT(error_of([&] { none.step(b); }), HasSubstr("x1 at row 3, column 1 is not finite"));
  Trainer cond(Model(model_config(2), 1), tc, test::on_cpu(1));
  DataBatch c = batch_of(data, 0, tc.batch_size);
  c.labels = nullptr;
  EXPECT_THAT(error_of([&] { cond.step(c); }), HasSubstr("labels are required"));
  std::vector<int32_t> labels(tc.batch_size, 0);
  labels[5] = 2;
  c.labels = labels.data();
  EXPECT_THAT(error_of([&] { cond.step(c); }), HasSubstr("label 2 at row 5 is outside [0, 2)"));
  EXPECT_EQ(none.step_count(), 0u);
  EXPECT_EQ(cond.step_count(), 0u);
}

// The in-memory dataset as a DataSource trains exactly as the trainer's own draws do.
TEST(DataSource, DatasetSourceTrainsAsTheTrainersOwnBatches) {
  for (int classes : {0, 2}) {
    Dataset data = make_toy("moons", 3000, 4);
    if (classes == 0) {
      data.labels.clear();
      data.num_classes = 0;
    }
    const Model model(model_config(classes), 12);
    const TrainConfig tc = train_config();
    Trainer own(model, data, tc, test::on_cpu(1)), pulled(model, tc);
    DatasetSource source(data, tc.seed);
    std::vector<float> losses;
    own.fit(
        7, [&](const FitProgress& p) { losses.push_back(p.loss); }, 1);
    std::vector<float> pulled_losses;
    pulled.fit(
        source, 7, [&](const FitProgress& p) { pulled_losses.push_back(p.loss); }, 1);
    EXPECT_EQ(losses, pulled_losses) << classes << " classes";
    EXPECT_EQ(own.state().params, pulled.state().params);
  }
}

// A source of one's own: a generator, with its errors checked against the model.
class Ring final : public DataSource {
 public:
  int dim() const override { return 2; }
  void next_batch(uint64_t step, int batch_size, float* x1, int32_t*) override {
    for (int i = 0; i < batch_size; ++i) {
      const float a = 0.37f * static_cast<float>(i) + static_cast<float>(step);
      x1[2 * i] = 3.0f * std::cos(a);
      x1[2 * i + 1] = 3.0f * std::sin(a);
    }
  }
};

TEST(DataSource, AGeneratorTrains) {
  const Model model(model_config(0), 13);
  const TrainConfig tc = train_config();
  Trainer trainer(model, tc, test::on_cpu(1));
  Ring ring;
  float first = -1.0f, last = 0.0f;
  trainer.fit(
      ring, 150,
      [&](const FitProgress& p) {
        if (first < 0) first = p.loss;
        last = p.loss;
      },
      10);
  EXPECT_EQ(trainer.step_count(), 150u);
  EXPECT_LT(last, first);
  Trainer conditional(Model(model_config(3), 1), tc, test::on_cpu(1));
  EXPECT_THAT(error_of([&] { conditional.fit(ring, 1); }), HasSubstr("the source has no labels"));
  MlpConfig three = model_config(0);
  three.data_dim = 3;
  Trainer wide(Model(three, 1), tc, test::on_cpu(1));
  EXPECT_THAT(error_of([&] { wide.fit(ring, 1); }), HasSubstr("the source's points have 2 dims"));
}

}  // namespace
