// The fused sampler's block program (issue 23): one block integrates a tile of points
// through every stage and step of a fixed-step solver, the model evaluated layer by layer with its
// activations in shared memory and each layer's weights staged there, so that between the initial
// points and the final ones nothing touches global memory but the weights (read from L2) and an
// asked-for trajectory. Written once as __host__ __device__ phases over (tid, nthreads): the kernel
// (kernels/fused_sampler.cu) runs them with its threads and __syncthreads() between phases; the
// CPU twin (cpu::fused_sample) runs each phase with tid 0 of 1 thread. Every output element is
// computed whole by one thread, in an order fixed by the element alone (a layer's dot product: k
// from 0 up, one fmaf each; the stage points with hd::combine_at), so the twin computes what each
// block computes, apart from the activations' exp (the device's __expf, the host's polynomial).
// At TF32 and BF16 a layer's products run on the tensor cores (the kernel's DeviceMma; the twin's
// FusedTwinMma emulates their rounding, not their order), over rows and widths padded to 16.
// Log-likelihoods carry each point's divergence tangents through the same layers (fp32 only).
//
// Napkin math at the R7 shape (width 128, 4 hidden layers, D = 2, 10^6 points, midpoint 20 steps,
// fp32): the layered path writes and reads every layer's activations, 2 x 4 x 128 x 4 B = 4 KB a
// point per evaluation, 160 GB over the run, and launches ~5 kernels per evaluation; the fused path
// reads the weights (~200 KB) from L2 once per tile and evaluation (32 points: ~6 KB a point) and
// launches once. Its cost is the FMAs: 10^6 x 40 x 131k x 2 = 1e13 FLOP.
#pragma once

#include <cstdint>
#include <string>

#include "cufm/detail/math.hpp"
#include "cufm/detail/solver_tableau.hpp"
#include "cufm/device.hpp"
#include "cufm/math.hpp"
#include "cufm/model.hpp"
#include "cufm/sampler.hpp"

namespace cufm::cuda {

// What the fused path takes: hidden and input widths up to 128, up to 8 layers, D up to 64, fp32,
// a fixed-step solver (fused_sampler_refusal says why not, naming the layered path).
constexpr int kFusedMaxWidth = 128;
constexpr int kFusedMaxLayers = 8;
constexpr int kFusedMaxDim = 64;
constexpr int kFusedMaxStages = 4;
// A thread's register tile of a layer's outputs: 4 rows x 4 columns.
constexpr int kFusedTileRows = 4, kFusedTileCols = 4;

// The model, in ParamLayout order (layer l's weights [out, in] row-major, then its bias [out]).
struct FusedNet {
  int layers = 0;        // the layers held below (at most kFusedMaxLayers)
  int model_layers = 0;  // the model's (more than kFusedMaxLayers: refused)
  int in[kFusedMaxLayers] = {};
  int out[kFusedMaxLayers] = {};
  const float* weight[kFusedMaxLayers] = {};
  const float* bias[kFusedMaxLayers] = {};
  Activation activation = Activation::SiLU;
};

struct FusedSample {
  FusedNet net;
  int64_t n = 0;  // points
  int dim = 0;    // D
  int time_features = 0, num_classes = 0, context_dim = 0;
  const int32_t* labels = nullptr;  // [n] per-point labels, or nullptr: label_all
  int32_t label_all = -1;           // -1: the null class (conditional) / none (unconditional)
  const float* context = nullptr;   // [n, context_dim] per-point contexts, or nullptr: the null context
  int copies = 1;                   // 2 with guidance: the conditional rows, then the null rows
  float guidance = 0.0f;
  hd::FixedTableau tableau{};
  int steps = 0;
  float t0 = 0.0f, t1 = 1.0f;
  float* x = nullptr;           // [n, D]: the initial points in, the final points out
  float* trajectory = nullptr;  // [steps + 1, n, D] or nullptr
  int tile = 32;                // points per block
  // Log-likelihoods: the divergence's integral a rides along as one more state component per point
  // (da/dt = div v, a = 0 at t0), from `tangents` forward-mode tangent rows per point carried
  // through the same layers (the exact trace: D unit vectors; Hutchinson: P probes).
  int tangents = 0;               // 0: sampling alone
  const float* probes = nullptr;  // [n, tangents, D] Hutchinson's probes, or nullptr: exact (tangents = D)
  float* integral = nullptr;      // [n]: a at t1, when tangents > 0
  // FP32: each layer's sums on the CUDA cores, one fmaf a term; TF32 and BF16: on the tensor cores
  // (nvcuda::wmma 16 x 16 tiles, k steps of 8 or 16, fp32 accumulation), the activation rows and
  // widths padded to 16.
  Precision precision = Precision::FP32;
};

// The model's layers over its parameters in ParamLayout order at `params` (host or device memory).
inline FusedNet fused_net(const MlpConfig& model, const float* params) {
  const ParamLayout layout(model);
  FusedNet net;
  net.model_layers = model.num_layers();
  net.layers = model.num_layers() < kFusedMaxLayers ? model.num_layers() : kFusedMaxLayers;
  net.activation = model.activation;
  for (int l = 0; l < net.layers; ++l) {
    net.in[l] = model.layer_in(l);
    net.out[l] = model.layer_out(l);
    net.weight[l] = params + layout.weight_offset(l);
    net.bias[l] = params + layout.bias_offset(l);
  }
  return net;
}

// A sampling call as the fused sampler takes it: params, labels (per point, or nullptr with one
// label or none in the config), context (per point, or nullptr), x and trajectory in the memory the
// caller runs it on. The tile is left to the caller.
inline FusedSample fused_sample_of(const MlpConfig& model, const SampleConfig& c, const float* params,
                                   const int32_t* labels, const float* context, float* x, float* trajectory) {
  FusedSample p;
  p.net = fused_net(model, params);
  p.n = c.count;
  p.dim = model.data_dim;
  p.time_features = model.time_features;
  p.num_classes = model.num_classes;
  p.context_dim = model.context_dim;
  p.labels = labels;
  p.label_all = model.num_classes > 0 && c.labels.size() == 1 ? c.labels[0] : -1;
  p.context = context;
  p.copies = c.guidance ? 2 : 1;
  p.guidance = c.guidance.value_or(0.0f);
  const hd::FixedTableau* tab = hd::fixed_tableau_of(c.solver);
  if (tab) p.tableau = *tab;  // Dopri5 is refused (fused_sampler_refusal)
  p.steps = c.steps;
  p.t0 = c.t0;
  p.t1 = c.t1;
  p.x = x;
  p.trajectory = trajectory;
  p.precision = c.precision;
  return p;
}

// A flow with its divergence as the fused sampler takes it (log-likelihoods, fixed steps): labels
// and contexts per point or nullptr (the null class, the null context), guidance nullptr or its
// scale, P tangents per point (probes nullptr: exact, P = D), in the memory the caller runs it on.
inline FusedSample fused_flow_of(const MlpConfig& model, const float* params, Solver solver, int steps,
                                 float t0, float t1, int64_t n, const int32_t* labels, const float* context,
                                 const float* guidance, int P, const float* probes, float* x, float* integral,
                                 float* trajectory) {
  SampleConfig c;
  c.count = n;
  c.solver = solver;
  c.steps = steps;
  c.t0 = t0;
  c.t1 = t1;
  if (guidance) c.guidance = *guidance;
  FusedSample p = fused_sample_of(model, c, params, labels, context, x, trajectory);
  p.tangents = P;
  p.probes = probes;
  p.integral = integral;
  return p;
}

// Floats a point's state holds: x, and a when the divergence rides along.
CUFM_HD int fused_state_width(const FusedSample& p) {
  return p.dim + (p.tangents > 0 ? 1 : 0);
}
// Rows through each layer for `rows` points: each copy's points, then their tangents
// (row copies x rows + (copy x rows + point) x tangents + q holds tangent q of that point-copy).
CUFM_HD int fused_layer_rows(const FusedSample& p, int rows) {
  return p.copies * rows * (1 + p.tangents);
}

// The tensor cores' tile: 16 x 16 outputs (k steps of 8 at tf32).
constexpr int kFusedMma = 16;
CUFM_HD bool fused_tensor_cores(const FusedSample& p) {
  return p.precision == Precision::TF32 || p.precision == Precision::BF16;
}
CUFM_HD bool fused_bf16(const FusedSample& p) {
  return p.precision == Precision::BF16;
}
CUFM_HD int fused_round_up(int v, int m) {
  return (v + m - 1) / m * m;
}
// An activation row's stride for a layer `width` wide: the width itself on the CUDA cores, padded to
// the tensor cores' tile (with zeros) on them.
CUFM_HD int fused_ld(const FusedSample& p, int width) {
  return fused_tensor_cores(p) ? fused_round_up(width, kFusedMma) : width;
}
// Rows an activation buffer holds for `rows` points: fused_layer_rows, padded to the tile on the
// tensor cores (the padding rows are zeros at the input and never read back).
CUFM_HD int fused_held_rows(const FusedSample& p, int rows) {
  const int r = fused_layer_rows(p, rows);
  return fused_tensor_cores(p) ? fused_round_up(r, kFusedMma) : r;
}

// The widest activation row (the input or a hidden layer), as held.
CUFM_HD int fused_max_width(const FusedSample& p) {
  int w = p.net.in[0];
  for (int l = 0; l + 1 < p.net.layers; ++l) w = w > p.net.out[l] ? w : p.net.out[l];
  return fused_ld(p, w);
}
// A staged layer's weights. CUDA cores: transposed, [in, out + 1] (the odd stride puts the staging's
// transposed writes, consecutive threads on consecutive rows, in 32 banks rather than one). Tensor
// cores: as in global memory, [out padded to 16, in padded to 16, + 4 floats or + 8 bf16] (the B
// operand read column-major; ldm a multiple of 16 bytes; zeros in the padding), bf16 as raw bits.
CUFM_HD int fused_weight_ld(const FusedSample& p, int in, int out) {
  return fused_bf16(p) ? fused_ld(p, in) + 8 : fused_tensor_cores(p) ? fused_ld(p, in) + 4 : out + 1;
}
CUFM_HD int fused_weight_index(const FusedSample& p, int in, int out, int o, int k) {
  return fused_tensor_cores(p) ? o * fused_weight_ld(p, in, out) + k : k * fused_weight_ld(p, in, out) + o;
}
// Floats of layer l's staged weights (bf16: two a float, rounded up to 8 floats); its bias [out]
// follows them.
CUFM_HD int fused_weight_floats(const FusedSample& p, int in, int out) {
  if (fused_bf16(p)) return (fused_ld(p, out) * fused_weight_ld(p, in, out) / 2 + 7) / 8 * 8;
  return fused_tensor_cores(p) ? fused_ld(p, out) * fused_weight_ld(p, in, out)
                               : in * fused_weight_ld(p, in, out);
}
// The largest layer's staged weights and bias.
CUFM_HD int fused_max_layer(const FusedSample& p) {
  int m = 0;
  for (int l = 0; l < p.net.layers; ++l) {
    const int f = fused_weight_floats(p, p.net.in[l], p.net.out[l]) + fused_ld(p, p.net.out[l]);
    m = m > f ? m : f;
  }
  return m;
}

// A block's shared memory, in floats: the state x [tile, W] and the stages k [stages, tile, W]
// (W = fused_state_width), two activation buffers [fused_held_rows(tile), max width], one layer's
// weights and bias, and at BF16 the layer's input as bf16 bits [held rows, max width]; each region
// starts on 32 bytes (the tensor cores' loads need it).
struct FusedSmem {
  float* x;
  float* k;
  float* act[2];
  float* w;
  uint16_t* w16;  // BF16: the staged weights' bits (at w)
  uint16_t* a16;  // BF16: the layer's input as bf16 bits
};
CUFM_HD int64_t fused_align8(int64_t floats) {
  return (floats + 7) / 8 * 8;
}
CUFM_HD int64_t fused_smem_floats(const FusedSample& p) {
  const int64_t tile_elems = static_cast<int64_t>(p.tile) * fused_state_width(p);
  const int64_t act = static_cast<int64_t>(fused_held_rows(p, p.tile)) * fused_max_width(p);
  return fused_align8(tile_elems) + fused_align8(tile_elems * p.tableau.stages) + 2 * fused_align8(act) +
         fused_align8(fused_max_layer(p)) + (fused_bf16(p) ? fused_align8((act + 1) / 2) : 0);
}
CUFM_HD FusedSmem fused_smem_carve(const FusedSample& p, float* base) {
  const int64_t tile_elems = static_cast<int64_t>(p.tile) * fused_state_width(p);
  const int64_t act = static_cast<int64_t>(fused_held_rows(p, p.tile)) * fused_max_width(p);
  FusedSmem s;
  s.x = base;
  s.k = s.x + fused_align8(tile_elems);
  s.act[0] = s.k + fused_align8(tile_elems * p.tableau.stages);
  s.act[1] = s.act[0] + fused_align8(act);
  s.w = s.act[1] + fused_align8(act);
  s.w16 = reinterpret_cast<uint16_t*>(s.w);
  s.a16 = fused_bf16(p) ? reinterpret_cast<uint16_t*>(s.w + fused_align8(fused_max_layer(p))) : nullptr;
  return s;
}

// Empty where the fused sampler runs this model, precision and solver; else why not.
inline std::string fused_sampler_refusal(const FusedNet& net, int dim, Precision precision, Solver solver) {
  if (precision != Precision::FP32 && precision != Precision::TF32 && precision != Precision::BF16) {
    return "the fused sampler runs fp32, tf32 and bf16, not precision " +
           std::to_string(static_cast<int>(precision));
  }
  if (solver == Solver::Dopri5) return "dopri5's step control runs on the layered path";
  if (net.model_layers > kFusedMaxLayers) {
    return "the model has " + std::to_string(net.model_layers) + " layers; the fused sampler takes up to " +
           std::to_string(kFusedMaxLayers) + ": use the layered path";
  }
  if (dim > kFusedMaxDim) {
    return "D = " + std::to_string(dim) + " is above the fused sampler's " + std::to_string(kFusedMaxDim) +
           ": use the layered path";
  }
  for (int l = 0; l < net.layers; ++l) {
    if (net.in[l] > kFusedMaxWidth) {
      return "layer " + std::to_string(l) + " is " + std::to_string(net.in[l]) +
             " wide; the fused sampler takes widths up to " + std::to_string(kFusedMaxWidth) +
             ": use the layered path";
    }
  }
  return {};
}

// Empty where p's tangents are well formed (none, or an integral's array and D of them for the
// exact trace), else what is wrong.
inline std::string fused_tangents_error(const FusedSample& p) {
  if (p.tangents < 0) return "tangents must be >= 0, got " + std::to_string(p.tangents);
  if (p.tangents > 0 && !p.integral) return "tangents need the integral's array";
  if (p.tangents > 0 && p.precision != Precision::FP32) return "the divergence's tangents run fp32";
  if (p.tangents > 0 && !p.probes && p.tangents != p.dim) {
    return "the exact trace takes D = " + std::to_string(p.dim) + " tangents, got " +
           std::to_string(p.tangents);
  }
  return {};
}

// ---- the phases: each loops over its elements from tid by nthreads ---------------------------

#if defined(__CUDA_ARCH__)
#define CUFM_FUSED_UNROLL _Pragma("unroll")
#else
#define CUFM_FUSED_UNROLL
#endif

// hd::combine_at over the tile's x and stages in shared memory, to the bit: x[i] + h sum_j a_j
// k_j[i] over the stages j < terms with a nonzero weight, in order. (A Combination built on the
// device would be indexed by its term count, and so live in local memory.)
CUFM_HD float fused_combine(const float* x, const float* k, int tile_elems, const float (&a)[kFusedMaxStages],
                            int terms, float h, int i) {
  float acc = 0.0f;
  CUFM_FUSED_UNROLL
  for (int j = 0; j < kFusedMaxStages; ++j) {
    if (j < terms && a[j] != 0.0f) acc = hd::rn_add(acc, hd::rn_mul(a[j], k[j * tile_elems + i]));
  }
  return hd::rn_add(x[i], hd::rn_mul(h, acc));
}

// x of the tile's points [first, first + rows) into shared memory (and into the trajectory's first
// slot), and a = 0.
CUFM_HD void fused_load_x(const FusedSample& p, int64_t first, int rows, const FusedSmem& s, int tid, int nt) {
  const int W = fused_state_width(p), D = p.dim;
  const int e_end = rows * W;
  for (int e = tid; e < e_end; e += nt) {
    const int row = e / W, col = e - row * W;
    float v = 0.0f;
    if (col < D) {
      v = p.x[(first + row) * D + col];
      if (p.trajectory) p.trajectory[(first + row) * D + col] = v;
    }
    s.x[e] = v;
  }
}

// The model input at time t of the stage point c (over the tile's x and k in shared memory) into
// act[0]: row r = [y (D) | time features | context | one-hot], then with guidance the same points
// with the null class and the null context; then each point-copy's tangent rows: [e (D) | zeros],
// e the q-th unit vector (exact) or the point's q-th probe.
CUFM_HD void fused_input(const FusedSample& p, int64_t first, int rows, const float (&a)[kFusedMaxStages],
                         int terms, float h, float t, const FusedSmem& s, int tid, int nt) {
  const int in = p.net.in[0], ld = fused_ld(p, in), D = p.dim, W = fused_state_width(p),
            tile_elems = p.tile * W;
  const int primal = p.copies * rows, P = p.tangents, layer_rows = fused_layer_rows(p, rows);
  const int e_end = fused_held_rows(p, rows) * ld;
  for (int e = tid; e < e_end; e += nt) {
    const int r = e / ld, col = e - r * ld;
    float v;
    if (r >= layer_rows || col >= in) {  // the tensor cores' padding
      s.act[0][e] = 0.0f;
      continue;
    }
    if (r >= primal) {  // a tangent row
      const int tr = r - primal;
      const int pc = tr / P, q = tr - pc * P;
      const int row = pc % rows;
      v = col >= D ? 0.0f : p.probes ? p.probes[((first + row) * P + q) * D + col] : (col == q ? 1.0f : 0.0f);
      s.act[0][e] = v;
      continue;
    }
    const int copy = r / rows, row = r - copy * rows;
    if (col < D) {
      v = fused_combine(s.x, s.k, tile_elems, a, terms, h, row * W + col);
    } else {
      const int64_t point = first + row;
      int32_t label = -1;
      if (p.num_classes > 0) {
        label = copy == 1 ? p.num_classes
                          : (p.labels ? p.labels[point] : (p.label_all >= 0 ? p.label_all : p.num_classes));
      }
      const float* context = copy == 0 && p.context ? p.context + point * p.context_dim : nullptr;
      v = hd::input_tail_value(t, p.time_features, p.context_dim, context, p.num_classes, label, col - D);
    }
    s.act[0][e] = v;
  }
}

// bf16's bits of x, rounded to nearest even (as __float2bfloat16_rn), and back.
CUFM_HD uint16_t fused_bf16_bits(float x) {
  const uint32_t u = hd::float_to_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // a quiet NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
CUFM_HD float fused_bf16_float(uint16_t b) {
  return hd::bits_to_float(static_cast<uint32_t>(b) << 16);
}

// Layer l's weights (fused_weight_index's layout) and its bias into shared memory; the global reads
// run along the weights' rows.
CUFM_HD void fused_stage_weights(const FusedSample& p, int l, const FusedSmem& s, int tid, int nt) {
  const int in = p.net.in[l], out = p.net.out[l], ld = fused_weight_ld(p, in, out);
  const float* w = p.net.weight[l];
  float* bias = s.w + fused_weight_floats(p, in, out);
  if (fused_bf16(p)) {  // [out padded, ld] bf16 bits, zeros in the padding
    const int e_end = fused_ld(p, out) * ld;
    for (int e = tid; e < e_end; e += nt) {
      const int o = e / ld, k = e - o * ld;
      s.w16[e] = o < out && k < in ? fused_bf16_bits(w[o * in + k]) : uint16_t{0};
    }
  } else if (fused_tensor_cores(p)) {  // [out padded, ld], zeros in the padding
    const int e_end = fused_ld(p, out) * ld;
    for (int e = tid; e < e_end; e += nt) {
      const int o = e / ld, k = e - o * ld;
      s.w[e] = o < out && k < in ? w[o * in + k] : 0.0f;
    }
  } else {
    for (int e = tid; e < in * out; e += nt) {
      const int o = e / in, k = e - o * in;
      s.w[k * ld + o] = w[e];
    }
  }
  for (int o = tid; o < out; o += nt) bias[o] = p.net.bias[l][o];
}

// BF16: layer l's input rows (`rows` held, padding included) as bf16 bits, the tensor cores' A
// operand (in the weights' staging phase: both read only what the last phase finished).
CUFM_HD void fused_input_bf16(const FusedSample& p, int l, int rows, const float* src, const FusedSmem& s,
                              int tid, int nt) {
  const int e_end = rows * fused_ld(p, p.net.in[l]);
  for (int e = tid; e < e_end; e += nt) s.a16[e] = fused_bf16_bits(src[e]);
}

// An operand rounded as the tensor cores round it at tf32 (cvt.rna.tf32.f32: 10 mantissa bits, to
// nearest, ties away from zero), for the CPU twin's emulation.
CUFM_HD float fused_tf32(float x) {
  uint32_t u = hd::float_to_bits(x);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  return hd::bits_to_float(u);
}

// C[r, c] = sum_k A(r, k) B(k, c) over r < R, c < N, k < K, A(r, k) at a[r * a_r + k * a_k] and
// B(k, c) at b[k * b_k + c * b_c]: a work item is a 4 x 4 tile of C, each element summing k from 0
// up, one fmaf a term (tf32: of the operands rounded as the tensor cores round them, the CPU twin's
// emulation); then epi(r, c, sum) for each element of the tile inside C. The fused sampler's layers
// and the fused training step's three products (kernels/fused_train.hpp) are this.
template <class Epi>
CUFM_HD void fused_product(int R, int N, int K, const float* a, int a_r, int a_k, const float* b, int b_k,
                           int b_c, bool tf32, int tid, int nt, Epi epi) {
  const int row_tiles = (R + kFusedTileRows - 1) / kFusedTileRows;
  const int col_tiles = (N + kFusedTileCols - 1) / kFusedTileCols;
  for (int item = tid; item < row_tiles * col_tiles; item += nt) {
    const int r0 = (item / col_tiles) * kFusedTileRows, c0 = (item % col_tiles) * kFusedTileCols;
    float acc[kFusedTileRows][kFusedTileCols] = {};
    for (int k = 0; k < K; ++k) {
      float x[kFusedTileRows], y[kFusedTileCols];
      CUFM_FUSED_UNROLL
      for (int i = 0; i < kFusedTileRows; ++i) x[i] = r0 + i < R ? a[(r0 + i) * a_r + k * a_k] : 0.0f;
      CUFM_FUSED_UNROLL
      for (int j = 0; j < kFusedTileCols; ++j) y[j] = c0 + j < N ? b[k * b_k + (c0 + j) * b_c] : 0.0f;
      if (tf32) {
        CUFM_FUSED_UNROLL
        for (int i = 0; i < kFusedTileRows; ++i) x[i] = fused_tf32(x[i]);
        CUFM_FUSED_UNROLL
        for (int j = 0; j < kFusedTileCols; ++j) y[j] = fused_tf32(y[j]);
      }
      CUFM_FUSED_UNROLL
      for (int i = 0; i < kFusedTileRows; ++i) {
        CUFM_FUSED_UNROLL
        for (int j = 0; j < kFusedTileCols; ++j) acc[i][j] = hd::rn_fma(x[i], y[j], acc[i][j]);
      }
    }
    CUFM_FUSED_UNROLL
    for (int i = 0; i < kFusedTileRows; ++i) {
      CUFM_FUSED_UNROLL
      for (int j = 0; j < kFusedTileCols; ++j) {
        if (r0 + i < R && c0 + j < N) epi(r0 + i, c0 + j, acc[i][j]);
      }
    }
  }
}

// Layer l over R rows: dst[r, o] = sum_k src[r, k] w[o, k], plus bias[o] on the rows r < R_bias,
// then act() when `activate`. A work item is a 4 x 4 tile of (rows, outputs); each output sums k
// from 0 up, one fmaf a term, then adds the bias. With tensor cores (only the CPU twin runs this for
// them) the operands are rounded to tf32 first.
template <class Exp>
CUFM_HD void fused_layer(const FusedSample& p, int l, int R, int R_bias, bool activate, const float* src,
                         float* dst, const FusedSmem& s, int tid, int nt, Exp exp) {
  const int in = p.net.in[l], out = p.net.out[l], ld_in = fused_ld(p, in), ld_out = fused_ld(p, out);
  const bool tf32 = fused_tensor_cores(p);
  // The tensor cores' products run over the padding too (zeros), as DeviceMma's do.
  const int n_in = tf32 ? ld_in : in, n_out = tf32 ? ld_out : out;
  const int wld = fused_weight_ld(p, in, out);  // fused_weight_index's layout
  const float* bias = s.w + fused_weight_floats(p, in, out);
  fused_product(R, n_out, n_in, src, ld_in, 1, s.w, tf32 ? 1 : wld, tf32 ? wld : 1, tf32, tid, nt,
                [&](int r, int c, float acc) {
                  const float z = r < R_bias ? hd::rn_add(acc, bias[c]) : acc;
                  dst[r * ld_out + c] = activate ? hd::activate(p.net.activation, z, exp) : z;
                });
}

// After the tensor cores' products (dst [R, out], row stride fused_ld(out)): the bias on the rows
// r < R_bias, then act() when `activate`.
template <class Exp>
CUFM_HD void fused_bias_act(const FusedSample& p, int l, int R, int R_bias, bool activate, float* dst,
                            const FusedSmem& s, int tid, int nt, Exp exp) {
  const int in = p.net.in[l], out = p.net.out[l], ld = fused_ld(p, out);
  const float* bias = s.w + fused_weight_floats(p, in, out);
  const int e_end = R * out;
  for (int e = tid; e < e_end; e += nt) {
    const int r = e / out, o = e - r * out;
    float* d = dst + r * ld + o;
    const float z = r < R_bias ? hd::rn_add(*d, bias[o]) : *d;
    *d = activate ? hd::activate(p.net.activation, z, exp) : z;
  }
}

// The tensor cores' products as the CPU twin computes them: fused_layer's sums of tf32-rounded
// operands, in fp32, one term at a time (the hardware sums each 8-wide k step in an order of its
// own: the twin matches it to a tolerance, not to the bit).
// At BF16 the products read the bf16 bits (the input's and the staged weights') as the tensor cores
// do; products of bf16 values are exact in fp32.
struct FusedTwinMma {
  CUFM_HD void operator()(const FusedSample& p, int l, int R, const float* src, float* dst,
                          const FusedSmem& s, int tid, int nt) const {
    if (!fused_bf16(p)) {
      fused_layer(p, l, R, 0, false, src, dst, s, tid, nt, hd::FastExp{});
      return;
    }
    const int in = p.net.in[l], out = p.net.out[l];
    const int ld_in = fused_ld(p, in), ld_out = fused_ld(p, out), ld_w = fused_weight_ld(p, in, out);
    for (int e = tid; e < R * ld_out; e += nt) {
      const int r = e / ld_out, o = e - r * ld_out;
      float acc = 0.0f;
      for (int k = 0; k < ld_in; ++k) {
        acc = hd::rn_fma(fused_bf16_float(s.a16[r * ld_in + k]), fused_bf16_float(s.w16[o * ld_w + k]), acc);
      }
      dst[e] = acc;
    }
  }
};

// A hidden layer's activation with tangents (after fused_layer without it): each point-copy's
// pre-activation z [primal rows, out] scales its tangents by act'(z), then becomes act(z).
template <class Exp>
CUFM_HD void fused_tangent_activation(const FusedSample& p, int l, int rows, float* dst, int tid, int nt,
                                      Exp exp) {
  const int out = p.net.out[l], primal = p.copies * rows, P = p.tangents;
  const int e_end = primal * out;
  for (int e = tid; e < e_end; e += nt) {
    const int pc = e / out, col = e - pc * out;
    const float z = dst[e];
    const float g = hd::activate_grad(p.net.activation, z, exp);
    for (int q = 0; q < P; ++q) {
      float* u = dst + static_cast<int64_t>(primal + pc * P + q) * out + col;
      *u = hd::rn_mul(*u, g);
    }
    dst[e] = hd::activate(p.net.activation, z, exp);
  }
}

// The divergence of point-copy pc from its output tangents u [P, D] (rows of the last layer's
// output): sum_q u_q[q] (exact) or (1 / P) sum_q e_q . u_q (Hutchinson), in double.
CUFM_HD float fused_trace(const FusedSample& p, int64_t point, const float* u) {
  const int D = p.dim, P = p.tangents;
  double sum = 0.0;
  for (int q = 0; q < P; ++q) {
    if (!p.probes) {
      sum += u[q * D + q];
    } else {
      const float* e = p.probes + (point * P + q) * D;
      for (int d = 0; d < D; ++d) sum += static_cast<double>(e[d]) * u[q * D + d];
    }
  }
  return static_cast<float>(sum) * (p.probes ? 1.0f / static_cast<float>(P) : 1.0f);
}

// The state's derivative from the last layer's output into k: the velocity [copies x rows, D]
// itself, or with guidance hd::guided(null, conditional, w); with tangents, the divergence (of the
// guided field: the same blend of the two copies' divergences).
CUFM_HD void fused_collect(const FusedSample& p, int64_t first, int rows, const float* v, float* k, int tid,
                           int nt) {
  const int D = p.dim, ld = fused_ld(p, D), W = fused_state_width(p), primal = p.copies * rows;
  const int P = p.tangents;
  const int e_end = rows * W;
  for (int e = tid; e < e_end; e += nt) {
    const int row = e / W, col = e - row * W;
    if (col < D) {
      const int i = row * ld + col;
      k[e] = p.copies == 2 ? hd::guided(v[rows * ld + i], v[i], p.guidance) : v[i];
    } else {  // tangents run fp32: their rows are D wide
      const float* u = v + static_cast<int64_t>(primal + row * P) * D;
      const float cond = fused_trace(p, first + row, u);
      k[e] = p.copies == 2 ? hd::guided(fused_trace(p, first + row, u + static_cast<int64_t>(rows) * P * D),
                                        cond, p.guidance)
                           : cond;
    }
  }
}

// The state = the combination c (each element read before it is written), and x into the
// trajectory's slot.
CUFM_HD void fused_update(const FusedSample& p, int64_t first, int rows, const float (&b)[kFusedMaxStages],
                          float h, int slot, const FusedSmem& s, int tid, int nt) {
  const int D = p.dim, W = fused_state_width(p), tile_elems = p.tile * W;
  const int e_end = rows * W;
  for (int e = tid; e < e_end; e += nt) {
    const float v = fused_combine(s.x, s.k, tile_elems, b, p.tableau.stages, h, e);
    s.x[e] = v;
    const int row = e / W, col = e - row * W;
    if (p.trajectory && col < D) p.trajectory[(static_cast<int64_t>(slot) * p.n + first + row) * D + col] = v;
  }
}

// x into p.x, and a into p.integral.
CUFM_HD void fused_store_x(const FusedSample& p, int64_t first, int rows, const FusedSmem& s, int tid, int nt) {
  const int D = p.dim, W = fused_state_width(p);
  const int e_end = rows * W;
  for (int e = tid; e < e_end; e += nt) {
    const int row = e / W, col = e - row * W;
    if (col < D) {
      p.x[(first + row) * D + col] = s.x[e];
    } else {
      p.integral[first + row] = s.x[e];
    }
  }
}

// ---- the tile's whole integration -----------------------------------------------------------
// The steps of host/solver_driver.hpp's fixed_step, stage by stage, for the tile's points
// [first, first + rows); sync() separates the phases (the kernel's __syncthreads(), the twin's
// nothing).
template <class Exp, class Sync, class Mma>
CUFM_HD void fused_sample_tile(const FusedSample& p, int64_t first, int rows, const FusedSmem& s, int tid,
                               int nt, Exp exp, Sync sync, Mma mma) {
  const hd::FixedTableau& tab = p.tableau;
  const int tile_elems = p.tile * fused_state_width(p);
  const bool tangents = p.tangents > 0;
  fused_load_x(p, first, rows, s, tid, nt);
  sync();
  for (int step = 0; step < p.steps; ++step) {
    const float t = hd::fixed_step_time(p.t0, p.t1, step, p.steps);
    const float tn = hd::fixed_step_time(p.t0, p.t1, step + 1, p.steps);
    const float h = tn - t;
    CUFM_FUSED_UNROLL
    for (int i = 0; i < kFusedMaxStages; ++i) {
      if (i >= tab.stages) break;
      const hd::FixedStage& st = tab.stage[i];
      const float a[kFusedMaxStages] = {st.a[0], st.a[1], st.a[2], 0.0f};
      const float ts = st.c == 0.0f ? t : st.c == 1.0f ? tn : t + st.c * h;
      fused_input(p, first, rows, a, i, i == 0 ? 0.0f : st.scale * h, ts, s, tid, nt);
      const int R = fused_layer_rows(p, rows), primal = p.copies * rows;
      int from = 0;
      for (int l = 0; l < p.net.layers; ++l) {
        const bool hidden = l + 1 < p.net.layers;
        // Selected, not indexed: an index into s.act would put s in local memory on the device.
        float* const src = from == 0 ? s.act[0] : s.act[1];
        float* const dst = from == 0 ? s.act[1] : s.act[0];
        fused_stage_weights(p, l, s, tid, nt);
        if (fused_bf16(p)) fused_input_bf16(p, l, fused_held_rows(p, rows), src, s, tid, nt);
        sync();                       // the input (or the previous layer) and the weights are in place
        if (fused_tensor_cores(p)) {  // the products over every held row, then the bias and activation
          mma(p, l, fused_held_rows(p, rows), src, dst, s, tid, nt);
          sync();
          fused_bias_act(p, l, R, primal, hidden, dst, s, tid, nt, exp);
        } else {
          // The tangents take no bias, and their activation needs the pre-activations: a phase of its own.
          fused_layer(p, l, R, primal, hidden && !tangents, src, dst, s, tid, nt, exp);
        }
        sync();  // the layer is written; the weights may be replaced
        if (hidden && tangents) {
          fused_tangent_activation(p, l, rows, dst, tid, nt, exp);
          sync();
        }
        from = 1 - from;
      }
      fused_collect(p, first, rows, from == 0 ? s.act[0] : s.act[1], s.k + i * tile_elems, tid, nt);
      sync();
    }
    const float b[kFusedMaxStages] = {tab.b[0], tab.b[1], tab.b[2], tab.b[3]};
    fused_update(p, first, rows, b, h, step + 1, s, tid, nt);
    sync();
  }
  fused_store_x(p, first, rows, s, tid, nt);
}

#undef CUFM_FUSED_UNROLL

}  // namespace cufm::cuda
