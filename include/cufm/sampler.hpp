// Sampling: integrates dx/dt = v(x, t) from t = 0 (x ~ N(0, I)) to t = 1, with fixed-step
// Euler, midpoint, Heun or RK4, or adaptive Dormand-Prince 5(4), conditioned on classes and/or a
// context vector; optional classifier-free guidance v = v(x, t, null) + w * (v(x, t, c) - v(x, t, null)).
// integrate() runs the same solvers from the caller's points, over any span of [0, 1] in either direction (t1
// < t0: data back to noise).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cufm/device.hpp"
#include "cufm/model.hpp"

namespace cufm {

enum class Solver : int { Euler = 0, Midpoint = 1, Heun = 2, RK4 = 3, Dopri5 = 4 };

const char* to_string(Solver s);
Solver parse_solver(const std::string& s);
// The method's order, and the field evaluations one (accepted) step costs (Dopri5: 6, its seventh
// stage being the next step's first), from the solvers' tableaux (cufm/detail/math.hpp).
int solver_order(Solver s);
int solver_evaluations_per_step(Solver s);

// How a log-likelihood gets the velocity's divergence (cufm/likelihood.hpp).
enum class Divergence : int {
  Auto = 0,        // Exact up to D = 32, Hutchinson above
  Exact = 1,       // the Jacobian's trace: D forward-mode tangents per point
  Hutchinson = 2,  // (1/P) sum_p e_p^T J e_p over P Rademacher probes per point
};
const char* to_string(Divergence d);
Divergence parse_divergence(const std::string& s);  // "auto", "exact" or "hutchinson"

struct SampleConfig {
  int64_t count = 1000;
  Solver solver = Solver::Midpoint;
  int steps = 20;                    // fixed-step solvers
  float atol = 1e-5f, rtol = 1e-5f;  // Dopri5
  int max_steps = 100000;            // Dopri5: accepted + rejected steps before giving up
  std::vector<int32_t> labels;       // empty, one label for all, or one per sample
  std::vector<float> context;        // a model with a context: empty (the null context), one row of
                                     // context_dim for all, or one per sample ([count, context_dim])
  std::optional<float> guidance;     // set: classifier-free guidance with this scale w (needs labels
                                     // or a context; the unconditional field has the null class and
                                     // the null context)
  uint64_t seed = 0;
  bool keep_trajectory = false;  // keep x at every (accepted) step, with its time
  float t0 = 0.0f, t1 = 1.0f;    // the span, inside [0, 1]; t1 < t0 integrates backwards
  // Also each sample's log-density log p_t1(x(t1)), from the same integration with the divergence
  // as one more state component (t0 must be 0: the start's density is N(0, I)). Fixed-step
  // solvers give the same x bit for bit; Dormand-Prince's steps then also control the divergence.
  bool with_log_prob = false;
  Divergence divergence = Divergence::Auto;
  int probes = 1;  // Hutchinson: probes per sample (their Philox key is the seed)
  Device device = Device::Auto;
  Precision precision = Precision::FP32;
  int threads = 0;

  void validate(const MlpConfig& model) const;
};

struct SampleResult {
  int64_t count = 0;
  int dim = 0;
  std::vector<float> x;           // [count, dim] at t = t1
  std::vector<float> times;       // with a trajectory: the times, steps + 1 of them
  std::vector<float> trajectory;  // [steps + 1, count, dim]
  std::vector<float> log_prob;    // with_log_prob: [count] log p_t1 at x
  int64_t evaluations = 0;        // velocity evaluations of the whole batch
  int accepted_steps = 0, rejected_steps = 0;
  Device device = Device::CPU;
  // How the model ran: "cpu", "cuda layered" (cuBLASLt, a kernel per layer), "cuda fused" (one
  // kernel for the whole integration; CUFM_GPU_MLP=fused|layered overrides the choice), or for
  // with_log_prob the flow with its divergence ("cpu divergence", "cuda layered divergence", "cuda
  // fused divergence").
  std::string mlp;
};

// The initial noise of sample i, dims [0, D): a pure function of (seed, i).
void sampler_noise(uint64_t seed, int64_t first, int64_t count, int dim, float* x0);

// One sampling run: Sampler().sample(model, config). Equals integrate() from
// sampler_noise(config.seed, 0, config.count, ...), bit for bit.
SampleResult sample(const Model& model, const SampleConfig& config);

// Integrates the model's field from the caller's points x0 [config.count, data_dim] (row-major)
// over [config.t0, config.t1] with config's solver, labels, guidance, device and precision
// (config.seed is not used). Integrating back and forth returns to x0 within the solver's error.
SampleResult integrate(const Model& model, const std::vector<float>& x0, const SampleConfig& config);

// A sampler that keeps what a GPU run sets up (the weights' device copy, the cuBLASLt plans, the
// buffers, the captured graphs) for its next call. Sampling models of one shape again and again
// (every N training steps, or in a service) then costs only the weights' upload and the solver's
// work. A call whose model shape, count, precision or guidance differs rebuilds; one whose steps,
// solver or label mode differ captures new graphs. The results are those of sample(), bit for bit.
// On the CPU it holds nothing. On the GPU it runs on the device that was current at its first GPU
// call, and its memory there is freed by release() or with it. Not thread-safe: one Sampler per
// thread.
class Sampler {
 public:
  Sampler();
  ~Sampler();
  Sampler(Sampler&&) noexcept;
  Sampler& operator=(Sampler&&) noexcept;
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;

  SampleResult sample(const Model& model, const SampleConfig& config);
  SampleResult integrate(const Model& model, const std::vector<float>& x0, const SampleConfig& config);
  void release();

 private:
  SampleResult run(const Model& model, const float* x0, const SampleConfig& config);  // x0 nullptr: noise
  struct State;
  std::unique_ptr<State> state_;
};

// Integrates a caller's velocity field on the CPU with the same solvers from t0 to t1 (t1 < t0
// integrates backwards; the tests measure each solver's order with it on fields with known
// solutions). v(t, x, out) fills out [n*dim].
struct OdeResult {
  std::vector<float> x;
  int64_t evaluations = 0;
  int accepted_steps = 0, rejected_steps = 0;
};
OdeResult integrate(const std::function<void(float t, const float* x, float* v)>& velocity,
                    std::vector<float> x0, Solver solver, int steps, float atol, float rtol,
                    int max_steps = 100000, float t0 = 0.0f, float t1 = 1.0f);

}  // namespace cufm
