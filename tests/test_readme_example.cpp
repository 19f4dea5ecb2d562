// The README's C++ example, compiled and run here, and checked to be the README's text verbatim.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

// The README's text, its include order too.
// clang-format off
// BEGIN README EXAMPLE
#include <cufm/cufm.hpp>

#include <cstdio>

// Trains the flow_matching checkerboard model, samples it and saves a checkpoint.
void train_checkerboard(uint64_t steps, const std::string& checkpoint_path) {
  const cufm::Dataset data = cufm::make_toy("checkerboard", 100000, /*seed=*/0);
  cufm::MlpConfig mlp;    // 3-512-512-512-512-2 with SiLU and raw t
  cufm::TrainConfig cfg;  // batch 4096, Adam lr 1e-3, the best device present
  cufm::Trainer trainer(cufm::Model(mlp, cfg.seed), data, cfg);
  trainer.fit(steps, [](const cufm::FitProgress& p) {
    std::printf("step %llu loss %.4f\n", static_cast<unsigned long long>(p.step), p.loss);
  });

  cufm::SampleConfig sampling;  // 1000 samples, midpoint, 20 steps
  const cufm::SampleResult samples = cufm::sample(trainer.model(), sampling);
  std::printf("sliced W2 to the data: %.3f\n",
              cufm::sliced_wasserstein2(samples.x.data(), samples.count, data.x.data(), data.n, 2));
  cufm::save_checkpoint(checkpoint_path, {mlp, cfg, trainer.state(), "checkerboard"});
}
// END README EXAMPLE
// clang-format on

// BEGIN README EXAMPLE 2
// From data back to noise, the field in a solver of one's own, the caller's batches, and the loss
// and gradient on the caller's draws.
void open_api(const cufm::Model& model, const std::vector<float>& points /* [n, 2] */) {
  const int64_t n = static_cast<int64_t>(points.size()) / 2;
  cufm::SampleConfig back;  // midpoint, 20 steps, the best device present
  back.count = n;
  back.t0 = 1.0f;  // from the data (t = 1) back to the noise (t = 0)
  back.t1 = 0.0f;
  const cufm::SampleResult noise = cufm::integrate(model, points, back);

  cufm::VelocityField field(model);  // v(x, t, class) on the CPU or the GPU, its plan kept
  std::vector<float> x = noise.x, v(x.size());
  for (int s = 0; s < 100; ++s) {  // Euler, by hand, forwards again
    field.evaluate(s / 100.0f, x.data(), /*labels=*/nullptr, n, v.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += 0.01f * v[i];
  }

  cufm::TrainConfig cfg;
  cfg.batch_size = static_cast<int>(n);
  cufm::Trainer trainer(model, cfg);  // no dataset: every step takes the caller's batch
  for (int s = 0; s < 10; ++s) trainer.step(cufm::DataBatch{n, points.data(), nullptr});

  const std::vector<float> t(n, 0.5f), eps(points.size(), 0.0f);  // updates nothing
  const cufm::LossGrad lg =
      cufm::loss_and_grad(trainer.model(), cufm::FlowBatch{n, points.data(), t.data(), eps.data(), nullptr});
  std::printf("loss %.4f over %zu parameters\n", lg.loss, lg.grad.size());
}
// END README EXAMPLE 2

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(ReadmeExample, RunsAndWritesACheckpoint) {
  const std::string path =
      (std::filesystem::temp_directory_path() / "cufm_readme_example.safetensors").string();
  train_checkerboard(2, path);
  const cufm::Checkpoint c = cufm::load_checkpoint(path);
  EXPECT_EQ(c.state.step, 2u);
  std::filesystem::remove(path);
}

TEST(ReadmeExample, OpenApiRuns) {
  cufm::MlpConfig m;
  m.hidden = {32, 32};
  const cufm::Model model(m, 1);
  const cufm::Dataset data = cufm::make_toy("moons", 64, 2);
  open_api(model, data.x);
}

TEST(ReadmeExample, IsTheReadmeText) {
  const std::string me = read_file(__FILE__);
  const std::string readme = read_file(std::string(CUFM_SOURCE_DIR) + "/README.md");
  for (const std::string tag : {"", " 2"}) {
    const std::string begin = "// BEGIN README EXAMPLE" + tag + "\n",
                      end = "// END README EXAMPLE" + tag + "\n";
    const size_t b = me.find(begin), e = me.find(end);
    ASSERT_NE(b, std::string::npos);
    ASSERT_NE(e, std::string::npos);
    const std::string example = me.substr(b + begin.size(), e - b - begin.size());
    EXPECT_NE(readme.find(example), std::string::npos)
        << "README.md does not contain example" << tag << " of " << __FILE__;
  }
}

}  // namespace
