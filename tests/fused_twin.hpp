// The fused sampler's CPU twin run on a sampling config (test helper): the seed's noise, the
// per-point labels and contexts laid out as the samplers lay them out, the tile given.
#pragma once

#include <limits>
#include <vector>

#include "cufm/sampler.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "kernels/fused_sampler.hpp"
#include "test_util.hpp"

namespace cufm::test {

// A sampling case for the fused sampler's tests: the model's shape and the config's conditions.
struct FusedCase {
  const char* name;
  std::vector<int> hidden;
  Activation activation;
  int time_features, classes, context;
  Solver solver;
  int steps;
  bool guided;
};

inline MlpConfig fused_case_model(const FusedCase& k) {
  MlpConfig m;
  m.data_dim = 3;
  m.hidden = k.hidden;
  m.activation = k.activation;
  m.time_features = k.time_features;
  m.num_classes = k.classes;
  m.context_dim = k.context;
  return m;
}

// count points on `device`: per-point labels (i * stride mod classes), per-point random contexts,
// guidance w when guided.
inline SampleConfig fused_case_config(const FusedCase& k, int64_t count, Device device, uint64_t seed,
                                      int label_stride, float w) {
  SampleConfig c;
  c.count = count;
  c.solver = k.solver;
  c.steps = k.steps;
  c.device = device;
  c.seed = seed;
  if (k.classes > 0) {
    c.labels.resize(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) c.labels[i] = static_cast<int32_t>((i * label_stride) % k.classes);
  }
  if (k.context > 0) c.context = random_floats(static_cast<size_t>(count) * k.context, -1.0f, 1.0f, 5);
  if (k.guided) c.guidance = w;
  return c;
}

struct TwinRun {
  std::vector<float> x, trajectory;
};

inline TwinRun run_fused_twin(const Model& model, const SampleConfig& c, int tile) {
  const MlpConfig& m = model.config();
  TwinRun r;
  r.x.resize(static_cast<size_t>(c.count) * m.data_dim);
  sampler_noise(c.seed, 0, c.count, m.data_dim, r.x.data());
  std::vector<int32_t> labels;
  if (c.labels.size() > 1) labels = c.labels;
  std::vector<float> context;
  if (!c.context.empty()) {
    for (int64_t i = 0; i < c.count; ++i) {
      const size_t row = c.context.size() == static_cast<size_t>(m.context_dim) ? 0 : static_cast<size_t>(i);
      context.insert(context.end(), c.context.begin() + row * m.context_dim,
                     c.context.begin() + (row + 1) * m.context_dim);
    }
  }
  if (c.keep_trajectory) {
    r.trajectory.assign((static_cast<size_t>(c.steps) + 1) * r.x.size(), std::numeric_limits<float>::quiet_NaN());
  }
  cuda::FusedSample p = cuda::fused_sample_of(m, c, model.params().data(), labels.empty() ? nullptr : labels.data(),
                                              context.empty() ? nullptr : context.data(), r.x.data(),
                                              r.trajectory.empty() ? nullptr : r.trajectory.data());
  p.tile = tile;
  cpu::fused_sample(p);
  return r;
}

}  // namespace cufm::test
