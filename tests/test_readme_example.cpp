// The README's C++ example, compiled and run here, and checked to be the README's text verbatim.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

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

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(ReadmeExample, RunsAndWritesACheckpoint) {
  const std::string path = (std::filesystem::temp_directory_path() / "cufm_readme_example.safetensors").string();
  train_checkerboard(2, path);
  const cufm::Checkpoint c = cufm::load_checkpoint(path);
  EXPECT_EQ(c.state.step, 2u);
  std::filesystem::remove(path);
}

TEST(ReadmeExample, IsTheReadmeText) {
  const std::string me = read_file(__FILE__);
  const std::string begin = "// BEGIN README EXAMPLE\n", end = "// END README EXAMPLE";
  const size_t b = me.find(begin) + begin.size(), e = me.find(end);
  const std::string example = me.substr(b, e - b);
  const std::string readme = read_file(std::string(CUFM_SOURCE_DIR) + "/README.md");
  EXPECT_NE(readme.find(example), std::string::npos) << "README.md does not contain the example of " << __FILE__;
}

}  // namespace
