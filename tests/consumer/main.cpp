// A project outside cuFM that finds the installed package and trains a few steps.
#include <cmath>
#include <cstdio>
#include <cufm/cufm.hpp>

int main() {
  const cufm::Dataset data = cufm::make_toy("moons", 1000, 0);
  cufm::MlpConfig mlp;
  mlp.hidden = {32, 32};
  cufm::TrainConfig cfg;
  cfg.batch_size = 128;
  cufm::RunOptions run;
  run.device = cufm::Device::CPU;
  cufm::Trainer trainer(cufm::Model(mlp, 0), data, cfg, run);
  const float loss = trainer.step();
  std::printf("consumer: cuFM %s (config.hpp: %s, CUDA backend %d), loss %.4f\n", cufm::version().c_str(),
              CUFM_VERSION_STRING, CUFM_HAS_CUDA, loss);
  return std::isfinite(loss) && loss > 0.0f && cufm::version().rfind(CUFM_VERSION_STRING, 0) == 0 ? 0 : 1;
}
