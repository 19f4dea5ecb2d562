// Launchers of kernels/divergence.cu: the elementwise work of the velocity's divergence by
// forward-mode tangents (host/cuda/cuda_divergence.cpp runs the GEMMs between them with cuBLAS).
// Row-major fp32 arrays of any width; P tangent rows per point, point r's tangents in rows
// [r P, (r + 1) P). Every launcher checks its arguments, takes the stream last and throws
// cufm::Error.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cufm/math.hpp"

namespace cufm::cuda {

// The model's input rows [x | time features | context | one-hot] at time t for `passes` passes of
// n points: pass 0 takes labels (nullptr: the null class; unconditional models: no one-hot) and
// context [n, context_dim] (nullptr: the null context), pass 1 the null class and the null context
// (guidance). x: [n, dim]; out: [passes n, in].
void divergence_input(const float* x, const int32_t* labels, const float* context, int64_t n, int passes,
                      int dim, int time_features, int context_dim, int num_classes, float t, float* out,
                      cudaStream_t stream);

// z [rows, width] += bias; a = act(z) (the hidden layers); a nullptr: the bias alone (the output).
void divergence_bias_act(Activation act, float* z, float* a, const float* bias, int64_t rows, int width,
                         cudaStream_t stream);

// Exact divergence's first tangents: t[(r P + p), k] = w0[k, p] * act'(z0[r, k]) with P = dim
// (column p of W_0, whose rows have `in` entries). z0: [n, width].
void divergence_first_tangents(Activation act, const float* w0, int in, const float* z0, int64_t n, int dim,
                               int width, float* t, cudaStream_t stream);

// In place: t[(r P + p), k] *= act'(z[r, k]). z: [n, width].
void divergence_scale_tangents(Activation act, float* t, const float* z, int64_t n, int P, int width,
                               cudaStream_t stream);

// div[r] = sum_p u[(r P + p), p] (exact, dirs nullptr, P = dim) or (1 / P) sum_p dirs[r P + p] . u[r P +
// p] (Hutchinson), summed in double. u, dirs: [n P, dim].
void divergence_trace(const float* u, const float* dirs, int64_t n, int P, int dim, float* div,
                      cudaStream_t stream);

// out[i] = hd::guided(null[i], cond[i], w) for i < n (v and div of a guided field).
void divergence_guided(const float* cond, const float* null, float w, int64_t n, float* out,
                       cudaStream_t stream);

}  // namespace cufm::cuda
