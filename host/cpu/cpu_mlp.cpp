// The CPU backend's MLP: every layer's GEMM through OpenBLAS sgemm (row-major, W as nn.Linear
// stores it; the bias is the GEMM's initial accumulator), then one vectorised pass per layer for the
// activation (forward) or for its derivative and the bias gradient (backward). At width 512 and
// batch 4096 the GEMMs are
// ~19 GFLOP per step and the fused passes move ~100 MB, so the step runs at the sgemm rate.
//
// Precision::BF16 (MlpWorkspace::precision) runs the same layers with the GPU's bf16 semantics: every
// GEMM takes bf16 inputs (the input, the weights, the activations, the backward's gradients, each
// rounded once, to nearest even) and accumulates and writes fp32 (gemm_bf16); the bias, the
// activation and its derivative, and the bias gradients work in fp32 on the fp32 GEMM outputs, and
// the activation passes write the next GEMM's bf16 input directly.

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cufm/detail/math.hpp"
#include "cufm/error.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "host/cpu/cpu_simd.hpp"

namespace cufm::cpu {

namespace {

constexpr int kRowBlock = 256;  // rows per block of the deterministic bias-gradient sum

// The activation's result into an fp32 activation, or rounded into a bf16 one (BF16: the next
// GEMM's input).
inline void put_act(float& out, float v) {
  out = v;
}
inline void put_act(uint16_t& out, float v) {
  out = bf16_bits(v);
}

// The activation is a template parameter so that each loop body is branch-free and vectorises.
// pre[r, :] += bias (the GEMM wrote x W^T alone), then act = act(pre): one pass for both.
template <Activation A, typename Out>
CUFM_SIMD_CLONES void act_rows(float* pre, const float* bias, int64_t r0, int64_t r1, int width, Out* act) {
  for (int64_t r = r0; r < r1; ++r) {
    float* z = pre + r * width;
    Out* a = act + r * width;
    for (int j = 0; j < width; ++j) {
      const float v = z[j] + bias[j];
      z[j] = v;
      put_act(a[j], hd::activate(A, v));
    }
  }
}

template <typename Out>
void act_rows(Activation a, float* pre, const float* bias, int64_t r0, int64_t r1, int width, Out* act) {
  const DenormalsAreZero daz;
  switch (a) {
    case Activation::ReLU:
      return act_rows<Activation::ReLU>(pre, bias, r0, r1, width, act);
    case Activation::GELU:
      return act_rows<Activation::GELU>(pre, bias, r0, r1, width, act);
    default:
      return act_rows<Activation::SiLU>(pre, bias, r0, r1, width, act);
  }
}

// dz = da * act'(pre) in place, and the block's column sums of dz into colsum. The same rows of
// `next` ([B, next_width], or nullptr) are zeroed on the way: the next input-gradient GEMM
// accumulates onto them (beta = 1), which spares OpenBLAS its own zeroing pass over the output,
// here overlapped with the activation's arithmetic.
template <Activation A>
CUFM_SIMD_CLONES void act_grad_rows(const float* pre, int64_t r0, int64_t r1, int width, float* da,
                                    float* colsum, float* next, int next_width) {
  std::fill(colsum, colsum + width, 0.0f);
  for (int64_t r = r0; r < r1; ++r) {
    const float* z = pre + r * width;
    float* d = da + r * width;
    for (int j = 0; j < width; ++j) {
      const float g = d[j] * hd::activate_grad(A, z[j]);
      d[j] = g;
      colsum[j] += g;
    }
    if (next) std::fill(next + r * next_width, next + (r + 1) * next_width, 0.0f);
  }
}

void act_grad_rows(Activation a, const float* pre, int64_t r0, int64_t r1, int width, float* da,
                   float* colsum, float* next, int next_width) {
  const DenormalsAreZero daz;
  switch (a) {
    case Activation::ReLU:
      return act_grad_rows<Activation::ReLU>(pre, r0, r1, width, da, colsum, next, next_width);
    case Activation::GELU:
      return act_grad_rows<Activation::GELU>(pre, r0, r1, width, da, colsum, next, next_width);
    default:
      return act_grad_rows<Activation::SiLU>(pre, r0, r1, width, da, colsum, next, next_width);
  }
}

// BF16: dz = da * act'(pre) in fp32, its column sums into colsum, and dz rounded to bf16 into dz16
// (the next GEMMs' input).
template <Activation A>
CUFM_SIMD_CLONES void act_grad_rows_bf16(const float* pre, int64_t r0, int64_t r1, int width, const float* da,
                                         float* colsum, uint16_t* dz16) {
  std::fill(colsum, colsum + width, 0.0f);
  for (int64_t r = r0; r < r1; ++r) {
    const float* z = pre + r * width;
    const float* d = da + r * width;
    uint16_t* o = dz16 + r * width;
    for (int j = 0; j < width; ++j) {
      const float g = d[j] * hd::activate_grad(A, z[j]);
      colsum[j] += g;
      o[j] = bf16_bits(g);
    }
  }
}

void act_grad_rows_bf16(Activation a, const float* pre, int64_t r0, int64_t r1, int width, const float* da,
                        float* colsum, uint16_t* dz16) {
  const DenormalsAreZero daz;
  switch (a) {
    case Activation::ReLU:
      return act_grad_rows_bf16<Activation::ReLU>(pre, r0, r1, width, da, colsum, dz16);
    case Activation::GELU:
      return act_grad_rows_bf16<Activation::GELU>(pre, r0, r1, width, da, colsum, dz16);
    default:
      return act_grad_rows_bf16<Activation::SiLU>(pre, r0, r1, width, da, colsum, dz16);
  }
}

CUFM_SIMD_CLONES void round_rows(const float* x, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_bits(x[i]);
}

CUFM_SIMD_CLONES void colsum_rows(const float* x, int64_t r0, int64_t r1, int width, float* colsum) {
  std::fill(colsum, colsum + width, 0.0f);
  for (int64_t r = r0; r < r1; ++r) {
    const float* z = x + r * width;
    for (int j = 0; j < width; ++j) colsum[j] += z[j];
  }
}

// Sums the per-block partial column sums in block order: the same bits for any thread count.
void reduce_blocks(const std::vector<float>& partial, int blocks, int width, float* out) {
  std::fill(out, out + width, 0.0f);
  for (int b = 0; b < blocks; ++b) {
    const float* p = partial.data() + static_cast<size_t>(b) * width;
    for (int j = 0; j < width; ++j) out[j] += p[j];
  }
}

// y[B, out] = x[B, in] * W^T + b: y starts as the broadcast bias and the GEMM accumulates onto it
// (beta = 1), so the bias costs no pass of its own (with beta = 0 OpenBLAS zeroes y first anyway).
void linear(const float* x, const float* w, const float* b, int64_t batch, int in, int out, float* y) {
#pragma omp parallel for schedule(static) if (batch * out >= kParallelMin)
  for (int64_t r = 0; r < batch; ++r) std::memcpy(y + r * out, b, sizeof(float) * out);
  sgemm(false, true, batch, out, in, 1.0f, x, in, w, in, 1.0f, y, out);
}

}  // namespace

void round_to_bf16(const float* x, int64_t n, uint16_t* out) {
  constexpr int64_t kSlice = int64_t{1} << 14;
  const int64_t slices = (n + kSlice - 1) / kSlice;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t s = 0; s < slices; ++s) {
    const int64_t i0 = s * kSlice;
    round_rows(x + i0, std::min(kSlice, n - i0), out + i0);
  }
}

uint64_t MlpWorkspace::floats_for(const MlpConfig& model, int64_t b, Precision precision) {
  // In halves of a float (a bf16 value is one), so that the BF16 buffers count exactly.
  const bool bf16 = precision == Precision::BF16;
  uint64_t row = 2 * static_cast<uint64_t>(model.data_dim);  // out
  int widest = model.input_dim();
  for (int h : model.hidden) {
    row += (bf16 ? 3 : 4) * static_cast<uint64_t>(h);  // pre and act (bf16 act: half)
    widest = std::max(widest, h);
  }
  row += (bf16 ? 3 : 4) * static_cast<uint64_t>(widest);      // dbuf0 and dbuf1, or dbuf0 and dz16
  if (bf16) row += static_cast<uint64_t>(model.input_dim());  // in16
  const uint64_t rows = static_cast<uint64_t>(std::max<int64_t>(b, 0));
  if (row != 0 && rows > UINT64_MAX / row) return UINT64_MAX;
  const uint64_t halves = rows * row + (bf16 ? ParamLayout(model).total() : 0);  // w16
  return (halves + 1) / 2;
}

void MlpWorkspace::resize(const MlpConfig& model, int64_t b) {
  // Resized in place: evaluate_model alternates full chunks with a last, smaller one, and the
  // buffers keep their capacity between them. The other precision's buffers are freed on a switch.
  const bool bf16 = precision == Precision::BF16, switching = sized_for != precision;
  const size_t hidden = model.hidden.size();
  const size_t rows = static_cast<size_t>(b);
  pre.resize(hidden);
  act.resize(hidden);
  act16.resize(hidden);
  int widest = model.input_dim();
  for (size_t l = 0; l < hidden; ++l) {
    const size_t n = rows * model.hidden[l];
    pre[l].resize(n);
    if (bf16) {
      act16[l].resize(n);
      if (switching) std::vector<float>().swap(act[l]);
    } else {
      act[l].resize(n);
      if (switching) std::vector<uint16_t>().swap(act16[l]);
    }
    widest = std::max(widest, model.hidden[l]);
  }
  out.resize(rows * model.data_dim);
  dbuf0.resize(rows * widest);
  if (bf16) {
    if (switching) std::vector<float>().swap(dbuf1);
    in16.resize(rows * model.input_dim());
    dz16.resize(rows * widest);
    w16.resize(ParamLayout(model).total());
  } else {
    dbuf1.resize(rows * widest);
    if (switching) {
      std::vector<uint16_t>().swap(in16);
      std::vector<uint16_t>().swap(dz16);
      std::vector<uint16_t>().swap(w16);
    }
  }
  batch = b;
  sized_for = precision;
}

void write_field_inputs(const MlpConfig& model, const float* x, const float* t_rows, float t,
                        const int32_t* labels, const float* context, int64_t first, int64_t rows, bool guided,
                        float* input) {
  const int D = model.data_dim, in = model.input_dim(), K = model.context_dim;
#pragma omp parallel for schedule(static) if ((guided ? 2 : 1) * rows * in >= kParallelMin)
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t label = model.num_classes > 0 ? (labels ? labels[first + i] : model.null_class()) : -1;
    const float* c = context && K > 0 ? context + (first + i) * K : nullptr;
    const float ti = t_rows ? t_rows[first + i] : t;
    write_input_row(model, x + (first + i) * D, ti, label, c, input + i * in);
    if (guided) {
      const int32_t null_label = model.num_classes > 0 ? model.null_class() : -1;
      write_input_row(model, x + (first + i) * D, ti, null_label, nullptr, input + (rows + i) * in);
    }
  }
}

void forward_chunks(const MlpConfig& model, const float* params, const float* x, const float* t_rows, float t,
                    const int32_t* labels, const float* context, int64_t n, const float* guidance, int64_t chunk,
                    std::vector<float>& input, MlpWorkspace& ws, float* v, const ChunkDone& after) {
  const int D = model.data_dim, in = model.input_dim();
  const bool guided = guidance != nullptr;
  const int64_t passes = guided ? 2 : 1;
  for (int64_t first = 0; first < n; first += chunk) {
    const int64_t rows = std::min(chunk, n - first);
    // Guided: the conditional rows then the null rows, in one forward pass of 2 x rows.
    input.resize(static_cast<size_t>(passes * rows) * in);
    write_field_inputs(model, x, t_rows, t, labels, context, first, rows, guided, input.data());
    mlp_forward(model, params, input.data(), passes * rows, ws);
    const float* out = ws.out.data();
    if (guided) {
      const float w = *guidance;
      for (int64_t j = 0; j < rows * D; ++j) v[first * D + j] = hd::guided(out[rows * D + j], out[j], w);
    } else {
      std::memcpy(v + first * D, out, sizeof(float) * rows * D);
    }
    if (after) after(first, rows);
  }
}

void evaluate_model(const MlpConfig& model, const float* params, const float* x, const float* t_rows, float t,
                    const int32_t* labels, const float* context, int64_t n, const float* guidance, float* v,
                    FieldScratch& scratch) {
  constexpr int64_t kChunk = 8192;
  forward_chunks(model, params, x, t_rows, t, labels, context, n, guidance, kChunk, scratch.input, scratch.ws, v,
                 nullptr);
}

namespace {

void mlp_forward_bf16(const MlpConfig& model, const float* params, const float* input, int64_t batch,
                      MlpWorkspace& ws) {
  const ParamLayout layout(model);
  const int L = model.num_layers();
  const int64_t blocks = (batch + kRowBlock - 1) / kRowBlock;
  round_to_bf16(params, static_cast<int64_t>(layout.total()), ws.w16.data());
  round_to_bf16(input, batch * model.input_dim(), ws.in16.data());
  const uint16_t* x = ws.in16.data();
  for (int l = 0; l < L; ++l) {
    const int in = model.layer_in(l), out = model.layer_out(l);
    const uint16_t* w = ws.w16.data() + layout.weight_offset(l);
    const float* b = params + layout.bias_offset(l);  // the bias is added in fp32
    if (l == L - 1) {
      float* y = ws.out.data();
#pragma omp parallel for schedule(static) if (batch * out >= kParallelMin)
      for (int64_t r = 0; r < batch; ++r) std::memcpy(y + r * out, b, sizeof(float) * out);
      gemm_bf16(false, true, batch, out, in, x, in, w, in, true, y, out);
      break;
    }
    float* z = ws.pre[l].data();
    gemm_bf16(false, true, batch, out, in, x, in, w, in, false, z, out);
#pragma omp parallel for schedule(static) if (batch * out >= kParallelMin)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = blk * kRowBlock, r1 = std::min(batch, r0 + kRowBlock);
      act_rows(model.activation, z, b, r0, r1, out, ws.act16[l].data());
    }
    x = ws.act16[l].data();
  }
}

}  // namespace

void mlp_forward(const MlpConfig& model, const float* params, const float* input, int64_t batch,
                 MlpWorkspace& ws) {
  ensure_blas_kernels();  // every entry point's BLAS runs the same kernels (and so the same bits)
  if (ws.batch != batch || ws.sized_for != ws.precision) ws.resize(model, batch);
  if (ws.precision == Precision::BF16) return mlp_forward_bf16(model, params, input, batch, ws);
  CUFM_REQUIRE(ws.precision == Precision::FP32,
               "the CPU backend runs fp32 or bf16, not " << to_string(ws.precision));
  const ParamLayout layout(model);
  const int L = model.num_layers();
  const int64_t blocks = (batch + kRowBlock - 1) / kRowBlock;
  const float* x = input;
  for (int l = 0; l < L; ++l) {
    const int in = model.layer_in(l), out = model.layer_out(l);
    const float* w = params + layout.weight_offset(l);
    const float* b = params + layout.bias_offset(l);
    const bool last = l == L - 1;
    if (last) {
      linear(x, w, b, batch, in, out, ws.out.data());
      break;
    }
    // A hidden layer: the GEMM alone, then the bias added in the activation's pass (no pass of
    // its own to broadcast it first).
    float* z = ws.pre[l].data();
    sgemm(false, true, batch, out, in, 1.0f, x, in, w, in, 0.0f, z, out);
#pragma omp parallel for schedule(static) if (batch * out >= kParallelMin)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = blk * kRowBlock, r1 = std::min(batch, r0 + kRowBlock);
      act_rows(model.activation, z, b, r0, r1, out, ws.act[l].data());
    }
    x = ws.act[l].data();
  }
}

void mlp_backward(const MlpConfig& model, const float* params, const float* input, int64_t batch,
                  const float* dout, MlpWorkspace& ws, float* grads) {
  ensure_blas_kernels();
  CUFM_REQUIRE(ws.batch == batch && ws.sized_for == ws.precision,
               "mlp_backward: the workspace holds no forward pass of batch " << batch << " at "
                                                                             << to_string(ws.precision));
  const ParamLayout layout(model);
  const int L = model.num_layers();
  const int blocks = static_cast<int>((batch + kRowBlock - 1) / kRowBlock);
  int widest = 0;
  for (int l = 0; l < L; ++l) widest = std::max(widest, model.layer_out(l));
  std::vector<float> partial(static_cast<size_t>(blocks) * widest);

  // Bias gradient of the output layer.
  {
    const int D = model.data_dim;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = static_cast<int64_t>(blk) * kRowBlock, r1 = std::min<int64_t>(batch, r0 + kRowBlock);
      colsum_rows(dout, r0, r1, D, partial.data() + static_cast<size_t>(blk) * D);
    }
    reduce_blocks(partial, blocks, D, grads + layout.bias_offset(L - 1));
  }

  if (ws.precision == Precision::BF16) {
    // dz16 holds the current layer's output gradient in bf16, [B, out]; after the input-gradient
    // GEMM (into dbuf0, fp32) has read it, the activation pass overwrites it with the next one.
    round_to_bf16(dout, batch * model.data_dim, ws.dz16.data());
    uint16_t* dz = ws.dz16.data();
    for (int l = L - 1; l >= 0; --l) {
      const int in = model.layer_in(l), out = model.layer_out(l);
      const uint16_t* x = l == 0 ? ws.in16.data() : ws.act16[l - 1].data();
      gemm_bf16(true, false, out, in, batch, dz, out, x, in, false, grads + layout.weight_offset(l), in);
      if (l == 0) break;
      float* da = ws.dbuf0.data();
      gemm_bf16(false, false, batch, in, out, dz, out, ws.w16.data() + layout.weight_offset(l), in, false, da,
                in);
      const float* pre = ws.pre[l - 1].data();
#pragma omp parallel for schedule(static)
      for (int blk = 0; blk < blocks; ++blk) {
        const int64_t r0 = static_cast<int64_t>(blk) * kRowBlock,
                      r1 = std::min<int64_t>(batch, r0 + kRowBlock);
        act_grad_rows_bf16(model.activation, pre, r0, r1, in, da,
                           partial.data() + static_cast<size_t>(blk) * in, dz);
      }
      reduce_blocks(partial, blocks, in, grads + layout.bias_offset(l - 1));
    }
    return;
  }

  // The input gradients alternate between dbuf0 and dbuf1, each GEMM accumulating onto zeros
  // (beta = 1): the first target is zeroed here, each later one by the activation pass before it.
  if (L > 1) {
    float* first = ws.dbuf0.data();
    const int64_t n = batch * model.layer_in(L - 1);
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < blocks; ++blk) {
      const int64_t e0 = n * blk / blocks, e1 = n * (blk + 1) / blocks;
      std::fill(first + e0, first + e1, 0.0f);
    }
  }
  const float* dz = dout;
  for (int l = L - 1; l >= 0; --l) {
    const int in = model.layer_in(l), out = model.layer_out(l);
    const float* x = l == 0 ? input : ws.act[l - 1].data();
    const float* w = params + layout.weight_offset(l);
    // dW[out, in] = dz^T[out, B] * x[B, in]
    sgemm(true, false, out, in, batch, 1.0f, dz, out, x, in, 0.0f, grads + layout.weight_offset(l), in);
    if (l == 0) break;  // the input needs no gradient
    // da[B, in] = dz[B, out] * W[out, in] (onto zeros); then dz_{l-1} = da * act'(pre_{l-1}) with its
    // bias gradient, zeroing the other buffer (dz, now read for the last time) for the next GEMM.
    float* da = (dz == ws.dbuf0.data()) ? ws.dbuf1.data() : ws.dbuf0.data();
    float* next = (da == ws.dbuf0.data()) ? ws.dbuf1.data() : ws.dbuf0.data();
    const int next_width = l - 1 > 0 ? model.layer_in(l - 1) : 0;
    sgemm(false, false, batch, in, out, 1.0f, dz, out, w, in, 1.0f, da, in);
    const float* pre = ws.pre[l - 1].data();
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = static_cast<int64_t>(blk) * kRowBlock, r1 = std::min<int64_t>(batch, r0 + kRowBlock);
      act_grad_rows(model.activation, pre, r0, r1, in, da, partial.data() + static_cast<size_t>(blk) * in,
                    next_width > 0 ? next : nullptr, next_width);
    }
    reduce_blocks(partial, blocks, in, grads + layout.bias_offset(l - 1));
    dz = da;
  }
}

}  // namespace cufm::cpu
