// The fused training step's block program (issue 23, step 2): one block runs a tile of a training
// batch's rows through the whole model and back. Forward, the layers' pre-activations stay in
// shared memory; the loss and its gradient come from the last layer's output and the rows' targets
// there; backward, each layer's input gradient goes on to the layer below without leaving the SM.
// What leaves it is each block's part of the weight and bias gradients and of the loss: a block owns
// a run of consecutive tiles and adds each tile's sums into its own partial in global memory; a
// second kernel adds the blocks' partials in block order. The tile (the largest whose shared memory
// fits the GPU: a function of the model and of the GPU's model) and the block count (of the batch
// and the tile) never depend on the schedule, and every sum runs in an order fixed by its element
// (a product: k from 0 up, one fmaf a term; a partial: tile after tile), so a step repeats bit for
// bit on one GPU model; on another the tile, and so the last bits, may differ.
//
// Written once as __host__ __device__ phases over (tid, nthreads), as the fused sampler's
// (kernels/fused_sampler.hpp): the kernel (kernels/fused_train.cu) runs them with its threads and
// __syncthreads() between phases; the CPU twin (cpu::fused_train) runs each phase with tid 0 of 1
// thread and computes what each block computes, apart from the activations' exp (the device's
// __expf, the host's polynomial).
//
// The input rows are fm_prepare's (one pass of B x in floats, read once here); the targets u are
// drawn again inside the block, as fm_loss_grad draws them (the kernel's FmTargets), so the model's
// output and its gradient never touch global memory.
//
// Napkin math at R2 w128 (D 2, 4 hidden layers of 128, batch 2^18, fp32): 6 x 50k FLOP a row, 79
// GFLOP a step on the CUDA cores. A tile of 32 rows stages each layer's weights twice (forward and
// backward, ~400 KB from L2) and reads and writes its block's partial once (~400 KB, L2-resident for
// 256 blocks x 200 KB): ~24 FLOP a byte of L2 traffic. The layered step writes and reads each
// layer's activations and gradients in global memory and launches ~25 kernels.
#pragma once

#include <cstdint>
#include <string>

#include "cufm/detail/hd.hpp"
#include "cufm/detail/math.hpp"
#include "cufm/device.hpp"
#include "cufm/model.hpp"
#include "kernels/fused_sampler.hpp"

namespace cufm::cuda {

// What the fused step takes (fused_train_refusal says why not, naming the layered path): fp32, tf32
// or bf16, widths up to kFusedMaxWidth, up to kFusedMaxLayers layers, D up to kFusedMaxDim.
constexpr int kFusedTrainMaxBlocks = 256;  // blocks of a step (each owns a partial of the gradient)
constexpr int kFusedTrainThreads = 256;    // the kernel's threads (a warp's scratch each, at tf32)

struct FusedTrain {
  // The model: layer l's weights [out, in] at params + w_off[l] with rows ld[l] apart, its bias
  // [out] at params + b_off[l]; the gradients go to the same offsets of a buffer of `total` floats
  // (the padding between them is never written).
  int layers = 0;
  int model_layers = 0;
  int in[kFusedMaxLayers] = {};
  int out[kFusedMaxLayers] = {};
  int ld[kFusedMaxLayers] = {};
  int64_t w_off[kFusedMaxLayers] = {};
  int64_t b_off[kFusedMaxLayers] = {};
  int64_t total = 0;
  Activation activation = Activation::SiLU;
  const float* params = nullptr;
  // The batch: B rows of the first layer's input [B, input_ld] (fm_prepare's), D outputs a row.
  int64_t batch = 0;
  int dim = 0;
  const float* input = nullptr;
  int input_ld = 0;
  float scale = 0.0f;  // dL/dv = scale (v - u): 2 / (B D), computed in float as fm_loss_grad does
  // The geometry: `tile` rows a tile; block g of `blocks` runs tiles [g T / G, (g + 1) T / G).
  int tile = 32;
  int blocks = 1;
  float* partial = nullptr;        // [blocks, total]: each block's sums of the gradient
  double* loss_partial = nullptr;  // [blocks]: each block's sum of squared errors
  // FP32: every product on the CUDA cores, one fmaf a term. TF32 and BF16: on the tensor cores
  // (nvcuda::wmma 16 x 16 tiles, fp32 accumulation; k steps of 8 over the operands rounded to
  // tf32, or of 16 over their bf16 copies), the tile's rows and every width padded to 16 with
  // zeros; the tile is then a multiple of 16.
  Precision precision = Precision::FP32;
};

// The layer geometry and offsets of `model` over its parameters laid out by `layout_of` (a
// cufm::ParamLayout on the host, the CUDA backend's padded layout on the device): layout_of(l)
// gives {row stride, weight offset, bias offset}.
struct FusedTrainLayer {
  int ld;
  int64_t w_off, b_off;
};
template <class LayoutOf>
FusedTrain fused_train_of(const MlpConfig& model, const float* params, int64_t total, LayoutOf layout_of) {
  FusedTrain p;
  p.model_layers = model.num_layers();
  p.layers = model.num_layers() < kFusedMaxLayers ? model.num_layers() : kFusedMaxLayers;
  p.activation = model.activation;
  for (int l = 0; l < p.layers; ++l) {
    p.in[l] = model.layer_in(l);
    p.out[l] = model.layer_out(l);
    const FusedTrainLayer g = layout_of(l);
    p.ld[l] = g.ld;
    p.w_off[l] = g.w_off;
    p.b_off[l] = g.b_off;
  }
  p.total = total;
  p.params = params;
  p.dim = model.data_dim;
  return p;
}

// The step's blocks for a batch: one per tile up to kFusedTrainMaxBlocks (a function of the batch
// and the tile alone).
CUFM_HD int fused_train_blocks(int64_t batch, int tile) {
  const int64_t tiles = (batch + tile - 1) / tile;
  return static_cast<int>(tiles < kFusedTrainMaxBlocks ? tiles : kFusedTrainMaxBlocks);
}

// ---- the tensor cores' padding ---------------------------------------------------------------------
CUFM_HD bool fused_train_tc(const FusedTrain& p) {
  return p.precision == Precision::TF32 || p.precision == Precision::BF16;
}
// BF16: the products read bf16 copies of their operands (the weights staged as bf16; the layer's
// input and the gradient kept beside their fp32 values), k steps of 16.
CUFM_HD bool fused_train_bf16(const FusedTrain& p) {
  return p.precision == Precision::BF16;
}
// An activation row's stride for a layer `width` wide: the width on the CUDA cores, padded to 16 on
// the tensor cores.
CUFM_HD int fused_train_ld(const FusedTrain& p, int width) {
  return fused_train_tc(p) ? fused_round_up(width, kFusedMma) : width;
}
// The rows the products run over: the tile's, padded to 16 on the tensor cores (the padding rows of
// the input and of the loss's gradient are zeros, so they add nothing to the weights' gradient).
CUFM_HD int fused_train_rows(const FusedTrain& p, int rows) {
  return fused_train_tc(p) ? fused_round_up(rows, kFusedMma) : rows;
}
// The staged weights' row stride on the tensor cores, in elements: W [ld(out), ld(in) + 4 floats or
// + 8 bf16] as it is, zeros in the padding (the forward reads it as the column-major B operand, the
// backward as the row-major one; ldm a multiple of 16 bytes).
CUFM_HD int fused_train_wld(const FusedTrain& p, int in) {
  return fused_train_ld(p, in) + (fused_train_bf16(p) ? 8 : 4);
}

// ---- shared memory -----------------------------------------------------------------------------
// A block's shared memory, every region on 32 bytes: the input rows a0 [T, in0]; each hidden
// layer's pre-activations z_l [T, out_l], one after the other from z (fused_train_z); the
// activation a [T, widest hidden]; the output gradients g0, g1 [T, widest layer output]; the
// targets u [T, D]; one layer's staged weights; two biases (layer l's in slot l % 2: a phase may
// read one while the next is staged); each row's squared error (double) [T]; at tf32 a 16 x 16
// scratch per warp (the weights' gradient tiles on their way to the partial). Widths as held
// (fused_train_ld). BF16 adds the bf16 copies of the layer's input x16 [T, widest input] and of the
// gradient g16 [T, widest layer output], and stages the weights as bf16 (w16, at w).
// (Pointers computed, not arrays indexed by the layer: an index into an array here would put it in
// local memory on the device.)
struct FusedTrainSmem {
  float* a0;
  float* z;
  float* a;
  float* g0;
  float* g1;
  float* u;
  float* w;
  float* bias;  // [2, widest layer output as held]
  double* row_loss;
  float* scratch;
  uint16_t* w16;  // BF16: the staged weights' bits (at w)
  uint16_t* x16;  // BF16: the layer's input as bf16 bits
  uint16_t* g16;  // BF16: the gradient as bf16 bits
};

CUFM_HD int fused_train_widest_hidden(const FusedTrain& p) {
  int w = 0;
  for (int l = 0; l + 1 < p.layers; ++l) w = w > p.out[l] ? w : p.out[l];
  return fused_train_ld(p, w);
}
CUFM_HD int fused_train_widest_out(const FusedTrain& p) {
  int w = 0;
  for (int l = 0; l < p.layers; ++l) w = w > p.out[l] ? w : p.out[l];
  return fused_train_ld(p, w);
}
// A staged layer's weights. CUDA cores: forward W^T [in, out + 1] (the odd stride spreads the
// staging's transposed writes over the banks), backward W [out, in] as it is. Tensor cores:
// [ld(out), fused_train_wld(in)] both ways.
CUFM_HD int fused_train_weight_floats(const FusedTrain& p) {
  int m = 0;
  for (int l = 0; l < p.layers; ++l) {
    const int f = fused_train_bf16(p) ? (fused_train_ld(p, p.out[l]) * fused_train_wld(p, p.in[l]) + 1) / 2
                  : fused_train_tc(p) ? fused_train_ld(p, p.out[l]) * fused_train_wld(p, p.in[l])
                                      : p.in[l] * (p.out[l] + 1);
    m = m > f ? m : f;
  }
  return m;
}
CUFM_HD int64_t fused_train_scratch_floats(const FusedTrain& p) {
  return fused_train_tc(p) ? (kFusedTrainThreads / 32) * kFusedMma * kFusedMma : 0;
}
// BF16: floats of the bf16 copies x16 and g16 (two values a float).
CUFM_HD int64_t fused_train_x16_floats(const FusedTrain& p) {
  const int widest = fused_train_ld(p, p.in[0]) > fused_train_widest_hidden(p) ? fused_train_ld(p, p.in[0])
                                                                               : fused_train_widest_hidden(p);
  return fused_train_bf16(p) ? (static_cast<int64_t>(p.tile) * widest + 1) / 2 : 0;
}
CUFM_HD int64_t fused_train_g16_floats(const FusedTrain& p) {
  return fused_train_bf16(p) ? (static_cast<int64_t>(p.tile) * fused_train_widest_out(p) + 1) / 2 : 0;
}

CUFM_HD int64_t fused_train_smem_floats(const FusedTrain& p) {
  const int64_t T = p.tile;
  int64_t f = fused_align8(T * fused_train_ld(p, p.in[0]));
  for (int l = 0; l + 1 < p.layers; ++l) f += fused_align8(T * fused_train_ld(p, p.out[l]));
  f += fused_align8(T * fused_train_widest_hidden(p));
  f += 2 * fused_align8(T * fused_train_widest_out(p));
  f += fused_align8(T * p.dim);
  f += fused_align8(fused_train_weight_floats(p)) + fused_align8(2 * fused_train_widest_out(p));
  f += fused_align8(2 * T);  // the doubles
  f += fused_align8(fused_train_scratch_floats(p));
  f += fused_align8(fused_train_x16_floats(p)) + fused_align8(fused_train_g16_floats(p));
  return f;
}

CUFM_HD FusedTrainSmem fused_train_smem_carve(const FusedTrain& p, float* base) {
  const int64_t T = p.tile;
  FusedTrainSmem s{};
  float* at = base;
  s.a0 = at;
  at += fused_align8(T * fused_train_ld(p, p.in[0]));
  s.z = at;
  for (int l = 0; l + 1 < p.layers; ++l) at += fused_align8(T * fused_train_ld(p, p.out[l]));
  s.a = at;
  at += fused_align8(T * fused_train_widest_hidden(p));
  s.g0 = at;
  at += fused_align8(T * fused_train_widest_out(p));
  s.g1 = at;
  at += fused_align8(T * fused_train_widest_out(p));
  s.u = at;
  at += fused_align8(T * p.dim);
  s.w = at;
  at += fused_align8(fused_train_weight_floats(p));
  s.bias = at;
  at += fused_align8(2 * fused_train_widest_out(p));
  s.row_loss = reinterpret_cast<double*>(at);
  at += fused_align8(2 * T);
  s.scratch = at;
  at += fused_align8(fused_train_scratch_floats(p));
  s.w16 = reinterpret_cast<uint16_t*>(s.w);
  s.x16 = fused_train_bf16(p) ? reinterpret_cast<uint16_t*>(at) : nullptr;
  at += fused_align8(fused_train_x16_floats(p));
  s.g16 = fused_train_bf16(p) ? reinterpret_cast<uint16_t*>(at) : nullptr;
  return s;
}

// Hidden layer l's pre-activations [T, ld(out_l)].
CUFM_HD float* fused_train_z(const FusedTrain& p, const FusedTrainSmem& s, int l) {
  float* z = s.z;
  for (int j = 0; j < l; ++j) z += fused_align8(static_cast<int64_t>(p.tile) * fused_train_ld(p, p.out[j]));
  return z;
}
// Layer l's staged bias (slot l % 2).
CUFM_HD float* fused_train_bias(const FusedTrain& p, const FusedTrainSmem& s, int l) {
  return s.bias + (l % 2) * fused_train_widest_out(p);
}

// Empty where the fused step trains this model at this precision; else why not.
inline std::string fused_train_refusal(const MlpConfig& model, Precision precision) {
  if (precision != Precision::FP32 && precision != Precision::TF32 && precision != Precision::BF16) {
    return "the fused training step runs fp32, tf32 and bf16, not " + std::string(to_string(precision)) +
           ": use the layered path";
  }
  if (model.num_layers() > kFusedMaxLayers) {
    return "the model has " + std::to_string(model.num_layers()) + " layers; the fused step takes up to " +
           std::to_string(kFusedMaxLayers) + ": use the layered path";
  }
  if (model.data_dim > kFusedMaxDim) {
    return "D = " + std::to_string(model.data_dim) + " is above the fused step's " +
           std::to_string(kFusedMaxDim) + ": use the layered path";
  }
  for (int l = 0; l < model.num_layers(); ++l) {
    const int w = model.layer_in(l);
    if (w > kFusedMaxWidth) {
      return "layer " + std::to_string(l) + " is " + std::to_string(w) +
             " wide; the fused step takes widths up to " + std::to_string(kFusedMaxWidth) +
             ": use the layered path";
    }
  }
  return {};
}

// Empty where p describes a step the program can run (its layers, geometry and arrays agree),
// else what is wrong: the launcher's and the twin's check.
inline std::string fused_train_error(const FusedTrain& p) {
  if (p.layers < 1 || p.layers > kFusedMaxLayers || p.model_layers != p.layers) {
    return "the fused step takes 1 to " + std::to_string(kFusedMaxLayers) + " layers, got " +
           std::to_string(p.model_layers);
  }
  if (p.batch < 1 || p.batch > 0x7FFFFFFF) return "the batch must hold 1 to 2^31 - 1 rows";
  if (p.dim < 1 || p.dim > kFusedMaxDim || p.out[p.layers - 1] != p.dim) {
    return "the last layer must give D outputs, D in [1, " + std::to_string(kFusedMaxDim) + "]";
  }
  for (int l = 0; l < p.layers; ++l) {
    if (p.in[l] < 1 || p.in[l] > kFusedMaxWidth || p.out[l] < 1 || p.out[l] > kFusedMaxWidth) {
      return "layer " + std::to_string(l) + " is not 1 to " + std::to_string(kFusedMaxWidth) + " wide";
    }
    if (l > 0 && p.in[l] != p.out[l - 1])
      return "layer " + std::to_string(l) + "'s input is not the last output";
    if (p.ld[l] < p.in[l] || p.w_off[l] < 0 || p.b_off[l] < 0 ||
        p.w_off[l] + static_cast<int64_t>(p.out[l] - 1) * p.ld[l] + p.in[l] > p.total ||
        p.b_off[l] + p.out[l] > p.total) {
      return "layer " + std::to_string(l) + "'s weights or bias lie outside the " + std::to_string(p.total) +
             " parameters";
    }
  }
  if (p.precision != Precision::FP32 && p.precision != Precision::TF32 && p.precision != Precision::BF16) {
    return "the fused step runs fp32, tf32 and bf16, not " + std::string(to_string(p.precision));
  }
  if (fused_train_tc(p) && p.tile % kFusedMma != 0) {
    return "on the tensor cores the tile must be a multiple of 16 rows, got " + std::to_string(p.tile);
  }
  const int64_t tiles = p.tile >= 1 ? (p.batch + p.tile - 1) / p.tile : 0;
  if (p.tile < 1 || p.blocks < 1 || p.blocks > tiles || p.blocks > kFusedTrainMaxBlocks) {
    return "tile " + std::to_string(p.tile) + " and blocks " + std::to_string(p.blocks) +
           " do not cut the batch into 1 to " + std::to_string(kFusedTrainMaxBlocks) + " runs of tiles";
  }
  if (!p.params || !p.input || p.input_ld < p.in[0] || !p.partial || !p.loss_partial) {
    return "params, input (input_ld >= the input width), partial and loss_partial must be set";
  }
  return {};
}

// ---- the phases ----------------------------------------------------------------------------------

#if defined(__CUDA_ARCH__)
#define CUFM_FUSED_TRAIN_UNROLL _Pragma("unroll")
#else
#define CUFM_FUSED_TRAIN_UNROLL
#endif

// Layer l's weights into shared memory and its bias into its slot. CUDA cores: transposed for the
// forward (W^T [in, out + 1]) or as they are for the backward (W [out, in]). Tensor cores: as they
// are, [ld(out), wld(in)], zeros in the padding (bias too). The global reads run along the rows.
CUFM_HD void fused_train_stage(const FusedTrain& p, int l, bool forward, const FusedTrainSmem& s, int tid,
                               int nt) {
  const int in = p.in[l], out = p.out[l], ld = p.ld[l];
  const float* w = p.params + p.w_off[l];
  float* bias = fused_train_bias(p, s, l);
  if (fused_train_tc(p)) {
    const int wld = fused_train_wld(p, in), e_end = fused_train_ld(p, out) * wld;
    const bool bf16 = fused_train_bf16(p);
    for (int e = tid; e < e_end; e += nt) {
      const int o = e / wld, k = e - o * wld;
      const float v = o < out && k < in ? w[static_cast<int64_t>(o) * ld + k] : 0.0f;
      if (bf16) {
        s.w16[e] = fused_bf16_bits(v);
      } else {
        s.w[e] = v;
      }
    }
    for (int o = tid; o < fused_train_ld(p, out); o += nt)
      bias[o] = o < out ? p.params[p.b_off[l] + o] : 0.0f;
    return;
  }
  for (int e = tid; e < in * out; e += nt) {
    const int o = e / in, k = e - o * in;
    s.w[forward ? k * (out + 1) + o : e] = w[static_cast<int64_t>(o) * ld + k];
  }
  if (forward) {
    for (int o = tid; o < out; o += nt) bias[o] = p.params[p.b_off[l] + o];
  }
}

// The tile's input rows into a0 (the padding rows and columns as zeros), its targets into u
// (targets(row, group, u4): u of columns [4 group, 4 group + 4) of batch row `row`), and layer 0's
// weights.
template <class Targets>
CUFM_HD void fused_train_load(const FusedTrain& p, int64_t first, int rows, const FusedTrainSmem& s, int tid,
                              int nt, Targets targets) {
  const int in = p.in[0], ld = fused_train_ld(p, in), D = p.dim, groups = (D + 3) / 4;
  const int e_end = fused_train_rows(p, rows) * ld;
  for (int e = tid; e < e_end; e += nt) {
    const int r = e / ld, c = e - r * ld;
    s.a0[e] = r < rows && c < in ? p.input[(first + r) * p.input_ld + c] : 0.0f;
    if (s.x16) s.x16[e] = fused_bf16_bits(s.a0[e]);
  }
  for (int e = tid; e < rows * groups; e += nt) {
    const int r = e / groups, g = e - r * groups;
    float u4[4];
    targets(first + r, g, u4);
    CUFM_FUSED_TRAIN_UNROLL
    for (int k = 0; k < 4; ++k) {
      if (4 * g + k < D) s.u[r * D + 4 * g + k] = u4[k];
    }
  }
  fused_train_stage(p, 0, true, s, tid, nt);
}

// The input of layer l as the tile holds it: a0, or the activation of layer l - 1 (in s.a).
CUFM_HD const float* fused_train_layer_input(const FusedTrainSmem& s, int l) {
  return l == 0 ? s.a0 : s.a;
}

// The tensor cores' three products of layer l over R rows (a multiple of 16), as the CPU twin
// computes them (FusedTrainTwinMma: over the padded shapes, the operands rounded to tf32, or at bf16
// read from the same bf16 copies; the hardware sums each k step in an order, and with roundings, of
// its own, so the twin matches it to a tolerance). The kernel's DeviceMma (kernels/fused_train.cu) runs them
// with nvcuda::wmma.
//   forward: dst [R, ld(out)] = x [R, ld(in)] W^T, no bias;
//   dgrad:   dst [R, ld(in)] = g [R, ld(out)] W, no act';
//   wgrad:   the block's partial of dW (+)= g^T x over the R rows, for o < out and k < in only.
struct FusedTrainTwinMma {
  CUFM_HD static float bf(uint16_t b) { return fused_bf16_float(b); }
  CUFM_HD void forward(const FusedTrain& p, int l, int R, const float* x, float* dst, const FusedTrainSmem& s,
                       int tid, int nt) const {
    const int ldi = fused_train_ld(p, p.in[l]), ldo = fused_train_ld(p, p.out[l]),
              wld = fused_train_wld(p, p.in[l]);
    if (fused_train_bf16(p)) {  // the bf16 copies, as the tensor cores read them
      for (int e = tid; e < R * ldo; e += nt) {
        const int r = e / ldo, c = e - r * ldo;
        float acc = 0.0f;
        for (int k = 0; k < ldi; ++k) acc = hd::rn_fma(bf(s.x16[r * ldi + k]), bf(s.w16[c * wld + k]), acc);
        dst[e] = acc;
      }
      return;
    }
    fused_product(R, ldo, ldi, x, ldi, 1, s.w, 1, wld, true, tid, nt,
                  [&](int r, int c, float acc) { dst[r * ldo + c] = acc; });
  }
  CUFM_HD void dgrad(const FusedTrain& p, int l, int R, const float* g, float* dst, const FusedTrainSmem& s,
                     int tid, int nt) const {
    const int ldi = fused_train_ld(p, p.in[l]), ldo = fused_train_ld(p, p.out[l]),
              wld = fused_train_wld(p, p.in[l]);
    if (fused_train_bf16(p)) {
      for (int e = tid; e < R * ldi; e += nt) {
        const int r = e / ldi, c = e - r * ldi;
        float acc = 0.0f;
        for (int o = 0; o < ldo; ++o) acc = hd::rn_fma(bf(s.g16[r * ldo + o]), bf(s.w16[o * wld + c]), acc);
        dst[e] = acc;
      }
      return;
    }
    fused_product(R, ldi, ldo, g, ldo, 1, s.w, wld, 1, true, tid, nt,
                  [&](int r, int c, float acc) { dst[r * ldi + c] = acc; });
  }
  CUFM_HD void wgrad(const FusedTrain& p, int l, int R, const float* g, const float* x, float* dw,
                     bool first_tile, const FusedTrainSmem& s, int tid, int nt) const {
    const int in = p.in[l], out = p.out[l], ld = p.ld[l];
    const int ldi = fused_train_ld(p, in), ldo = fused_train_ld(p, out);
    const auto add = [&](int o, int k, float acc) {
      float* d = dw + static_cast<int64_t>(o) * ld + k;
      *d = first_tile ? acc : hd::rn_add(*d, acc);
    };
    if (fused_train_bf16(p)) {
      for (int e = tid; e < out * in; e += nt) {
        const int o = e / in, k = e - o * in;
        float acc = 0.0f;
        for (int r = 0; r < R; ++r) acc = hd::rn_fma(bf(s.g16[r * ldo + o]), bf(s.x16[r * ldi + k]), acc);
        add(o, k, acc);
      }
      return;
    }
    fused_product(out, in, R, g, 1, ldo, x, ldi, 1, true, tid, nt, add);
  }
};

// The whole tile [first, first + rows): forward, loss, backward, its sums added into the block's
// partial (first_tile: written over). Returns the tile's sum of squared errors (on tid 0; the twin's
// one thread), summed in double row by row in order. sync() separates the phases; mma runs the
// tensor cores' products (tf32, bf16).
template <class Exp, class Sync, class Targets, class Mma>
CUFM_HD double fused_train_tile(const FusedTrain& p, int block, int64_t first, int rows, bool first_tile,
                                const FusedTrainSmem& s, int tid, int nt, Exp exp, Sync sync, Targets targets,
                                Mma mma) {
  const int L = p.layers, D = p.dim, ldD = fused_train_ld(p, D);
  const bool tc = fused_train_tc(p);
  const int R = fused_train_rows(p, rows);  // the rows the products run over
  fused_train_load(p, first, rows, s, tid, nt, targets);
  sync();
  // Forward: z_l = a W^T + b, then a = act(z_l) beside it with the next layer's weights.
  for (int l = 0; l < L; ++l) {
    const int in = p.in[l], out = p.out[l], ldo = fused_train_ld(p, out);
    const bool hidden = l + 1 < L;
    float* const dst =
        hidden ? fused_train_z(p, s, l) : s.g0;  // the output v lands where its gradient will be
    const float* src = fused_train_layer_input(s, l);
    const float* bias = fused_train_bias(p, s, l);
    if (tc) {
      mma.forward(p, l, R, src, dst, s, tid, nt);  // the bias follows, in the next phase
    } else {
      fused_product(rows, out, in, src, in, 1, s.w, out + 1, 1, false, tid, nt,
                    [&](int r, int c, float acc) { dst[r * out + c] = hd::rn_add(acc, bias[c]); });
    }
    sync();
    if (hidden) {
      for (int e = tid; e < R * ldo; e += nt) {
        // The tensor cores' padding rows: zeros (act(0) = 0), whatever the bias would make of them.
        const float z = !tc ? dst[e] : e / ldo >= rows ? 0.0f : hd::rn_add(dst[e], bias[e % ldo]);
        if (tc) dst[e] = z;
        s.a[e] = hd::activate(p.activation, z, exp);
        if (s.x16) s.x16[e] = fused_bf16_bits(s.a[e]);  // the next layer's input
      }
      fused_train_stage(p, l + 1, true, s, tid, nt);
    } else {
      // dL/dv = scale (v - u) in place of v, each row's squared error in double (the padding: zeros);
      // the last layer's weights staged again for the backward (on the tensor cores they are staged
      // one way for both).
      for (int r = tid; r < R; r += nt) {
        double sum = 0.0;
        for (int c = 0; c < ldD; ++c) {
          float* v = s.g0 + r * ldD + c;
          if (r >= rows || c >= D) {
            *v = 0.0f;
            if (s.g16) s.g16[r * ldD + c] = 0;
            continue;
          }
          const float diff = hd::rn_sub(tc ? hd::rn_add(*v, bias[c]) : *v, s.u[r * D + c]);
          *v = hd::rn_mul(diff, p.scale);
          if (s.g16) s.g16[r * ldD + c] = fused_bf16_bits(*v);
          sum += static_cast<double>(diff) * diff;
        }
        if (r < rows) s.row_loss[r] = sum;
      }
      if (!tc) fused_train_stage(p, l, false, s, tid, nt);
    }
    sync();
  }
  double loss = 0.0;
  if (tid == 0) {
    for (int r = 0; r < rows; ++r) loss += s.row_loss[r];
  }
  // Backward: layer l's gradient g (its output's) gives dW_l = g^T x and db_l = sum_r g (into the
  // partial) and, below the first layer, the next gradient (g W_l) * act'(z_{l-1}).
  int cur = 0;
  for (int l = L - 1; l >= 0; --l) {
    const int in = p.in[l], out = p.out[l], ld = p.ld[l];
    const int ldi = fused_train_ld(p, in), ldo = fused_train_ld(p, out);
    const float* g = cur == 0 ? s.g0 : s.g1;
    float* const next = cur == 0 ? s.g1 : s.g0;
    const float* x = fused_train_layer_input(s, l);
    float* dw = p.partial + static_cast<int64_t>(block) * p.total + p.w_off[l];
    float* db = p.partial + static_cast<int64_t>(block) * p.total + p.b_off[l];
    if (tc) {
      mma.wgrad(p, l, R, g, x, dw, first_tile, s, tid, nt);
    } else {
      fused_product(out, in, rows, g, 1, out, x, in, 1, false, tid, nt, [&](int o, int k, float acc) {
        float* d = dw + static_cast<int64_t>(o) * ld + k;
        *d = first_tile ? acc : hd::rn_add(*d, acc);
      });
    }
    for (int o = tid; o < out; o += nt) {
      float acc = 0.0f;
      for (int r = 0; r < rows; ++r) acc = hd::rn_add(acc, g[r * ldo + o]);
      db[o] = first_tile ? acc : hd::rn_add(db[o], acc);
    }
    if (l > 0) {
      const float* z = fused_train_z(p, s, l - 1);
      const Activation act = p.activation;
      if (tc) {
        mma.dgrad(p, l, R, g, next, s, tid, nt);  // act' follows, in the next phase
      } else {
        fused_product(rows, in, out, g, out, 1, s.w, in, 1, false, tid, nt, [&](int r, int k, float acc) {
          next[r * in + k] = hd::rn_mul(acc, hd::activate_grad(act, z[r * in + k], exp));
        });
      }
    }
    sync();
    if (l > 0) {  // layer l - 1's weights and input, in place of layer l's
      fused_train_stage(p, l - 1, false, s, tid, nt);
      if (l - 1 > 0) {
        const int w = fused_train_ld(p, p.out[l - 2]);
        const float* z = fused_train_z(p, s, l - 2);
        for (int e = tid; e < R * w; e += nt) {
          s.a[e] = hd::activate(p.activation, z[e], exp);
          if (s.x16) s.x16[e] = fused_bf16_bits(s.a[e]);
        }
      } else if (s.x16) {  // layer 0's input
        const int w = fused_train_ld(p, p.in[0]);
        for (int e = tid; e < R * w; e += nt) s.x16[e] = fused_bf16_bits(s.a0[e]);
      }
      if (tc) {
        const float* z = fused_train_z(p, s, l - 1);
        for (int e = tid; e < R * ldi; e += nt) {
          next[e] = hd::rn_mul(next[e], hd::activate_grad(p.activation, z[e], exp));
          if (s.g16) s.g16[e] = fused_bf16_bits(next[e]);
        }
      }
      sync();
    }
    cur = 1 - cur;
  }
  return loss;
}

// Block g's tiles, in order: [g T / G, (g + 1) T / G) of the T tiles; its loss sum into
// loss_partial[g] (tid 0).
template <class Exp, class Sync, class Targets, class Mma>
CUFM_HD void fused_train_block(const FusedTrain& p, int block, const FusedTrainSmem& s, int tid, int nt,
                               Exp exp, Sync sync, Targets targets, Mma mma) {
  const int64_t tiles = (p.batch + p.tile - 1) / p.tile;
  const int64_t t0 = tiles * block / p.blocks, t1 = tiles * (block + 1) / p.blocks;
  double loss = 0.0;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t first = t * p.tile;
    const int rows = static_cast<int>(p.batch - first < p.tile ? p.batch - first : p.tile);
    loss += fused_train_tile(p, block, first, rows, t == t0, s, tid, nt, exp, sync, targets, mma);
    sync();  // the tile's shared memory is free again
  }
  if (tid == 0) p.loss_partial[block] = loss;
}

// The second pass, element e of the gradient: the blocks' partials added in block order, in
// double, rounded once.
CUFM_HD float fused_train_gradient(const FusedTrain& p, int64_t e) {
  double sum = 0.0;
  for (int g = 0; g < p.blocks; ++g) sum += p.partial[static_cast<int64_t>(g) * p.total + e];
  return static_cast<float>(sum);
}
// ... and the loss: the blocks' sums in block order over B D.
CUFM_HD float fused_train_loss(const FusedTrain& p) {
  double sum = 0.0;
  for (int g = 0; g < p.blocks; ++g) sum += p.loss_partial[g];
  return static_cast<float>(sum / (static_cast<double>(p.batch) * p.dim));
}

#undef CUFM_FUSED_TRAIN_UNROLL

}  // namespace cufm::cuda
