// The fused training step for narrow models on CPUs with AVX-512 (host/cpu/cpu_ops.hpp,
// fused_step): forward, loss gradient and backward run one block of 256 rows at a time, so that a
// block's activations stay in the core's cache from the first layer to the last and back, instead
// of one batch-wide GEMM per layer with a batch-wide elementwise pass between them (by count, about
// 240 MB of activations moved a step at width 64 and batch 2^14, for 1.7 GFLOP of products; the
// layered step took 18.1 ms there and this one 11.9, on 2 cores of the project's Xeon).
//
// The products are this file's own register-tiled kernel, C[M, N] (+)= A B with A read through
// strides (so the same kernel serves X W^T, dZ W and dZ^T X) and B a row-major panel of rows padded
// to 16 floats: a tile of up to 6 rows of C by up to 64 columns lives in 24 zmm accumulators while k
// runs, one broadcast of A and one FMA per 16 columns. Every block-local tensor has its rows padded
// to a multiple of 16 floats with zeros, which stay zero through the layers (the padded weights and
// biases are zero and act(0) = 0), as on the GPU's padded layout.
//
// Determinism: the batch is cut into at most kMaxChunks chunks of consecutive blocks, a function of
// the batch size alone; each chunk sums its blocks' weight and bias gradients in block order into
// its own partial, and the partials are added in chunk order. So the bits depend on the batch, not
// on the thread count or the schedule. The loss sums per block of 256 rows, then the blocks in
// order, exactly as fm_loss_grad and mse_given do.
#if defined(__x86_64__) && defined(__GNUC__)
#define CUFM_FUSED_STEP 1
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "cufm/detail/math.hpp"
#include "cufm/error.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "host/cpu/cpu_simd.hpp"

namespace cufm::cpu {

#if defined(CUFM_FUSED_STEP)
namespace {

constexpr int kRows = 256;      // rows per block: fm_loss_grad's and mse_given's loss blocks
constexpr int kMaxChunks = 32;  // partial gradients per step
constexpr int kMaxWidth = 256;  // the widest hidden layer the fused step takes (see fused_step_applies)
constexpr int kMaxIo = 256;     // the widest input and output rows it takes

#define CUFM_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma")))

int pad16(int n) {
  return (n + 15) / 16 * 16;
}

// One tile of C: MR rows by NV vectors of 16 columns. C(i, :) = init + sum_k A(i, k) B(k, :), where
// A(i, k) = A[i * sa_i + k * sa_k]; init: C's own values (accumulate), the bias row, or zero.
template <int MR, int NV>
CUFM_AVX512 inline void tile(int K, const float* A, int64_t sa_i, int64_t sa_k, const float* B, int64_t ldb,
                             float* C, int64_t ldc, const float* bias, bool accumulate) {
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) {
      acc[i][v] = accumulate ? _mm512_loadu_ps(C + i * ldc + 16 * v)
                             : (bias ? _mm512_loadu_ps(bias + 16 * v) : _mm512_setzero_ps());
    }
  }
  for (int k = 0; k < K; ++k) {
    __m512 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(B + k * ldb + 16 * v);
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(A[i * sa_i + k * sa_k]);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(a, b[v], acc[i][v]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(C + i * ldc + 16 * v, acc[i][v]);
  }
}

using TileFn = void (*)(int, const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t,
                        const float*, bool);

template <int MR>
CUFM_AVX512 TileFn tile_for(int nv) {
  switch (nv) {
    case 1:
      return &tile<MR, 1>;
    case 2:
      return &tile<MR, 2>;
    case 3:
      return &tile<MR, 3>;
    default:
      return &tile<MR, 4>;
  }
}

CUFM_AVX512 TileFn tile_for(int mr, int nv) {
  switch (mr) {
    case 1:
      return tile_for<1>(nv);
    case 2:
      return tile_for<2>(nv);
    case 3:
      return tile_for<3>(nv);
    case 4:
      return tile_for<4>(nv);
    case 5:
      return tile_for<5>(nv);
    default:
      return tile_for<6>(nv);
  }
}

// C[M, Np] (+)= A B (Np a multiple of 16; A(i, k) at A[i * sa_i + k * sa_k]; B [K, Np] with row
// stride ldb), strips of 64 columns, tiles of 6 rows within a strip.
CUFM_AVX512 void small_gemm(int M, int Np, int K, const float* A, int64_t sa_i, int64_t sa_k, const float* B,
                            int64_t ldb, float* C, int64_t ldc, const float* bias, bool accumulate) {
  constexpr int MR = 6;
  for (int n0 = 0; n0 < Np; n0 += 64) {
    const int nv = std::min(4, (Np - n0) / 16);
    const TileFn full = tile_for(MR, nv);
    int i0 = 0;
    for (; i0 + MR <= M; i0 += MR) {
      full(K, A + i0 * sa_i, sa_i, sa_k, B + n0, ldb, C + i0 * ldc + n0, ldc, bias ? bias + n0 : nullptr,
           accumulate);
    }
    if (i0 < M) {
      tile_for(M - i0, nv)(K, A + i0 * sa_i, sa_i, sa_k, B + n0, ldb, C + i0 * ldc + n0, ldc,
                           bias ? bias + n0 : nullptr, accumulate);
    }
  }
}

// The step's weights, packed once per step: per layer the forward panel W^T [in, out_p] and the
// backward panel W [out, in_p] (both zero-padded), and the padded bias [out_p]; and where each
// layer's gradient lives in a chunk's partial ([out, in_p] weights, then [out] biases).
struct Packed {
  std::vector<int> in, out, in_p, out_p;
  std::vector<size_t> wt_off, w_off, b_off, gw_off, gb_off;
  size_t partial_floats = 0;
  std::vector<float> panels;
};

void pack(const MlpConfig& model, const float* params, Packed& p) {
  const ParamLayout layout(model);
  const int L = model.num_layers();
  p.in.resize(L), p.out.resize(L), p.in_p.resize(L), p.out_p.resize(L);
  p.wt_off.resize(L), p.w_off.resize(L), p.b_off.resize(L), p.gw_off.resize(L), p.gb_off.resize(L);
  size_t n = 0, g = 0;
  for (int l = 0; l < L; ++l) {
    p.in[l] = model.layer_in(l), p.out[l] = model.layer_out(l);
    p.in_p[l] = pad16(p.in[l]), p.out_p[l] = pad16(p.out[l]);
    p.wt_off[l] = n;
    n += static_cast<size_t>(p.in[l]) * p.out_p[l];
    p.w_off[l] = n;
    n += static_cast<size_t>(p.out[l]) * p.in_p[l];
    p.b_off[l] = n;
    n += p.out_p[l];
    p.gw_off[l] = g;
    g += static_cast<size_t>(p.out[l]) * p.in_p[l];
    p.gb_off[l] = g;
    g += p.out[l];
  }
  p.partial_floats = (g + 15) / 16 * 16;
  p.panels.assign(n, 0.0f);
  for (int l = 0; l < L; ++l) {
    const float* w = params + layout.weight_offset(l);
    const int in = p.in[l], out = p.out[l];
    float* wt = p.panels.data() + p.wt_off[l];
    float* wb = p.panels.data() + p.w_off[l];
    for (int o = 0; o < out; ++o) {
      for (int i = 0; i < in; ++i) {
        wt[static_cast<size_t>(i) * p.out_p[l] + o] = w[static_cast<size_t>(o) * in + i];
        wb[static_cast<size_t>(o) * p.in_p[l] + i] = w[static_cast<size_t>(o) * in + i];
      }
    }
    std::memcpy(p.panels.data() + p.b_off[l], params + layout.bias_offset(l), sizeof(float) * out);
  }
}

// A thread's block-local tensors (rows padded to 16 floats).
struct BlockBuffers {
  std::vector<float> x0;                 // [kRows, in_p(0)] the block's input rows
  std::vector<std::vector<float>> z, a;  // per hidden layer [kRows, out_p]
  std::vector<std::vector<float>> s;     // SiLU: per hidden layer, sigmoid(z) (the derivative's)
  std::vector<float> out, v, grad, d0, d1;
  void size_for(const Packed& p) {
    const int L = static_cast<int>(p.in.size());
    int widest = 0;
    for (int l = 0; l < L; ++l) widest = std::max({widest, p.in_p[l], p.out_p[l]});
    x0.assign(static_cast<size_t>(kRows) * p.in_p[0], 0.0f);
    z.resize(L - 1);
    a.resize(L - 1);
    s.resize(L - 1);
    for (int l = 0; l + 1 < L; ++l) {
      z[l].assign(static_cast<size_t>(kRows) * p.out_p[l], 0.0f);
      a[l].assign(static_cast<size_t>(kRows) * p.out_p[l], 0.0f);
      s[l].assign(static_cast<size_t>(kRows) * p.out_p[l], 0.0f);
    }
    out.assign(static_cast<size_t>(kRows) * p.out_p[L - 1], 0.0f);
    v.assign(static_cast<size_t>(kRows) * p.out[L - 1], 0.0f);
    grad.assign(static_cast<size_t>(kRows) * p.out[L - 1], 0.0f);
    d0.assign(static_cast<size_t>(kRows) * widest, 0.0f);
    d1.assign(static_cast<size_t>(kRows) * widest, 0.0f);
  }
};

// a = act(z) over n values (the padding's zeros map to zeros).
template <Activation A>
CUFM_AVX512 void act_block(const float* z, int64_t n, float* a) {
  for (int64_t j = 0; j < n; ++j) a[j] = hd::activate(A, z[j]);
}

// d *= act'(z) over n values.
template <Activation A>
CUFM_AVX512 void act_grad_block(const float* z, int64_t n, float* d) {
  for (int64_t j = 0; j < n; ++j) d[j] *= hd::activate_grad(A, z[j]);
}

// SiLU: a = z * sigmoid(z), keeping sigmoid(z) for the backward (hd::activate's own terms).
CUFM_AVX512 void silu_block(const float* z, int64_t n, float* a, float* s) {
  for (int64_t j = 0; j < n; ++j) {
    const float sg = hd::sigmoid_fast(z[j]);
    s[j] = sg;
    a[j] = z[j] * sg;
  }
}

// SiLU: d *= sigmoid(z) (1 + z (1 - sigmoid(z))), hd::activate_grad's formula on the kept sigmoid:
// the same bits, without a second exp and division per element.
CUFM_AVX512 void silu_grad_block(const float* z, const float* s, int64_t n, float* d) {
  for (int64_t j = 0; j < n; ++j) d[j] *= s[j] * (1.0f + z[j] * (1.0f - s[j]));
}

void act_block(Activation a, const float* z, int64_t n, float* out) {
  switch (a) {
    case Activation::ReLU:
      return act_block<Activation::ReLU>(z, n, out);
    case Activation::GELU:
      return act_block<Activation::GELU>(z, n, out);
    default:
      return act_block<Activation::SiLU>(z, n, out);
  }
}

void act_grad_block(Activation a, const float* z, int64_t n, float* d) {
  switch (a) {
    case Activation::ReLU:
      return act_grad_block<Activation::ReLU>(z, n, d);
    case Activation::GELU:
      return act_grad_block<Activation::GELU>(z, n, d);
    default:
      return act_grad_block<Activation::SiLU>(z, n, d);
  }
}

// Rows [r0, r0 + R) of the batch: forward, the loss callback, backward; the weight and bias
// gradients are added onto `partial`. Returns the block's loss sum.
CUFM_AVX512 double run_block(const MlpConfig& model, const Packed& p, const float* input, int64_t r0, int R,
                             const RowLoss& loss_rows, BlockBuffers& buf, float* partial) {
  const int L = model.num_layers();
  const float* panels = p.panels.data();
  // The input rows, padded.
  const int in0 = p.in[0], in0_p = p.in_p[0];
  for (int r = 0; r < R; ++r) {
    std::memcpy(buf.x0.data() + static_cast<size_t>(r) * in0_p, input + (r0 + r) * in0, sizeof(float) * in0);
  }
  // Forward.
  const float* x = buf.x0.data();
  int ldx = in0_p;
  for (int l = 0; l < L; ++l) {
    const bool last = l == L - 1;
    float* z = last ? buf.out.data() : buf.z[l].data();
    small_gemm(R, p.out_p[l], p.in[l], x, ldx, 1, panels + p.wt_off[l], p.out_p[l], z, p.out_p[l],
               panels + p.b_off[l], false);
    if (last) break;
    if (model.activation == Activation::SiLU) {
      silu_block(z, static_cast<int64_t>(R) * p.out_p[l], buf.a[l].data(), buf.s[l].data());
    } else {
      act_block(model.activation, z, static_cast<int64_t>(R) * p.out_p[l], buf.a[l].data());
    }
    x = buf.a[l].data();
    ldx = p.out_p[l];
  }
  // The loss and dL/dv on compact rows.
  const int D = p.out[L - 1], D_p = p.out_p[L - 1];
  for (int r = 0; r < R; ++r) {
    std::memcpy(buf.v.data() + static_cast<size_t>(r) * D, buf.out.data() + static_cast<size_t>(r) * D_p,
                sizeof(float) * D);
  }
  const double loss = loss_rows(r0, r0 + R, buf.v.data(), buf.grad.data());
  float* dz = buf.d0.data();
  int ldz = D;
  std::memcpy(dz, buf.grad.data(), sizeof(float) * R * D);
  // Backward.
  for (int l = L - 1; l >= 0; --l) {
    const int out = p.out[l], in_p = p.in_p[l];
    const float* xl = l == 0 ? buf.x0.data() : buf.a[l - 1].data();
    // Bias gradient: the block's column sums, row by row, onto the partial.
    float* gb = partial + p.gb_off[l];
    for (int r = 0; r < R; ++r) {
      const float* row = dz + static_cast<size_t>(r) * ldz;
      for (int j = 0; j < out; ++j) gb[j] += row[j];
    }
    // dW[out, in_p] += dz^T x.
    small_gemm(out, in_p, R, dz, 1, ldz, xl, in_p, partial + p.gw_off[l], in_p, nullptr, true);
    if (l == 0) break;
    // da[R, in_p] = dz W, then dz = da * act'(z) (the padding: zero rows of W give zero columns).
    float* da = dz == buf.d0.data() ? buf.d1.data() : buf.d0.data();
    small_gemm(R, in_p, out, dz, ldz, 1, panels + p.w_off[l], in_p, da, in_p, nullptr, false);
    if (model.activation == Activation::SiLU) {
      silu_grad_block(buf.z[l - 1].data(), buf.s[l - 1].data(), static_cast<int64_t>(R) * in_p, da);
    } else {
      act_grad_block(model.activation, buf.z[l - 1].data(), static_cast<int64_t>(R) * in_p, da);
    }
    dz = da;
    ldz = in_p;
  }
  return loss;
}

}  // namespace

bool fused_step_applies(const MlpConfig& model, Precision precision) {
  static const int mode = [] {
    const char* env = std::getenv("CUFM_CPU_FUSED");
    const std::string v = env ? env : "";
    CUFM_REQUIRE(v.empty() || v == "auto" || v == "on" || v == "off",
                 "CUFM_CPU_FUSED='" << v << "': expected auto, on or off");
    return v == "off" ? 0 : (v == "on" ? 2 : 1);
  }();
  if (mode == 0 || precision != Precision::FP32) return false;
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512dq") ||
      !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512bw")) {
    return false;
  }
  if (model.input_dim() > kMaxIo || model.data_dim > kMaxIo) return false;
  if (mode == 2) return true;
  for (int h : model.hidden) {
    if (h > kMaxWidth) return false;
  }
  return true;
}

uint64_t fused_step_floats(const MlpConfig& model, int64_t batch) {
  const int L = model.num_layers();
  uint64_t partial = 0, panels = 0, block = 0;
  int widest = 0;
  for (int l = 0; l < L; ++l) {
    const uint64_t in = static_cast<uint64_t>(model.layer_in(l)),
                   out = static_cast<uint64_t>(model.layer_out(l));
    const uint64_t in_p = static_cast<uint64_t>(pad16(model.layer_in(l)));
    const uint64_t out_p = static_cast<uint64_t>(pad16(model.layer_out(l)));
    partial += out * in_p + out;
    panels += in * out_p + out * in_p + out_p;
    block += (l + 1 < L ? 3 : 1) * out_p;  // z, a and s per hidden layer; the output
    widest = std::max({widest, pad16(model.layer_in(l)), pad16(model.layer_out(l))});
  }
  block = kRows * (block + static_cast<uint64_t>(pad16(model.input_dim())) +
                   2 * static_cast<uint64_t>(widest) + 2 * static_cast<uint64_t>(model.data_dim));
  const uint64_t blocks = (static_cast<uint64_t>(std::max<int64_t>(batch, 0)) + kRows - 1) / kRows;
  const uint64_t chunks = std::min<uint64_t>(blocks, kMaxChunks);
  return chunks * (partial + 16) + panels + static_cast<uint64_t>(max_threads()) * block + blocks * 2;
}

double fused_step(const MlpConfig& model, const float* params, const float* input, int64_t batch,
                  const RowLoss& loss_rows, FusedScratch& scratch, float* grads) {
  ensure_blas_kernels();
  Packed p;
  pack(model, params, p);
  const int64_t blocks = (batch + kRows - 1) / kRows;
  const int64_t chunks = std::min<int64_t>(blocks, kMaxChunks);
  scratch.partials.assign(static_cast<size_t>(chunks) * p.partial_floats, 0.0f);
  scratch.block_loss.assign(static_cast<size_t>(blocks), 0.0);
  // Nothing may leave an OpenMP region by an exception: the first one is kept and thrown after it.
  std::exception_ptr first_error;
  auto keep_error = [&first_error] {
#pragma omp critical(cufm_fused_error)
    if (!first_error) first_error = std::current_exception();
  };
#pragma omp parallel
  {
    // Every thread of the block loop runs with denormals as zero (the activations' loops need it);
    // the partials' sum below runs without, on every thread alike.
    const DenormalsAreZero thread_daz;
    BlockBuffers buf;
    bool ready = true;
    try {
      buf.size_for(p);
    } catch (...) {
      ready = false;
      keep_error();
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      if (!ready) continue;
      float* partial = scratch.partials.data() + static_cast<size_t>(c) * p.partial_floats;
      const int64_t b0 = blocks * c / chunks, b1 = blocks * (c + 1) / chunks;
      try {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t r0 = b * kRows;
          const int R = static_cast<int>(std::min<int64_t>(kRows, batch - r0));
          scratch.block_loss[b] = run_block(model, p, input, r0, R, loss_rows, buf, partial);
        }
      } catch (...) {
        keep_error();
      }
    }
  }
  if (first_error) std::rethrow_exception(first_error);
  // The partials, added in chunk order, into ParamLayout's places.
  const ParamLayout layout(model);
  const int L = model.num_layers();
  for (int l = 0; l < L; ++l) {
    const int in = p.in[l], out = p.out[l], in_p = p.in_p[l];
    float* gw = grads + layout.weight_offset(l);
#pragma omp parallel for schedule(static) if (static_cast <int64_t>(out) * in * chunks >= kParallelMin)
    for (int o = 0; o < out; ++o) {
      for (int i = 0; i < in; ++i) {
        float s = 0.0f;
        for (int64_t c = 0; c < chunks; ++c) {
          s += scratch.partials[static_cast<size_t>(c) * p.partial_floats + p.gw_off[l] +
                                static_cast<size_t>(o) * in_p + i];
        }
        gw[static_cast<size_t>(o) * in + i] = s;
      }
    }
    float* gb = grads + layout.bias_offset(l);
    for (int o = 0; o < out; ++o) {
      float s = 0.0f;
      for (int64_t c = 0; c < chunks; ++c)
        s += scratch.partials[static_cast<size_t>(c) * p.partial_floats + p.gb_off[l] + o];
      gb[o] = s;
    }
  }
  double total = 0.0;
  for (double s : scratch.block_loss) total += s;
  return total;
}

#else  // not x86-64: the layered step runs everywhere

bool fused_step_applies(const MlpConfig&, Precision) {
  return false;
}

uint64_t fused_step_floats(const MlpConfig&, int64_t) {
  return 0;
}

double fused_step(const MlpConfig&, const float*, const float*, int64_t, const RowLoss&, FusedScratch&,
                  float*) {
  CUFM_FAIL("the fused step needs an x86-64 CPU with AVX-512");
}

#endif

}  // namespace cufm::cpu
