// The velocity's divergence on the CPU (log-likelihoods): forward-mode tangents through the MLP.
// For a point's tangent direction e (in x; the time features and the one-hot do not move):
//   dz_0 = W_0[:, :D] e,  dh_l = act'(z_l) * dz_l,  dz_{l+1} = W_{l+1} dh_l,  J e = dz_L,
// and its contribution to the divergence is e . J e. The P tangents of a chunk's R points are the
// rows of one [R * P, width] matrix, so each layer is one GEMM over P times the rows.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "cufm/detail/math.hpp"
#include "cufm/detail/philox.hpp"
#include "cufm/error.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "host/cpu/cpu_simd.hpp"

namespace cufm::cpu {

namespace {

// Tangent rows [r0, r1) of P per point, width wide: each row of point r times act'(z[r, :]). The
// derivative is computed once per point (not per tangent) in a branch-free loop that vectorises.
template <Activation A>
CUFM_SIMD_CLONES void scale_rows(const float* z, int64_t r0, int64_t r1, int P, int width, float* t,
                                 float* g) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* zr = z + r * width;
    for (int k = 0; k < width; ++k) g[k] = hd::activate_grad(A, zr[k]);
    for (int p = 0; p < P; ++p) {
      float* tr = t + (r * P + p) * width;
      for (int k = 0; k < width; ++k) tr[k] *= g[k];
    }
  }
}

void scale_rows(Activation a, const float* z, int64_t r0, int64_t r1, int P, int width, float* t, float* g) {
  const DenormalsAreZero daz;  // see host/cpu/cpu_simd.hpp
  switch (a) {
    case Activation::ReLU:
      return scale_rows<Activation::ReLU>(z, r0, r1, P, width, t, g);
    case Activation::GELU:
      return scale_rows<Activation::GELU>(z, r0, r1, P, width, t, g);
    default:
      return scale_rows<Activation::SiLU>(z, r0, r1, P, width, t, g);
  }
}

// Rows of a chunk: the tangent matrix holds rows * P * width floats.
int64_t chunk_rows(const MlpConfig& m, int P, bool guided) {
  int width = 0;
  for (int h : m.hidden) width = std::max(width, h);
  const int64_t budget = int64_t{1} << 22;  // floats per tangent buffer (16 MiB)
  return std::max<int64_t>(
      1, std::min<int64_t>(8192, budget / (static_cast<int64_t>(P) * width * (guided ? 2 : 1))));
}

// div [rows] of the pass whose forward is in ws (rows of the input from `row0`), for directions
// dirs [rows, P, D] (nullptr: the unit vectors, P = D, and no division by P).
void divergence_of_pass(const MlpConfig& m, const float* params, const MlpWorkspace& ws, int64_t row0,
                        int64_t rows, const float* dirs, int P, float* div, DivergenceScratch& s) {
  const ParamLayout layout(m);
  const int D = m.data_dim, L = m.num_layers(), in0 = m.input_dim();
  const int64_t TR = rows * P;  // tangent rows
  // Layer 0: dz_0 = W_0[:, :D] e for every tangent, then times act'(z_0).
  const int w0 = m.layer_out(0);
  s.tan_a.resize(static_cast<size_t>(TR) * w0);
  const float* W0 = params + layout.weight_offset(0);
  const bool parallel = TR * std::max(w0, D) >= kParallelMin;
  if (!dirs) {  // e_p: column p of W_0
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t r = 0; r < rows; ++r) {
      for (int p = 0; p < P; ++p) {
        float* t = s.tan_a.data() + (r * P + p) * w0;
        for (int k = 0; k < w0; ++k) t[k] = W0[static_cast<size_t>(k) * in0 + p];
      }
    }
  } else {  // [TR, D] x W_0[:, :D]^T
    sgemm(false, true, TR, w0, D, 1.0f, dirs, D, W0, in0, 0.0f, s.tan_a.data(), w0);
  }
  float* cur = s.tan_a.data();
  int width = w0;
  constexpr int64_t kRows = 64;  // points per task of the scaling loop
  const int64_t tasks = (rows + kRows - 1) / kRows;
  for (int l = 0;; ++l) {
    const float* z = ws.pre[l].data() + row0 * width;  // this pass's pre-activations of layer l
#pragma omp parallel if (TR * width >= kParallelMin)
    {
      std::vector<float> g(static_cast<size_t>(width));
#pragma omp for schedule(static)
      for (int64_t task = 0; task < tasks; ++task) {
        scale_rows(m.activation, z, task * kRows, std::min(rows, (task + 1) * kRows), P, width, cur,
                   g.data());
      }
    }
    const int out = m.layer_out(l + 1);
    const float* W = params + layout.weight_offset(l + 1);
    std::vector<float>& next = (cur == s.tan_a.data()) ? s.tan_b : s.tan_a;
    next.resize(static_cast<size_t>(TR) * out);
    sgemm(false, true, TR, out, width, 1.0f, cur, width, W, width, 0.0f, next.data(), out);
    cur = next.data();
    width = out;
    if (l + 1 == L - 1) break;  // cur: J e for every tangent, [TR, D]
  }
  const float inv_p = dirs ? 1.0f / static_cast<float>(P) : 1.0f;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (int p = 0; p < P; ++p) {
      const float* je = cur + (r * P + p) * D;
      if (!dirs) {
        sum += je[p];
      } else {
        const float* e = dirs + (r * P + p) * D;
        for (int d = 0; d < D; ++d) sum += static_cast<double>(e[d]) * je[d];
      }
    }
    div[r] = static_cast<float>(sum) * inv_p;
  }
}

}  // namespace

void evaluate_divergence(const MlpConfig& m, const float* params, const float* x, float t,
                         const int32_t* labels, const float* context, int64_t n, const float* guidance,
                         const float* probes, int P, float* v, float* div, DivergenceScratch& s) {
  const int D = m.data_dim;
  const bool guided = guidance != nullptr;
  std::vector<float> div2;
  // After each chunk's forward (its activations in s.ws): the divergence of each pass.
  const ChunkDone divergence = [&](int64_t first, int64_t rows) {
    const float* dirs = probes ? probes + first * P * D : nullptr;
    if (!guided) {
      divergence_of_pass(m, params, s.ws, 0, rows, dirs, P, div + first, s);
      return;
    }
    div2.resize(static_cast<size_t>(2 * rows));
    divergence_of_pass(m, params, s.ws, 0, rows, dirs, P, div2.data(), s);
    divergence_of_pass(m, params, s.ws, rows, rows, dirs, P, div2.data() + rows, s);
    for (int64_t i = 0; i < rows; ++i) div[first + i] = hd::guided(div2[rows + i], div2[i], *guidance);
  };
  forward_chunks(m, params, x, nullptr, t, labels, context, n, guidance, chunk_rows(m, P, guided), s.input, s.ws,
                 v, divergence);
}

}  // namespace cufm::cpu
