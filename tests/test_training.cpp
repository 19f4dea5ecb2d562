// Whole training runs on the CPU: learning, guidance, determinism, bit-exact resume, bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "cufm/cufm.hpp"
#include "test_util.hpp"

namespace {

using namespace cufm;

MlpConfig small_model(int classes = 0) {
  MlpConfig m;
  m.data_dim = 2;
  m.hidden = {64, 64, 64};
  m.activation = Activation::SiLU;
  m.time_features = 8;
  m.num_classes = classes;
  return m;
}

TrainConfig small_train() {
  TrainConfig tc;
  tc.batch_size = 256;
  tc.seed = 11;
  tc.optim.lr = 3e-3f;
  return tc;
}

double sw2_to_data(const Model& model, const Dataset& data, int64_t n = 2000) {
  SampleConfig sc;
  sc.count = n;
  sc.solver = Solver::Midpoint;
  sc.steps = 20;
  sc.device = Device::CPU;
  const SampleResult r = sample(model, sc);
  return sliced_wasserstein2(r.x.data(), r.count, data.x.data(), data.n, 2, 128, 1);
}

TEST(Training, LearnsEightGaussians) {
  const Dataset data = make_toy("8gaussians", 20000, 0);
  const Model init(small_model(), 3);
  const double untrained = sw2_to_data(init, data);
  Trainer trainer(init, data, small_train(), test::on_cpu());
  float first = trainer.step();
  trainer.run(599);
  const float last = trainer.loss();
  const double trained = sw2_to_data(trainer.model(), data);
  EXPECT_LT(last, first);
  // The untrained model's samples stay near N(0, I): far from the modes on the circle of radius 2*sqrt(2).
  constexpr double kThreshold = 0.35;
  EXPECT_GT(untrained, kThreshold);
  EXPECT_LT(trained, kThreshold) << "untrained " << untrained;
}

TEST(Training, TwoRunsGiveTheSameBits) {
  const Dataset data = make_toy("moons", 5000, 1);
  const Model init(small_model(), 4);
  Trainer a(init, data, small_train(), test::on_cpu()), b(init, data, small_train(), test::on_cpu());
  a.run(5);
  b.run(5);
  EXPECT_EQ(a.loss(), b.loss());
  EXPECT_EQ(a.state().params, b.state().params);
}

// The layered step (widths above the fused step's 256) through the BLAS: its GEMMs run in fixed
// tiles of C, one thread each, so the bits do not depend on the thread count (OpenBLAS and oneDNN,
// left to split a product themselves, trained different bits on 1 and 2 threads on an AMD EPYC).
// Sampling runs the same GEMMs.
TEST(Training, LayeredStepBitsDoNotDependOnTheThreadCount) {
  const Dataset data = make_toy("moons", 3000, 2);
  MlpConfig m;
  m.hidden = {288, 300};
  m.num_classes = 0;
  const Model init(m, 9);
  TrainConfig tc = small_train();
  tc.batch_size = 600;
  std::vector<float> params[2];
  std::vector<float> samples[2];
  for (int threads = 1; threads <= 2; ++threads) {
    Trainer trainer(init, data, tc, test::on_cpu(threads));
    trainer.run(4);
    params[threads - 1] = trainer.state().params;
    SampleConfig sc;
    sc.count = 700;
    sc.steps = 2;
    sc.device = Device::CPU;
    sc.threads = threads;
    samples[threads - 1] = sample(trainer.model(), sc).x;
  }
  EXPECT_EQ(params[0], params[1]);
  EXPECT_EQ(samples[0], samples[1]);
  EXPECT_NE(params[0], init.params());
}

TEST(Training, ResumeFromCheckpointIsBitExact) {
  const Dataset data = make_toy("checkerboard", 5000, 2);
  TrainConfig tc = small_train();
  tc.optim.kind = Optimizer::AdamW;
  tc.optim.weight_decay = 0.01f;
  tc.optim.ema_decay = 0.99f;
  tc.optim.grad_clip = 1.0f;
  const MlpConfig m = small_model(8);
  const Model init(m, 5);

  Trainer straight(init, data, tc, test::on_cpu());
  straight.run(12);

  Trainer first(init, data, tc, test::on_cpu());
  first.run(5);
  const std::string path = (std::filesystem::temp_directory_path() / "cufm_resume_test.safetensors").string();
  save_checkpoint(path, Checkpoint{m, tc, first.state(), "toy"});
  const Checkpoint ck = load_checkpoint(path);
  Trainer resumed(ck.model, ck.state, data, ck.train, test::on_cpu());
  EXPECT_EQ(resumed.step_count(), 5u);
  resumed.run(7);
  std::filesystem::remove(path);

  const TrainState a = straight.state(), b = resumed.state();
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.params, b.params);
  EXPECT_EQ(a.adam_m, b.adam_m);
  EXPECT_EQ(a.adam_v, b.adam_v);
  EXPECT_EQ(a.ema, b.ema);
  EXPECT_EQ(straight.loss(), resumed.loss());
}

TEST(Guidance, ScaleOneEqualsThePlainConditionalModel) {
  const Dataset data = make_toy("8gaussians", 5000, 3);
  Trainer trainer(Model(small_model(8), 6), data, small_train(), test::on_cpu());
  trainer.run(30);
  const Model model = trainer.model();
  SampleConfig sc;
  sc.count = 500;
  sc.solver = Solver::Heun;
  sc.steps = 10;
  sc.device = Device::CPU;
  sc.labels = {3};
  const SampleResult plain = sample(model, sc);
  sc.guidance = 1.0f;
  const SampleResult guided = sample(model, sc);
  EXPECT_TRUE(test::all_close(guided.x.data(), plain.x.data(), plain.x.size(), 1e-5, 1e-5));
  sc.guidance = 3.0f;
  const SampleResult strong = sample(model, sc);
  double diff = 0;
  for (size_t i = 0; i < plain.x.size(); ++i)
    diff = std::max(diff, static_cast<double>(std::abs(strong.x[i] - plain.x[i])));
  EXPECT_GT(diff, 1e-3);  // a guidance scale that is not 1 changes the samples
}

TEST(Sampling, TrajectoryAndSolversAgreeOnASmoothModel) {
  const Model model(small_model(), 7);
  SampleConfig sc;
  sc.count = 300;
  sc.device = Device::CPU;
  sc.solver = Solver::RK4;
  sc.steps = 40;
  sc.keep_trajectory = true;
  const SampleResult rk4 = sample(model, sc);
  ASSERT_EQ(rk4.times.size(), 41u);
  ASSERT_EQ(rk4.trajectory.size(), 41u * 300 * 2);
  std::vector<float> x0(600);
  sampler_noise(0, 0, 300, 2, x0.data());
  EXPECT_TRUE(test::all_close(rk4.trajectory.data(), x0.data(), 600, 0, 0));
  EXPECT_TRUE(test::all_close(rk4.trajectory.data() + 40 * 600, rk4.x.data(), 600, 0, 0));
  sc.keep_trajectory = false;
  sc.solver = Solver::Dopri5;
  sc.atol = sc.rtol = 1e-6f;
  const SampleResult dp = sample(model, sc);
  EXPECT_TRUE(test::all_close(dp.x.data(), rk4.x.data(), 600, 1e-4, 1e-4));
}

// A kept Sampler gives sample()'s bits call after call, whatever changes between calls; a
// moved-from one says so; release() makes it usable again.
TEST(Sampling, AKeptSamplerMatchesOneShotCalls) {
  const Model a(small_model(3), 8), b(small_model(), 9);
  SampleConfig sc;
  sc.count = 200;
  sc.steps = 5;
  sc.device = Device::CPU;
  sc.labels = {1};
  Sampler sampler;
  const auto check = [&](const Model& m, const SampleConfig& c) {
    const SampleResult kept = sampler.sample(m, c), once = sample(m, c);
    EXPECT_EQ(kept.device, Device::CPU);
    EXPECT_TRUE(test::all_close(kept.x.data(), once.x.data(), once.x.size(), 0, 0));
  };
  check(a, sc);
  sc.seed = 4;
  sc.guidance = 2.0f;
  check(a, sc);
  SampleConfig unc;
  unc.count = 50;
  unc.solver = Solver::Dopri5;
  unc.device = Device::CPU;
  check(b, unc);
  Sampler moved = std::move(sampler);
  try {
    sampler.sample(a, sc);
    ADD_FAILURE() << "a moved-from Sampler sampled";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("moved"), std::string::npos) << e.what();
  }
  sampler.release();
  check(a, sc);
  EXPECT_EQ(moved.sample(b, unc).x, sample(b, unc).x);
}

TEST(BadInput, ClearErrors) {
  const Dataset data = make_toy("moons", 100, 0);
  const auto expect_error = [](auto&& fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  MlpConfig m3 = small_model();
  m3.data_dim = 3;
  expect_error([&] { Trainer(Model(m3, 0), data, small_train(), test::on_cpu()); }, "dims");
  Dataset nan_data = data;
  nan_data.x[7] = NAN;
  expect_error([&] { Trainer(Model(small_model(), 0), nan_data, small_train(), test::on_cpu()); }, "nan");
  Dataset inf_data = data;
  inf_data.x[3] = INFINITY;
  expect_error([&] { Trainer(Model(small_model(), 0), inf_data, small_train(), test::on_cpu()); }, "inf");
  Dataset empty = data;
  empty.n = 0;
  empty.x.clear();
  empty.labels.clear();
  expect_error([&] { Trainer(Model(small_model(), 0), empty, small_train(), test::on_cpu()); }, "empty");
  Dataset bad_labels = data;
  bad_labels.labels[4] = 9;
  expect_error([&] { Trainer(Model(small_model(2), 0), bad_labels, small_train(), test::on_cpu()); },
               "label");
  RunOptions tf32 = test::on_cpu();
  tf32.precision = Precision::TF32;  // bf16 runs on CPUs that have it (test_cpu_bf16)
  expect_error([&] { Trainer(Model(small_model(), 0), data, small_train(), tf32); }, "tf32 needs the CUDA backend");
  TrainConfig bad_lr = small_train();
  bad_lr.optim.lr = -1;
  expect_error([&] { Trainer(Model(small_model(), 0), data, bad_lr, test::on_cpu()); }, "learning rate");
  MlpConfig odd = small_model();
  odd.time_features = 3;
  expect_error([&] { Model(odd, 0); }, "time_features");
  SampleConfig sc;
  sc.labels = {2};
  expect_error([&] { sample(Model(small_model(), 0), sc); }, "unconditional");
  sc.labels = {5};
  expect_error([&] { sample(Model(small_model(2), 0), sc); }, "label 5");
  if (!cuda_built() || cuda_devices().empty()) {
    RunOptions cuda;
    cuda.device = Device::CUDA;
    expect_error([&] { Trainer(Model(small_model(), 0), data, small_train(), cuda); }, "cuda");
  }
}

}  // namespace
