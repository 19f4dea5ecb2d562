// The math both backends run, once (internal: cufm::hd): the activations and their derivatives,
// Adam's update, guidance and the ODE solvers' combinations and tableaux (the path and its draws
// are in detail/path.hpp). The CPU backend calls these functions and so do the kernels, so the CPU
// tests cover the GPU math.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cufm/detail/hd.hpp"
#include "cufm/detail/path.hpp"
#include "cufm/detail/philox.hpp"
#include "cufm/math.hpp"

namespace cufm {
namespace hd {

// ---- activations -------------------------------------------------------------------------
// exp for the activations: on the device the hardware approximation, on the host a branch-free
// polynomial (~2 ulp) that the compiler vectorises, so the CPU backend's elementwise passes run at
// SIMD speed. Neither needs to match the other to the bit: layer outputs are compared with tolerances.
CUFM_HD float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float kf = std::floor(x * 1.44269504f + 0.5f);
  float r = x - kf * 0.693145751953125f;
  r = r - kf * 1.428606765330187e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t k = static_cast<int32_t>(kf);
  return p * bits_to_float(static_cast<uint32_t>(k + 127) << 23);
#endif
}

// fast_exp as a function object: the activations take their exp as a parameter so that a CPU test
// can replay them with an emulation of the device's __expf (tests/test_activations.cpp).
struct FastExp {
  CUFM_HD float operator()(float x) const { return fast_exp(x); }
};

template <class Exp = FastExp>
CUFM_HD float sigmoid_fast(float z, Exp exp = Exp{}) {
  return 1.0f / (1.0f + exp(-z));
}

// The tanh terms of GELU, (1 + tanh x) / 2 = sigmoid(2x) and (1 - tanh^2 x) / 4 = sigmoid(2x)
// (1 - sigmoid(2x)), from e = exp(-2|x|) with no cancellation anywhere: (1 + tanh x) / 2 is 1 / (1 + e)
// for x >= 0 and e / (1 + e) below, and (1 - tanh^2 x) / 4 = e / (1 + e)^2 on both sides. (The form
// tanh = 1 - 2 / (e^{2x} + 1) loses every digit near -1: GELU's derivative came out 0 at z = -5,
// where it is -1.5e-6.) Both backends run this formula; they differ only in exp (see fast_exp).
struct TanhTerms {
  float half_one_plus;  // (1 + tanh x) / 2
  float quarter_sech2;  // (1 - tanh^2 x) / 4
};
template <class Exp = FastExp>
CUFM_HD TanhTerms tanh_terms(float x, Exp exp = Exp{}) {
  const float e = exp(-2.0f * (x < 0.0f ? -x : x));
  const float d = 1.0f + e;
  return {(x < 0.0f ? e : 1.0f) / d, e / (d * d)};
}

namespace gelu {
constexpr float k0 = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float k1 = 0.044715f;
}  // namespace gelu

template <class Exp = FastExp>
CUFM_HD float activate(Activation a, float z, Exp exp = Exp{}) {
  switch (a) {
    case Activation::ReLU:
      return z > 0.0f ? z : 0.0f;
    case Activation::GELU: {  // the tanh approximation (PyTorch's approximate='tanh', cuBLASLt's GELU)
      const float inner = gelu::k0 * (z + gelu::k1 * z * z * z);
      return z * tanh_terms(inner, exp).half_one_plus;
    }
    default:
      return z * sigmoid_fast(z, exp);
  }
}

// d activate / dz at the pre-activation z.
template <class Exp = FastExp>
CUFM_HD float activate_grad(Activation a, float z, Exp exp = Exp{}) {
  switch (a) {
    case Activation::ReLU:
      return z > 0.0f ? 1.0f : 0.0f;
    case Activation::GELU: {
      const float inner = gelu::k0 * (z + gelu::k1 * z * z * z);
      const TanhTerms tt = tanh_terms(inner, exp);
      const float dinner = gelu::k0 * (1.0f + 3.0f * gelu::k1 * z * z);
      return tt.half_one_plus + 2.0f * z * tt.quarter_sech2 * dinner;
    }
    default: {
      const float sg = sigmoid_fast(z, exp);
      return sg * (1.0f + z * (1.0f - sg));
    }
  }
}

// ---- Adam / AdamW --------------------------------------------------------------------------
// PyTorch's formulation: Adam folds weight decay into the gradient (L2), AdamW decays the weight.
struct AdamCoeffs {
  float lr, beta1, beta2, eps;
  float weight_decay;
  bool decoupled;         // AdamW
  float bias_corr1;       // 1 - beta1^t
  float bias_corr2_sqrt;  // sqrt(1 - beta2^t)
  float grad_scale;       // clipping factor (1 when off)
  float ema_decay;        // 0: no EMA
};

struct AdamHyper {
  float lr, beta1, beta2, eps, weight_decay, grad_clip, ema_decay;
  bool decoupled;
  LrSchedule schedule = LrSchedule::Constant;
  uint64_t warmup_steps = 0, decay_steps = 0;
  float min_lr = 0.0f;
};

// The learning rate of step t (1-based). Single IEEE operations and cuFM's deterministic cosine,
// so both backends compute the same bits: the GPU's optimiser evaluates it on the device from the
// device's step counter, inside the captured training step.
CUFM_HD float scheduled_lr(const AdamHyper& h, uint64_t t) {
  if (t <= h.warmup_steps) {
    return rn_div(rn_mul(h.lr, static_cast<float>(t)), static_cast<float>(h.warmup_steps));
  }
  if (h.schedule == LrSchedule::Constant) return h.lr;
  const uint64_t s = t - h.warmup_steps;  // 1-based step of the decay
  if (s >= h.decay_steps) return h.min_lr;
  const float progress = rn_div(static_cast<float>(s), static_cast<float>(h.decay_steps));  // (0, 1)
  const float span = rn_sub(h.lr, h.min_lr);
  if (h.schedule == LrSchedule::Linear) return rn_sub(h.lr, rn_mul(span, progress));
  // Cosine: min_lr + span * (1 + cos(pi * progress)) / 2, cos(pi p) = cos(2 pi (p / 2)).
  float sn, cs;
  det_sincos_turns(rn_mul(progress, 0.5f), sn, cs);
  return rn_add(h.min_lr, rn_mul(rn_mul(span, 0.5f), rn_add(1.0f, cs)));
}

// b^e by squaring: only IEEE multiplications, so host and device agree to the bit (pow() need not).
CUFM_HD double powi(double b, uint64_t e) {
  double r = 1.0;
  while (e) {
    if (e & 1u) r *= b;
    b *= b;
    e >>= 1;
  }
  return r;
}

// The coefficients of step t (1-based) for a gradient of global norm grad_norm; the clipping
// factor is PyTorch's clip_grad_norm_: max_norm / (norm + 1e-6), when that is below 1.
CUFM_HD AdamCoeffs adam_coeffs(const AdamHyper& h, uint64_t t, float grad_norm) {
  AdamCoeffs c{};
  c.lr = scheduled_lr(h, t);
  c.beta1 = h.beta1;
  c.beta2 = h.beta2;
  c.eps = h.eps;
  c.weight_decay = h.weight_decay;
  c.decoupled = h.decoupled;
  c.bias_corr1 = static_cast<float>(1.0 - powi(static_cast<double>(h.beta1), t));
  c.bias_corr2_sqrt = static_cast<float>(sqrt(1.0 - powi(static_cast<double>(h.beta2), t)));
  c.grad_scale = 1.0f;
  if (h.grad_clip > 0.0f) {
    const float f = rn_div(h.grad_clip, rn_add(grad_norm, 1e-6f));
    c.grad_scale = f < 1.0f ? f : 1.0f;
  }
  c.ema_decay = h.ema_decay;
  return c;
}

CUFM_HD void adam_update(const AdamCoeffs& c, float g, float& p, float& m, float& v) {
  g *= c.grad_scale;
  if (c.weight_decay != 0.0f) {
    if (c.decoupled) {
      p -= c.lr * c.weight_decay * p;
    } else {
      g += c.weight_decay * p;
    }
  }
  m = c.beta1 * m + (1.0f - c.beta1) * g;
  v = c.beta2 * v + (1.0f - c.beta2) * g * g;
  const float step_size = c.lr / c.bias_corr1;
  const float denom = sqrtf(v) / c.bias_corr2_sqrt + c.eps;
  p -= step_size * (m / denom);
}

CUFM_HD float ema_update(float ema, float p, float decay) {
  return decay * ema + (1.0f - decay) * p;
}

// ---- classifier-free guidance -------------------------------------------------------------
CUFM_HD float guided(float v_null, float v_cond, float w) {
  return v_null + w * (v_cond - v_null);
}

// ---- the solvers' stage combinations ---------------------------------------------------------
// y = x + h * sum_j a[j] k[j], elementwise over arrays of one length (x nullptr reads as zeros):
// every stage point, step update and error estimate of every solver, on both backends. The sum
// runs left to right, then x + h acc, each operation rounded once.
constexpr int kMaxStages = 7;
struct Combination {
  const float* x = nullptr;
  const float* k[kMaxStages] = {};
  float a[kMaxStages] = {};
  int terms = 0;
  float h = 0.0f;
};

CUFM_HD float combine_at(const Combination& c, int64_t i) {
  float acc = 0.0f;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int j = 0; j < kMaxStages; ++j) {
    if (j < c.terms) acc = rn_add(acc, rn_mul(c.a[j], c.k[j][i]));
  }
  return rn_add(c.x ? c.x[i] : 0.0f, rn_mul(c.h, acc));
}

// ---- fixed-step solvers -------------------------------------------------------------------
// The time of fixed step i of `steps` over [t0, t1] (either direction): t0 + span * i / steps,
// exactly t1 at the end. Both backends' loops and trajectories use it.
CUFM_HD float fixed_step_time(float t0, float t1, int i, int steps) {
  return i == steps ? t1 : t0 + (t1 - t0) * static_cast<float>(i) / static_cast<float>(steps);
}

// Euler, midpoint, Heun and RK4 as tableaux. Stage i runs at t + c h (c = 1: the step's end time
// itself) on x + (scale h) sum_j a_j k_j; the update is x + h sum_j b_j k_j (zero weights left
// out). Written with the scale that each method's textbook form uses, so that both backends and
// earlier releases round the same way.
struct FixedStage {
  float c, scale;
  float a[3];
};
// Each tableau carries the method's facts too: its order and its stages (the field evaluations a
// step costs and the stage buffers it holds).
struct FixedTableau {
  int order;
  int stages;
  FixedStage stage[4];
  float b[4];
};
namespace tableau {
constexpr FixedTableau euler{1, 1, {{0.0f, 0.0f, {}}}, {1.0f}};
constexpr FixedTableau midpoint{2, 2, {{0.0f, 0.0f, {}}, {0.5f, 0.5f, {1.0f}}}, {0.0f, 1.0f}};
constexpr FixedTableau heun{2, 2, {{0.0f, 0.0f, {}}, {1.0f, 1.0f, {1.0f}}}, {0.5f, 0.5f}};
constexpr FixedTableau rk4{
    4,
    4,
    {{0.0f, 0.0f, {}}, {0.5f, 0.5f, {1.0f}}, {0.5f, 0.5f, {0.0f, 1.0f}}, {1.0f, 1.0f, {0.0f, 0.0f, 1.0f}}},
    {1.0f / 6, 1.0f / 3, 1.0f / 3, 1.0f / 6}};
}  // namespace tableau

// ---- Dormand-Prince 5(4) ---------------------------------------------------------------------
// The tableau (Dormand & Prince, 1980): stage times c, stage weights a, the 5th-order weights b
// (also the 7th stage's row: first same as last), and e = b - b_hat for the embedded error.
namespace dopri5 {
// Order 5 with an embedded 4th-order error; seven stages held, six evaluations per step (the
// seventh stage's point is the next step's first: first same as last).
constexpr int kOrder = 5;
constexpr int kEvaluationsPerStep = 6;
constexpr float c2 = 1.0f / 5, c3 = 3.0f / 10, c4 = 4.0f / 5, c5 = 8.0f / 9;
constexpr float a21 = 1.0f / 5;
constexpr float a31 = 3.0f / 40, a32 = 9.0f / 40;
constexpr float a41 = 44.0f / 45, a42 = -56.0f / 15, a43 = 32.0f / 9;
constexpr float a51 = 19372.0f / 6561, a52 = -25360.0f / 2187, a53 = 64448.0f / 6561, a54 = -212.0f / 729;
constexpr float a61 = 9017.0f / 3168, a62 = -355.0f / 33, a63 = 46732.0f / 5247, a64 = 49.0f / 176,
                a65 = -5103.0f / 18656;
constexpr float b1 = 35.0f / 384, b3 = 500.0f / 1113, b4 = 125.0f / 192, b5 = -2187.0f / 6784,
                b6 = 11.0f / 84;
constexpr float e1 = 71.0f / 57600, e3 = -71.0f / 16695, e4 = 71.0f / 1920, e5 = -17253.0f / 339200,
                e6 = 22.0f / 525, e7 = -1.0f / 40;
// The controller's view of [t0, t1], in either direction: it advances a distance s in
// [0, length] with steps h > 0; the stages' combinations take the signed step sign * h and run at
// t0 + sign * (s + c h). Forwards from t0 = 0 each of these is the plain s + c h, bit for bit.
struct Direction {
  float t0, t1, sign, length;
  Direction(float from, float to)
      : t0(from), t1(to), sign(to >= from ? 1.0f : -1.0f), length(to >= from ? to - from : from - to) {}
  float time(float s) const { return s == length ? t1 : t0 + sign * s; }  // exactly t1 at the end
  float at(float s, float dh) const { return t0 + sign * (s + dh); }
  float step(float h) const { return sign * h; }
};

// Step-size controller: h *= clamp(safety * err^(-1/5), min, max).
constexpr float kSafety = 0.9f, kMinFactor = 0.2f, kMaxFactor = 10.0f;

// The factor by which h changes after a step whose RMS scaled error is err: an accepted step
// (err <= 1) may grow or shrink h, a rejected one only shrinks it. Host code (both backends' loops).
inline float step_factor(double err) {
  const double f = err == 0.0 ? static_cast<double>(kMaxFactor) : kSafety * std::pow(err, -0.2);
  const float clamped =
      static_cast<float>(std::clamp(f, static_cast<double>(kMinFactor), static_cast<double>(kMaxFactor)));
  return err <= 1.0 ? clamped : std::min(1.0f, clamped);
}

// Hairer's initial step, in two parts around one evaluation. d0 = ||x0||, d1 = ||f(t0, x0)|| (the
// solver's scaled RMS norms): the first guess h0, at which the caller evaluates f(t0 + h0, x0 + h0 f0)
// and measures d2 = ||f(t0 + h0, .) - f0|| / h0; then the step. A non-finite norm (a velocity that
// is NaN or Inf, or tolerances so small that the scaled norm overflows) gives the smallest guess,
// and the step loop's check_step reports it.
inline double first_guess(double d0, double d1, double span) {
  const double h0 = (!(d0 >= 1e-5) || !(d1 >= 1e-5) || !std::isfinite(d0 / d1)) ? 1e-6 : 0.01 * d0 / d1;
  return std::min(h0, span);
}
inline float initial_step(double h0, double d1, double d2, double span) {
  const double dmax = std::max(d1, d2);
  const double h1 = !std::isfinite(dmax) ? h0
                    : dmax <= 1e-15      ? std::max(1e-6, h0 * 1e-3)
                                         : std::pow(0.01 / dmax, 0.2);
  return static_cast<float>(std::min({100.0 * h0, h1, span}));
}

// Throws unless the step size h (after the controller's update) is finite and above 1e-7 of the
// span: a step that collapses means the field is too rough for the tolerances, a NaN that the
// velocity field itself returned NaN or Inf.
void check_step(float h, float t, float span);
}  // namespace dopri5

// One element's scaled error term err / (atol + rtol * max(|x|, |x_new|)), squared; the solver
// takes the RMS over the whole batch.
CUFM_HD float scaled_error_sq(float err, float x, float x_new, float atol, float rtol) {
  const float ax = x < 0.0f ? -x : x, an = x_new < 0.0f ? -x_new : x_new;
  const float sc = atol + rtol * (ax > an ? ax : an);
  const float r = err / sc;
  return r * r;
}

}  // namespace hd
}  // namespace cufm
