// The probability path's arithmetic, a training step's per-sample draws and the model's input row
// (internal: cufm::hd), written with exactly rounded operations so that the CPU backend and the
// kernels compute the same bits. The path's configuration is in cufm/path.hpp.
#pragma once

#include <cmath>
#include <cstdint>

#include "cufm/detail/hd.hpp"
#include "cufm/detail/philox.hpp"
#include "cufm/path.hpp"

namespace cufm {

namespace hd {

// ---- the path ----------------------------------------------------------------------------
// x_t = t*x1 + (1 - (1 - s)*t)*eps and u = x1 - (1 - s)*eps; s = sigma_min (0: the OT path).
CUFM_HD float path_xt(float t, float x1, float eps, float sigma_min) {
  const float noise_scale = rn_sub(1.0f, rn_mul(rn_sub(1.0f, sigma_min), t));
  return rn_add(rn_mul(t, x1), rn_mul(noise_scale, eps));
}

CUFM_HD float path_target(float x1, float eps, float sigma_min) {
  return rn_sub(x1, rn_mul(rn_sub(1.0f, sigma_min), eps));
}

// ---- per-sample draws of a training step (block 0 of the sample's counter) -----------------
struct SampleDraw {
  float t;
  uint32_t data_index;
  bool drop_label;
};

CUFM_HD float logistic(float x) {
  return rn_div(1.0f, rn_add(1.0f, det_exp(-x)));
}

CUFM_HD SampleDraw draw_sample(uint64_t seed, uint64_t step, uint32_t sample, uint32_t n_data,
                               TimeSampling ts, float ln_mean, float ln_std, float label_dropout) {
  const Philox4x32 r = rng::draw(seed, step, sample, 0u);
  SampleDraw d;
  if (ts == TimeSampling::Uniform) {
    d.t = uniform01(r.v[0]);
  } else {
    float z0, z1;
    box_muller(r.v[0], r.v[1], z0, z1);
    d.t = logistic(rn_fma(ln_std, z0, ln_mean));
  }
  d.data_index = uniform_index(r.v[2], n_data);
  d.drop_label = uniform01(r.v[3]) < label_dropout;
  return d;
}

// Number of time features the first layer sees.
CUFM_HD int time_feature_count(int k) {
  return k <= 0 ? 1 : k;
}

// Time features: raw t (k <= 0), or k sinusoids sin(2*pi*2^j*t), cos(2*pi*2^j*t), j < k/2.
// Scaling by 2^j is exact, so both backends reduce the argument identically.
CUFM_HD float time_feature(float t, int k, int i) {
  if (k <= 0) return t;
  const int j = i >> 1;
  const float turns = rn_mul(t, static_cast<float>(1u << j));
  const float frac = rn_sub(turns, floorf(turns));
  float s, c;
  det_sincos_turns(frac < 1.0f ? frac : 0.0f, s, c);
  return (i & 1) ? c : s;
}

// ---- context dropout (block 0xFFFFFFFF of the sample's counter: eps uses blocks 1.., far below) ----
CUFM_HD bool draw_context_drop(uint64_t seed, uint64_t step, uint32_t sample, float context_dropout) {
  return context_dropout > 0.0f &&
         uniform01(rng::draw(seed, step, sample, 0xFFFFFFFFu).v[0]) < context_dropout;
}

// ---- the model's input row ---------------------------------------------------------------
// [x (dim) | time features | context (K) and its null indicator (models with a context) |
// one-hot of num_classes + 1 (conditional models; the last entry is the null class)], then zero
// padding: its width, and entry c of the part after x for a context row (nullptr: the null context,
// K zeros and an indicator of 1) and a label (-1: unconditional). The CPU backend, fm_prepare and
// the sampler's stage_input all build rows with these two.
CUFM_HD int context_width(int context_dim) {
  return context_dim > 0 ? context_dim + 1 : 0;
}
CUFM_HD int input_width(int dim, int time_features, int context_dim, int num_classes) {
  return dim + time_feature_count(time_features) + context_width(context_dim) +
         (num_classes > 0 ? num_classes + 1 : 0);
}
CUFM_HD float input_tail_value(float t, int time_features, int context_dim, const float* context,
                               int num_classes, int32_t label, int c) {
  const int tf = time_feature_count(time_features);
  if (c < tf) return time_feature(t, time_features, c);
  c -= tf;
  const int cw = context_width(context_dim);
  if (c < cw) {
    if (c == context_dim) return context ? 0.0f : 1.0f;
    return context ? context[c] : 0.0f;
  }
  c -= cw;
  if (num_classes > 0 && c < num_classes + 1) return c == label ? 1.0f : 0.0f;
  return 0.0f;
}

}  // namespace hd
}  // namespace cufm
