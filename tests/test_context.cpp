// Conditioning on a context vector: the dataset's and the API's checks, the input rows (context,
// null indicator, dropout), the draws' independence from the context, every entry point taking
// one context for all or one per point, checkpoints, and the Gaussian-linear simulation-based
// inference task trained end to end: posterior samples and log-densities against the analytic
// posterior, at D = 2 and D = 10. On the GPU: tests/gpu/ (the FmPrepare, GpuVsCpu, GpuTrainBatch,
// GpuDivergence and GpuLogProb cases with a context).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cufm/cufm.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "test_util.hpp"

namespace {

using namespace cufm;
using test::error_of;
using ::testing::HasSubstr;

Dataset with_context(int64_t n, int dim, int K, uint64_t seed) {
  Dataset d;
  d.name = "ctx";
  d.n = n;
  d.dim = dim;
  d.x.resize(static_cast<size_t>(n) * dim);
  sampler_noise(seed, 0, n, dim, d.x.data());
  d.context_dim = K;
  d.context.resize(static_cast<size_t>(n) * K);
  sampler_noise(seed + 1, 0, n, K, d.context.data());
  return d;
}

MlpConfig ctx_model(int dim, int K, int classes = 0) {
  MlpConfig m;
  m.data_dim = dim;
  m.hidden = {32, 32};
  m.context_dim = K;
  m.num_classes = classes;
  return m;
}

TEST(Context, InputWidthAndRowLayout) {
  MlpConfig m = ctx_model(3, 4, 2);
  m.time_features = 4;
  EXPECT_EQ(m.input_dim(), 3 + 4 + (4 + 1) + (2 + 1));
  const float x[3] = {1, 2, 3}, c[4] = {0.5f, -0.5f, 2.0f, 7.0f};
  std::vector<float> row(m.input_dim()), null_row(m.input_dim());
  cpu::write_input_row(m, x, 0.25f, 1, c, row.data());
  cpu::write_input_row(m, x, 0.25f, 2, nullptr, null_row.data());
  // [x | 4 time features | c | indicator 0 | one-hot of class 1]
  for (int k = 0; k < 4; ++k) EXPECT_EQ(row[7 + k], c[k]);
  EXPECT_EQ(row[11], 0.0f);
  EXPECT_EQ(row[12], 0.0f);
  EXPECT_EQ(row[13], 1.0f);
  EXPECT_EQ(row[14], 0.0f);
  // The null context: zeros and an indicator of 1; the null class's one-hot.
  for (int k = 0; k < 4; ++k) EXPECT_EQ(null_row[7 + k], 0.0f);
  EXPECT_EQ(null_row[11], 1.0f);
  EXPECT_EQ(null_row[14], 1.0f);
}

TEST(Context, DatasetAndTrainerRefuseMismatches) {
  Dataset d = with_context(10, 2, 3, 1);
  EXPECT_NO_THROW(d.validate());
  Dataset short_ctx = d;
  short_ctx.context.pop_back();
  EXPECT_THAT(error_of([&] { short_ctx.validate(); }), HasSubstr("the context holds 29 floats"));
  Dataset nan_ctx = d;
  nan_ctx.context[7] = NAN;
  EXPECT_THAT(error_of([&] { nan_ctx.validate(); }), HasSubstr("the context at (row 2, col 1)"));
  TrainConfig tc;
  tc.batch_size = 8;
  EXPECT_THAT(error_of([&] { Trainer(Model(ctx_model(2, 0), 0), d, tc, test::on_cpu()); }),
              HasSubstr("the data carries a context of 3 dims but the model has none"));
  EXPECT_THAT(error_of([&] { Trainer(Model(ctx_model(2, 5), 0), d, tc, test::on_cpu()); }),
              HasSubstr("the model's context_dim is 5 but the data's context has 3 dims"));
  Dataset none = d;
  none.context_dim = 0;
  none.context.clear();
  EXPECT_THAT(error_of([&] { Trainer(Model(ctx_model(2, 3), 0), none, tc, test::on_cpu()); }),
              HasSubstr("the model's context_dim is 3 but the data's context has 0 dims"));
  tc.context_dropout = 1.5f;
  EXPECT_THAT(error_of([&] { tc.validate(); }), HasSubstr("context_dropout must be in [0, 1]"));
  // step(batch): the context is required by a model with one, refused by one without.
  tc.context_dropout = 0.0f;
  Trainer t(Model(ctx_model(2, 3), 0), tc, test::on_cpu());
  DataBatch b;
  b.size = 8;
  b.x1 = d.x.data();
  EXPECT_THAT(error_of([&] { t.step(b); }), HasSubstr("context is required"));
  std::vector<float> bad(d.context.begin(), d.context.begin() + 24);
  bad[5] = INFINITY;
  b.context = bad.data();
  EXPECT_THAT(error_of([&] { t.step(b); }), HasSubstr("the context at row 1, column 2 is not finite"));
  Trainer plain(Model(ctx_model(2, 0), 0), tc, test::on_cpu());
  b.context = d.context.data();
  EXPECT_THAT(error_of([&] { plain.step(b); }), HasSubstr("the model has none"));
}

TEST(Context, LoadNpyDatasetReadsTheContextFile) {
  const std::string dir = ::testing::TempDir();
  const Dataset d = with_context(6, 2, 3, 4);
  write_npy(dir + "/ctx_x.npy", d.x.data(), {6, 2});
  write_npy(dir + "/ctx_c.npy", d.context.data(), {6, 3});
  write_npy(dir + "/ctx_bad.npy", d.context.data(), {3, 6});
  const Dataset got = load_npy_dataset(dir + "/ctx_x.npy", "", 0, dir + "/ctx_c.npy");
  EXPECT_EQ(got.context_dim, 3);
  EXPECT_EQ(got.context, d.context);
  EXPECT_THAT(error_of([&] { load_npy_dataset(dir + "/ctx_x.npy", "", 0, dir + "/ctx_bad.npy"); }),
              HasSubstr("must have shape (6, K)"));
}

// fm_prepare writes the drawn data point's context and an indicator of 0, or, where context dropout
// draws, zeros and 1, at about the requested rate; t, eps and the labels are the draws of a model
// without a context, bit for bit.
TEST(Context, PrepareWritesTheContextAndDropsItAtItsRate) {
  const int D = 3, K = 4, B = 4000;
  const MlpConfig m = ctx_model(D, K);
  MlpConfig plain = ctx_model(D, 0);
  Dataset d = with_context(500, D, K, 9);
  TrainConfig tc;
  tc.batch_size = B;
  tc.seed = 77;
  tc.context_dropout = 0.3f;
  cpu::PreparedBatch with, without;
  cpu::fm_prepare(m, tc, d, 5, with);
  Dataset no_ctx = d;
  no_ctx.context_dim = 0;
  no_ctx.context.clear();
  cpu::fm_prepare(plain, tc, no_ctx, 5, without);
  EXPECT_EQ(with.t, without.t);
  EXPECT_EQ(with.index, without.index);
  const int in = m.input_dim(), in0 = plain.input_dim();
  int dropped = 0;
  for (int i = 0; i < B; ++i) {
    const float* row = with.input.data() + static_cast<size_t>(i) * in;
    const float* row0 = without.input.data() + static_cast<size_t>(i) * in0;
    ASSERT_TRUE(std::equal(row, row + in0, row0)) << "row " << i;  // x_t and t
    const float indicator = row[in0 + K];
    ASSERT_TRUE(indicator == 0.0f || indicator == 1.0f);
    const float* want = d.context.data() + static_cast<size_t>(with.index[i]) * K;
    for (int k = 0; k < K; ++k) ASSERT_EQ(row[in0 + k], indicator == 1.0f ? 0.0f : want[k]) << "row " << i;
    dropped += indicator == 1.0f;
  }
  // Binomial(4000, 0.3): sd 29.
  EXPECT_NEAR(dropped, 0.3 * B, 150);
  // The draws Trainer::step(batch) makes for its rows, and prepare_flow's, are the same drops.
  StepDraws sd;
  sd.seed = 77;
  sd.step = 5;
  sd.context_dropout = 0.3f;
  std::vector<float> x_t(static_cast<size_t>(B) * D), t(B);
  std::vector<uint8_t> drop(B);
  std::vector<float> x1(static_cast<size_t>(B) * D, 0.5f);
  prepare_flow(sd, B, D, x1.data(), nullptr, x_t.data(), t.data(), nullptr, nullptr, drop.data());
  int dropped_given = 0;
  for (uint8_t v : drop) dropped_given += v;
  EXPECT_EQ(dropped_given, dropped);  // the same (seed, step, row) counters
}

// fit(DatasetSource) trains as fit() does, bit for bit, with a context and context dropout.
TEST(Context, DataSourceFitEqualsFit) {
  const Dataset d = with_context(3000, 2, 5, 3);
  TrainConfig tc;
  tc.batch_size = 128;
  tc.seed = 8;
  tc.context_dropout = 0.2f;
  const Model init(ctx_model(2, 5), 1);
  Trainer a(init, d, tc, test::on_cpu()), b(init, tc, test::on_cpu());
  a.fit(6);
  DatasetSource src(d, tc.seed);
  b.fit(src, 6);
  EXPECT_EQ(a.state().params, b.state().params);
  EXPECT_EQ(a.loss(), b.loss());
}

TEST(Context, CheckpointKeepsTheContextAndItsDropout) {
  const std::string path = ::testing::TempDir() + "/ctx.safetensors";
  Checkpoint c;
  c.model = ctx_model(2, 7);
  c.train.context_dropout = 0.15f;
  c.state.params = Model(c.model, 2).params();
  c.state.adam_m.assign(c.state.params.size(), 0.0f);
  c.state.adam_v.assign(c.state.params.size(), 0.0f);
  c.dataset = "test";
  save_checkpoint(path, c);
  const Checkpoint r = load_checkpoint(path);
  EXPECT_EQ(r.model, c.model);
  EXPECT_EQ(r.model.context_dim, 7);
  EXPECT_EQ(r.train.context_dropout, 0.15f);
}

// One context row for all samples equals that row repeated per sample; the null context equals
// none; guidance with a context alone; the checks name the problem.
TEST(Context, SamplingTakesOneOrOnePerSample) {
  const MlpConfig m = ctx_model(2, 3);
  const Model model(m, 4);
  SampleConfig sc;
  sc.count = 50;
  sc.steps = 6;
  sc.device = Device::CPU;
  sc.context = {0.3f, -1.0f, 2.0f};
  const SampleResult one = sample(model, sc);
  std::vector<float> rows;
  for (int i = 0; i < 50; ++i) rows.insert(rows.end(), sc.context.begin(), sc.context.end());
  SampleConfig per = sc;
  per.context = rows;
  EXPECT_EQ(sample(model, per).x, one.x);
  SampleConfig none = sc;
  none.context.clear();
  EXPECT_NE(sample(model, none).x, one.x);
  // The guided field: null + w (cond - null); w = 1 is the conditional field.
  SampleConfig g = sc;
  g.guidance = 1.0f;
  const SampleResult guided = sample(model, g);
  for (size_t j = 0; j < one.x.size(); ++j) ASSERT_NEAR(guided.x[j], one.x[j], 1e-5f);
  SampleConfig bad = sc;
  bad.context = {1.0f, 2.0f};
  EXPECT_THAT(error_of([&] { sample(model, bad); }), HasSubstr("the context must hold 3 floats"));
  bad.context = {1.0f, NAN, 2.0f};
  EXPECT_THAT(error_of([&] { sample(model, bad); }), HasSubstr("column 1 is not finite"));
  SampleConfig to_plain = sc;
  EXPECT_THAT(error_of([&] { sample(Model(ctx_model(2, 0), 0), to_plain); }),
              HasSubstr("a context given, but the model has none"));
  SampleConfig guide_nothing = sc;
  guide_nothing.context.clear();
  guide_nothing.guidance = 2.0f;
  EXPECT_THAT(error_of([&] { sample(model, guide_nothing); }), HasSubstr("a condition to guide towards"));
  // The field and Model::forward see the same context.
  VelocityField field(model, FieldOptions{std::nullopt, Device::CPU});
  std::vector<float> v(one.x.size()), v2(one.x.size()), t(50, 0.4f);
  field.evaluate(0.4f, one.x.data(), nullptr, rows.data(), 50, v.data());
  model.forward(one.x.data(), t.data(), nullptr, rows.data(), 50, v2.data());
  EXPECT_EQ(v, v2);
}

// Integrating back to noise and forward again with a per-point context returns to the start, and
// log_prob's noise is the backward integration's end.
TEST(Context, LogProbRoundTripsWithAContext) {
  const MlpConfig m = ctx_model(3, 2);
  const Model model(m, 6);
  const int n = 40;
  std::vector<float> x(static_cast<size_t>(n) * 3), ctx(static_cast<size_t>(n) * 2);
  sampler_noise(1, 0, n, 3, x.data());
  sampler_noise(2, 0, n, 2, ctx.data());
  LogProbConfig lc;
  lc.context = ctx;
  lc.device = Device::CPU;
  const LogProbResult r = log_prob(model, x, lc);
  SampleConfig sc;
  sc.count = n;
  sc.solver = Solver::Dopri5;
  sc.context = ctx;
  sc.with_log_prob = true;
  sc.device = Device::CPU;
  const SampleResult fwd = integrate(model, r.noise, sc);
  EXPECT_TRUE(test::all_close(fwd.x.data(), x.data(), x.size(), 2e-4, 1e-3));
  EXPECT_TRUE(test::all_close(fwd.log_prob.data(), r.log_prob.data(), n, 2e-3, 1e-3));
  LogProbConfig bad = lc;
  bad.context.resize(5);
  EXPECT_THAT(error_of([&] { log_prob(model, x, bad); }), HasSubstr("one row per point"));
}

// ---- the Gaussian-linear simulation-based inference task ------------------------------------
// theta ~ N(0, I_D), x = theta + s * noise: the posterior is N(x / (1 + s^2), s^2 / (1 + s^2) I).
// A model of theta conditioned on x, trained on simulated pairs, must give posterior samples with
// the analytic mean and covariance, and log_prob of analytic posterior draws equal to the analytic
// log-density, for held-out observations.
struct SbiCase {
  int D;
  int steps;
  double mean_tol, var_rtol, cov_tol, lp_mae;  // the stated bounds
};

class GaussianLinearSbi : public ::testing::TestWithParam<SbiCase> {};

TEST_P(GaussianLinearSbi, PosteriorMatchesTheAnalyticOne) {
  const SbiCase c = GetParam();
  const int D = c.D;
  const float s = 0.5f;
  const double shrink = 1.0 / (1.0 + s * s), post_var = s * s / (1.0 + s * s);
  const int64_t n = 100000;
  Dataset data;
  data.name = "gaussian-linear";
  data.n = n;
  data.dim = D;
  data.x.resize(static_cast<size_t>(n) * D);
  sampler_noise(101, 0, n, D, data.x.data());  // theta
  data.context_dim = D;
  data.context.resize(data.x.size());
  sampler_noise(102, 0, n, D, data.context.data());
  for (size_t j = 0; j < data.x.size(); ++j) data.context[j] = data.x[j] + s * data.context[j];  // x
  MlpConfig m;
  m.data_dim = D;
  m.context_dim = D;
  m.hidden = {128, 128, 128};
  m.time_features = 8;
  TrainConfig tc;
  tc.batch_size = 512;
  tc.seed = 5;
  tc.optim.lr = 2e-3f;
  tc.optim.lr_schedule = LrSchedule::Cosine;
  tc.optim.decay_steps = static_cast<uint64_t>(c.steps);
  tc.optim.min_lr = 1e-4f;
  // One thread: ctest runs two tests at a time on two cores, and OpenMP's spinning waits would make
  // a second thread here cost ten times its work (issue 14's contention problem, still open).
  Trainer trainer(Model(m, 3), data, tc, test::on_cpu(1));
  trainer.run(static_cast<uint64_t>(c.steps));
  const Model model = trainer.model();

  // Held-out observations from the prior predictive.
  const int n_obs = 4, per = 4000;
  std::vector<float> theta_obs(static_cast<size_t>(n_obs) * D), x_obs(theta_obs.size());
  sampler_noise(201, 0, n_obs, D, theta_obs.data());
  sampler_noise(202, 0, n_obs, D, x_obs.data());
  for (size_t j = 0; j < x_obs.size(); ++j) x_obs[j] = theta_obs[j] + s * x_obs[j];
  double worst_mean = 0, worst_var = 0, worst_cov = 0, worst_lp = 0;
  for (int o = 0; o < n_obs; ++o) {
    const std::vector<float> ctx(x_obs.begin() + o * D, x_obs.begin() + (o + 1) * D);
    SampleConfig sc;
    sc.count = per;
    sc.solver = Solver::Midpoint;
    sc.steps = 32;
    sc.context = ctx;
    sc.seed = 300 + o;
    sc.device = Device::CPU;
    sc.threads = 1;
    const SampleResult r = sample(model, sc);
    std::vector<double> mean(D, 0.0), cov(static_cast<size_t>(D) * D, 0.0);
    for (int i = 0; i < per; ++i)
      for (int d = 0; d < D; ++d) mean[d] += r.x[static_cast<size_t>(i) * D + d] / per;
    for (int i = 0; i < per; ++i)
      for (int a = 0; a < D; ++a)
        for (int b = 0; b < D; ++b)
          cov[a * D + b] += (r.x[static_cast<size_t>(i) * D + a] - mean[a]) *
                            (r.x[static_cast<size_t>(i) * D + b] - mean[b]) / (per - 1);
    for (int a = 0; a < D; ++a) {
      worst_mean = std::max(worst_mean, std::abs(mean[a] - shrink * ctx[a]));
      worst_var = std::max(worst_var, std::abs(cov[a * D + a] / post_var - 1.0));
      for (int b = 0; b < D; ++b) {
        if (a != b) worst_cov = std::max(worst_cov, std::abs(cov[a * D + b]));
      }
    }
    // log_prob of analytic posterior draws against the analytic log-density.
    const int n_lp = 500;
    std::vector<float> z(static_cast<size_t>(n_lp) * D), theta(z.size());
    sampler_noise(400 + o, 0, n_lp, D, z.data());
    std::vector<double> want(n_lp);
    for (int i = 0; i < n_lp; ++i) {
      double sq = 0;
      for (int d = 0; d < D; ++d) {
        const size_t j = static_cast<size_t>(i) * D + d;
        theta[j] = static_cast<float>(shrink * ctx[d] + std::sqrt(post_var) * z[j]);
        sq += static_cast<double>(z[j]) * z[j];
      }
      want[i] = -0.5 * sq - 0.5 * D * std::log(2 * M_PI * post_var);
    }
    LogProbConfig lc;
    lc.solver = Solver::Dopri5;
    lc.context = ctx;
    lc.device = Device::CPU;
    lc.threads = 1;
    const LogProbResult lp = log_prob(model, theta, lc);
    double mae = 0;
    for (int i = 0; i < n_lp; ++i) mae += std::abs(lp.log_prob[i] - want[i]) / n_lp;
    worst_lp = std::max(worst_lp, mae);
  }
  std::printf("[ D = %d ] mean error %.4f, variance rel. error %.4f, covariance %.4f, log p MAE %.4f\n", D,
              worst_mean, worst_var, worst_cov, worst_lp);
  EXPECT_LT(worst_mean, c.mean_tol);
  EXPECT_LT(worst_var, c.var_rtol);
  EXPECT_LT(worst_cov, c.cov_tol);
  EXPECT_LT(worst_lp, c.lp_mae);
}

INSTANTIATE_TEST_SUITE_P(Dims, GaussianLinearSbi,
                         // Measured on the project's machine (Intel Xeon, OpenBLAS): D = 2: mean error
                         // 0.015, variance 5.4%, covariance 0.006, log p MAE 0.046; D = 10: 0.067, 8.2%,
                         // 0.018, 0.23. The bounds: the mean within 0.11 (D = 2) and 0.2 (D = 10)
                         // posterior standard deviations (0.447), the variances within 12% and 15%.
                         ::testing::Values(SbiCase{2, 2000, 0.05, 0.12, 0.03, 0.12},
                                           SbiCase{10, 6000, 0.09, 0.15, 0.05, 0.4}),
                         [](const ::testing::TestParamInfo<SbiCase>& pi) {
                           return "D" + std::to_string(pi.param.D);
                         });

}  // namespace
