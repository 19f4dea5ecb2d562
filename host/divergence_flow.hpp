// The flow with its divergence (internal): integrates the state [x (n x D) | a (n)] with
// dx/dt = v(x, t) and da/dt = div v(x, t) from t0 to t1 on the CPU or the GPU, so that a(t1) is the
// divergence's integral along each path. cufm::log_prob (t = 1 back to 0) and sample(...,
// with_log_prob) (0 to 1) both run it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cufm/model.hpp"
#include "cufm/sampler.hpp"

namespace cufm::detail {

struct DivergenceFlow {
  Solver solver = Solver::Dopri5;
  int steps = 20;
  float atol = 1e-5f, rtol = 1e-5f;
  int max_steps = 100000;
  float t0 = 1.0f, t1 = 0.0f;
  std::vector<int32_t> labels;  // empty or one per point
  std::vector<float> context;   // empty (the null context) or one row of context_dim per point
  std::optional<float> guidance;
  Divergence divergence = Divergence::Exact;  // resolved: Exact or Hutchinson
  int probes = 1;
  uint64_t seed = 0;
  Device device = Device::CPU;  // resolved
  int threads = 0;
  int dim = 0;  // the model's data_dim (integrate_with_divergence sets it)
};

struct DivergenceFlowResult {
  std::vector<float> x;         // [n, D] at t1
  std::vector<float> integral;  // [n] the integral of div v from t0 to t1
  std::vector<float> times;     // with a trajectory
  std::vector<float> trajectory;
  OdeResult counts;  // evaluations and steps (its x is empty)
  std::string mlp;   // how it ran ("cuda fused divergence", ...); empty: "<device> divergence"
};

// What Divergence::Auto means for D = data_dim: the exact trace up to D = 32, Hutchinson above.
Divergence resolve_divergence(Divergence d, int data_dim);

// A config's labels (none, one for all, or one per point) as one per point, or none.
std::vector<int32_t> labels_per_point(const std::vector<int32_t>& labels, int64_t n);
// A config's context (none, one row of K for all, or one per point) as one row per point, or none.
std::vector<float> context_per_point(const std::vector<float>& context, int K, int64_t n);

// The rules sampling, log_prob and the field share. A context argument: empty, K values (one for
// all n points) or n * K values, all finite, and only for a model with a context; `who` and
// `per` name the call and its points in the message.
void check_context_arg(const MlpConfig& model, const std::vector<float>& context, int64_t n, const char* who,
                       const char* per);
// Guidance: a finite scale, a conditional model (classes or a context) and a condition to guide
// towards (labels or a context).
void check_guidance_arg(const MlpConfig& model, const std::optional<float>& guidance, bool has_labels,
                        bool has_context);

DivergenceFlowResult integrate_with_divergence(const Model& model, const float* x0, int64_t n,
                                               const DivergenceFlow& flow, bool keep_trajectory);

// Host bytes integrate_with_divergence needs for n points (the memory check's estimate).
uint64_t divergence_flow_bytes(const MlpConfig& model, int64_t n, const DivergenceFlow& flow,
                               bool keep_trajectory);

}  // namespace cufm::detail
