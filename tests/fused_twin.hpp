// The fused sampler's CPU twin run on a sampling config (test helper): the seed's noise, the
// per-point labels and contexts laid out as the samplers lay them out, the tile given.
#pragma once

#include <limits>
#include <vector>

#include "cufm/sampler.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "host/divergence_flow.hpp"
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

// A case's log-likelihood flow from t = 1 back to 0: the config's per-point labels, contexts and
// guidance; exact, or Hutchinson with 2 probes keyed by seed 6; f.dim set.
inline detail::DivergenceFlow fused_case_flow(const FusedCase& k, const SampleConfig& c, int dim,
                                              bool hutchinson, Device device) {
  detail::DivergenceFlow f;
  f.solver = k.solver;
  f.steps = k.steps;
  f.t0 = 1.0f;
  f.t1 = 0.0f;
  f.labels = c.labels;
  f.context = c.context;
  f.guidance = c.guidance;
  f.divergence = hutchinson ? Divergence::Hutchinson : Divergence::Exact;
  f.probes = 2;
  f.seed = 6;
  f.device = device;
  f.dim = dim;
  return f;
}

// The probes integrate_with_divergence draws for f over n points (empty: exact).
inline std::vector<float> flow_probes(const detail::DivergenceFlow& f, int64_t n) {
  std::vector<float> probes;
  if (f.divergence == Divergence::Hutchinson) {
    probes.resize(static_cast<size_t>(n) * f.probes * f.dim);
    cpu::rademacher_probes(f.seed, 0, n, f.probes, f.dim, probes.data());
  }
  return probes;
}

// The twin integrating x [n, D] with its divergence (log-likelihoods' flow): per-point labels and
// contexts or empty, guidance, P tangents (probes empty: exact, P = D).
struct FlowTwinRun {
  std::vector<float> x, integral, trajectory;
};

inline FlowTwinRun run_fused_flow_twin(const Model& model, std::vector<float> x, Solver solver, int steps,
                                       float t0, float t1, const std::vector<int32_t>& labels,
                                       const std::vector<float>& context, const float* guidance, int P,
                                       const std::vector<float>& probes, bool keep_trajectory, int tile) {
  const MlpConfig& m = model.config();
  FlowTwinRun r;
  const int64_t n = static_cast<int64_t>(x.size()) / m.data_dim;
  r.x = std::move(x);
  r.integral.assign(static_cast<size_t>(n), std::numeric_limits<float>::quiet_NaN());
  if (keep_trajectory) {
    r.trajectory.assign((static_cast<size_t>(steps) + 1) * r.x.size(),
                        std::numeric_limits<float>::quiet_NaN());
  }
  cuda::FusedSample p = cuda::fused_flow_of(
      m, model.params().data(), solver, steps, t0, t1, n, labels.empty() ? nullptr : labels.data(),
      context.empty() ? nullptr : context.data(), guidance, P, probes.empty() ? nullptr : probes.data(),
      r.x.data(), r.integral.data(), r.trajectory.empty() ? nullptr : r.trajectory.data());
  p.tile = tile;
  cpu::fused_sample(p);
  return r;
}

}  // namespace cufm::test
