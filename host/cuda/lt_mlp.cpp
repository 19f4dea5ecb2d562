// The MLP through cuBLASLt: layout padding, per-layer GEMM plans with fused epilogues where
// cuBLASLt runs them, and cuFM's elementwise kernels where it does not. See lt_mlp.hpp.
#include "host/cuda/lt_mlp.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <utility>

#include "cufm/error.hpp"
#include "kernels/cuda_check.hpp"

namespace cufm::cuda {

// ---- the padded layout ----------------------------------------------------------------------

PaddedLayout::PaddedLayout(const MlpConfig& config) {
  config.validate();
  layers = config.num_layers();
  constexpr size_t kAlign = 128;  // floats: 512 bytes, so the bf16 copy's tensors are 256-byte aligned too
  for (int l = 0; l < layers; ++l) {
    in.push_back(config.layer_in(l));
    out.push_back(config.layer_out(l));
    in_pad.push_back(round_up(in.back(), 8));
    out_pad.push_back(round_up(out.back(), 8));
    w_off.push_back(total);
    total += (static_cast<size_t>(in_pad.back()) * out_pad.back() + kAlign - 1) / kAlign * kAlign;
    b_off.push_back(total);
    total += (static_cast<size_t>(out_pad.back()) + kAlign - 1) / kAlign * kAlign;
  }
}

int PaddedLayout::max_width_pad() const {
  int w = in_pad[0];
  for (int o : out_pad) w = std::max(w, o);
  return w;
}

size_t PaddedLayout::unpadded_total() const {
  size_t n = 0;
  for (int l = 0; l < layers; ++l) n += static_cast<size_t>(in[l]) * out[l] + out[l];
  return n;
}

std::vector<float> PaddedLayout::pad(const std::vector<float>& flat) const {
  CUFM_REQUIRE(flat.size() == unpadded_total(),
               "padded layout: expected " << unpadded_total() << " parameters, got " << flat.size());
  std::vector<float> p(total, 0.0f);
  size_t src = 0;
  for (int l = 0; l < layers; ++l) {
    for (int r = 0; r < out[l]; ++r) {
      for (int c = 0; c < in[l]; ++c) p[w_off[l] + static_cast<size_t>(r) * in_pad[l] + c] = flat[src++];
    }
    for (int r = 0; r < out[l]; ++r) p[b_off[l] + r] = flat[src++];
  }
  return p;
}

std::vector<float> PaddedLayout::unpad(const std::vector<float>& padded) const {
  CUFM_REQUIRE(padded.size() == total,
               "padded layout: expected " << total << " padded values, got " << padded.size());
  std::vector<float> flat;
  flat.reserve(unpadded_total());
  for (int l = 0; l < layers; ++l) {
    for (int r = 0; r < out[l]; ++r) {
      for (int c = 0; c < in[l]; ++c)
        flat.push_back(padded[w_off[l] + static_cast<size_t>(r) * in_pad[l] + c]);
    }
    for (int r = 0; r < out[l]; ++r) flat.push_back(padded[b_off[l] + r]);
  }
  return flat;
}

// ---- one cuBLASLt GEMM -------------------------------------------------------------------------

namespace {

struct GemmSpec {
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
  uint64_t m = 0, n = 0, k = 0;
  cudaDataType_t a_type = CUDA_R_32F, b_type = CUDA_R_32F, d_type = CUDA_R_32F;
  int64_t lda = 0, ldb = 0, ldd = 0;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  void* bias = nullptr;  // bias (input) or bias gradient (output)
  void* aux = nullptr;
  int64_t aux_ld = 0;
  const void* a = nullptr;
  const void* b = nullptr;
  void* d = nullptr;
};

template <typename T>
void set_attr(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value) {
  CUFM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}

// The largest power of two up to 256 that divides the address: what the heuristic may assume.
uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

const char* epilogue_name(cublasLtEpilogue_t e) {
  switch (e) {
    case CUBLASLT_EPILOGUE_BIAS:
      return "bias";
    case CUBLASLT_EPILOGUE_RELU_BIAS:
      return "relu+bias";
    case CUBLASLT_EPILOGUE_GELU_BIAS:
      return "gelu+bias";
    case CUBLASLT_EPILOGUE_RELU_AUX_BIAS:
      return "relu+bias+aux";
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS:
      return "gelu+bias+aux";
    case CUBLASLT_EPILOGUE_DRELU_BGRAD:
      return "drelu+bgrad";
    case CUBLASLT_EPILOGUE_DGELU_BGRAD:
      return "dgelu+bgrad";
    case CUBLASLT_EPILOGUE_DRELU:
      return "drelu";
    case CUBLASLT_EPILOGUE_DGELU:
      return "dgelu";
    case CUBLASLT_EPILOGUE_BGRADB:
      return "bgradb";
    default:
      return "plain";
  }
}

// "relu+bias GEMM 512 x 4096 x 512 (lda 512, ldb 512, ldd 512)": for messages.
std::string describe_spec(const GemmSpec& s) {
  std::ostringstream os;
  os << epilogue_name(s.epilogue) << " GEMM " << s.m << " x " << s.n << " x " << s.k << " (lda " << s.lda
     << ", ldb " << s.ldb << ", ldd " << s.ldd << ")";
  return os.str();
}

void refuse(std::vector<std::string>* refusals, const GemmSpec& s, const std::string& why) {
  if (refusals) refusals->push_back(describe_spec(s) + ": " + why);
}

}  // namespace

class LtGemm {
 public:
  // The GEMM with the first heuristic algorithm that runs; nullptr when none does (the caller
  // then falls back to a simpler epilogue). Test-runs on `stream` and waits for it: setup only.
  // A refusal is appended to *refusals (for describe()).
  static std::unique_ptr<LtGemm> try_create(cublasLtHandle_t handle, const GemmSpec& s, void* workspace,
                                            size_t workspace_bytes, cudaStream_t stream,
                                            std::vector<std::string>* refusals) {
    if (s.aux && s.aux_ld % 8 != 0) {  // cuBLASLt's aux rule, checked before asking it
      refuse(refusals, s, "its aux leading dimension is not a multiple of 8");
      return nullptr;
    }
    std::unique_ptr<LtGemm> g(new LtGemm(s, workspace, workspace_bytes));
    g->handle_ = handle;
    CUFM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&g->desc_, s.compute, CUDA_R_32F));
    set_attr(g->desc_, CUBLASLT_MATMUL_DESC_TRANSA, s.ta);
    set_attr(g->desc_, CUBLASLT_MATMUL_DESC_TRANSB, s.tb);
    set_attr(g->desc_, CUBLASLT_MATMUL_DESC_EPILOGUE, s.epilogue);
    if (s.bias) set_attr(g->desc_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, s.bias);
    if (s.aux) {
      set_attr(g->desc_, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, s.aux);
      set_attr(g->desc_, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, s.aux_ld);
    }
    const bool ta = s.ta == CUBLAS_OP_T, tb = s.tb == CUBLAS_OP_T;
    CUFM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g->a_, s.a_type, ta ? s.k : s.m, ta ? s.m : s.k, s.lda));
    CUFM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g->b_, s.b_type, tb ? s.n : s.k, tb ? s.k : s.n, s.ldb));
    CUFM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&g->d_, s.d_type, s.m, s.n, s.ldd));
    cublasLtMatmulPreference_t pref = nullptr;
    CUFM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = workspace_bytes;
    // The alignments the pointers really have (the default assumption is 256 bytes).
    const uint32_t align_a = alignment_of(s.a), align_b = alignment_of(s.b), align_d = alignment_of(s.d);
    cublasStatus_t st =
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_d},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_d}};
    for (const auto& [attr, value] : aligns) {
      if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value));
    }
    constexpr int kRequested = 8;
    cublasLtMatmulHeuristicResult_t results[kRequested] = {};
    int returned = 0;
    if (st == CUBLAS_STATUS_SUCCESS) {
      st = cublasLtMatmulAlgoGetHeuristic(handle, g->desc_, g->a_, g->b_, g->d_, g->d_, pref, kRequested,
                                          results, &returned);
    }
    cublasLtMatmulPreferenceDestroy(pref);
    // The heuristic answers NOT_SUPPORTED when no algorithm runs this configuration: fall back to a
    // simpler epilogue. INVALID_VALUE is documented only for a malformed request; for a fused
    // epilogue it is still a refusal to fall back from (recorded, and shown by describe()), but for
    // a plain GEMM nothing simpler exists: an error naming the status and the shape.
    const bool fused = s.epilogue != CUBLASLT_EPILOGUE_DEFAULT;
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || (fused && st == CUBLAS_STATUS_INVALID_VALUE)) {
      refuse(refusals, s, std::string("the heuristic answered ") + detail::cublas_status_name(st));
      return nullptr;
    }
    if (st != CUBLAS_STATUS_SUCCESS) {
      CUFM_FAIL("cuBLASLt's heuristic failed for the " << describe_spec(s) << ": "
                                                       << detail::cublas_status_name(st) << "; "
                                                       << detail::cublas_advice(st));
    }
    cublasStatus_t last = CUBLAS_STATUS_SUCCESS;
    for (int i = 0; i < returned; ++i) {
      if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
      g->algo_ = results[i].algo;
      const cublasStatus_t run = g->launch(stream);
      if (run == CUBLAS_STATUS_NOT_SUPPORTED || run == CUBLAS_STATUS_INVALID_VALUE) {
        last = run;
        continue;
      }
      if (run != CUBLAS_STATUS_SUCCESS) {
        CUFM_FAIL("cuBLASLt failed to run the " << describe_spec(s) << ": " << detail::cublas_status_name(run)
                                                << "; " << detail::cublas_advice(run));
      }
      CUFM_CUDA_CHECK(cudaStreamSynchronize(stream));  // a fault here is sticky: report it
      return g;
    }
    refuse(refusals, s,
           returned == 0
               ? std::string("the heuristic offered no algorithm")
               : "none of its " + std::to_string(returned) + " algorithms ran (last: " +
                     (last == CUBLAS_STATUS_SUCCESS ? "none usable" : detail::cublas_status_name(last)) +
                     ")");
    return nullptr;
  }

  ~LtGemm() {
    if (d_) cublasLtMatrixLayoutDestroy(d_);
    if (b_) cublasLtMatrixLayoutDestroy(b_);
    if (a_) cublasLtMatrixLayoutDestroy(a_);
    if (desc_) cublasLtMatmulDescDestroy(desc_);
  }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  void run(cudaStream_t stream) const { CUFM_CUBLAS_CHECK(launch(stream)); }
  const char* name() const { return epilogue_name(spec_.epilogue); }

 private:
  LtGemm(const GemmSpec& s, void* ws, size_t ws_bytes)
      : spec_(s), workspace_(ws), workspace_bytes_(ws_bytes) {}
  cublasStatus_t launch(cudaStream_t stream) const {
    const float alpha = 1.0f, beta = 0.0f;
    return cublasLtMatmul(handle_, desc_, &alpha, spec_.a, a_, spec_.b, b_, &beta, spec_.d, d_, spec_.d, d_,
                          &algo_, workspace_, workspace_bytes_, stream);
  }

  GemmSpec spec_;
  void* workspace_;
  size_t workspace_bytes_;
  cublasLtHandle_t handle_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, d_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
};

// ---- the MLP -----------------------------------------------------------------------------------

struct LtMlp::Layer {
  bool last = false;
  bool act_fused = false;        // activation in the forward epilogue (and its derivative in the next dX)
  bool bias_fused = false;       // bias in the forward epilogue
  bool db_from_next_dx = false;  // this layer's bias gradient comes from the next layer's dX (BGRAD)
  bool db_from_dw = false;       // this layer's bias gradient comes from its dW GEMM
  bool bgradb_fused = false;     // ... via BGRADB (else column_sum)
  DeviceBuffer z, a, mask;       // training: pre-activation, activation, ReLU bit-mask
  void* y = nullptr;             // forward output: the activation (hidden) or the model output
  void* zp = nullptr;            // pre-activation target of an unfused layer
  int64_t mask_ld = 0;
  std::unique_ptr<LtGemm> fwd, dw, dx;
};

namespace {
constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // cuBLASLt's recommendation for Hopper
}

LtMlp::LtMlp(const MlpConfig& config, Precision precision, int64_t rows, MlpMode mode, const float* params,
             const __nv_bfloat16* params_bf16, float* grads, cudaStream_t stream, Epilogues epilogues)
    : config_(config),
      layout_(config),
      precision_(precision),
      epilogues_(plan_epilogues(config.activation, precision, epilogues)),
      epilogue_mode_(epilogues),
      act_type_(precision == Precision::BF16 ? DType::BF16 : DType::F32),
      rows_(rows),
      mode_(mode),
      params_(params),
      params_bf16_(params_bf16),
      grads_(grads) {
  CUFM_REQUIRE(rows >= 1 && rows <= INT32_MAX, "LtMlp: rows must be in [1, 2^31 - 1], got " << rows);
  CUFM_REQUIRE(params, "LtMlp: params must be a device buffer");
  CUFM_REQUIRE(precision != Precision::BF16 || params_bf16,
               "LtMlp: bf16 precision needs the bf16 weight copy");
  CUFM_REQUIRE(mode == MlpMode::Inference || grads, "LtMlp: training needs a gradient buffer");
  CUFM_CUBLAS_CHECK(cublasLtCreate(&handle_));
  try {
    build(stream);
  } catch (...) {
    layer_.clear();
    cublasLtDestroy(handle_);
    handle_ = nullptr;
    throw;
  }
}

LtMlp::~LtMlp() {
  layer_.clear();
  if (handle_) cublasLtDestroy(handle_);
}

const void* LtMlp::weight(int l) const {
  return act_type_ == DType::BF16 ? static_cast<const void*>(params_bf16_ + layout_.w_off[l])
                                  : static_cast<const void*>(params_ + layout_.w_off[l]);
}

const void* LtMlp::bias_for_epilogue(int l, bool fp32_output) const {
  // cuBLASLt's bias has the output's type: fp32 master bias, or its bf16 copy for bf16 outputs.
  return fp32_output || act_type_ == DType::F32 ? static_cast<const void*>(params_ + layout_.b_off[l])
                                                : static_cast<const void*>(params_bf16_ + layout_.b_off[l]);
}

// LtMlp::build's planning, in three parts (forward, input gradient, weight gradient), over what
// every plan reads: the layout, the GEMMs' types and the workspace.
struct LtMlp::Planner {
  LtMlp& m;
  cudaStream_t stream;
  const PaddedLayout& L;
  size_t esize;
  cudaDataType_t T;
  cublasComputeType_t compute;
  size_t rows;
  Activation act;
  bool training, fusable_act;
  void* ws;

  Planner(LtMlp& mlp, cudaStream_t s)
      : m(mlp),
        stream(s),
        L(mlp.layout_),
        esize(dtype_size(mlp.act_type_)),
        T(mlp.act_type_ == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F),
        compute(mlp.precision_ == Precision::TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F),
        rows(static_cast<size_t>(mlp.rows_)),
        act(mlp.config_.activation),
        training(mlp.mode_ == MlpMode::Training),
        fusable_act(mlp.epilogues_.activation),
        ws(nullptr) {}

  // The buffers: the input, the output and the workspace; in training the gradients' ping-pong
  // buffers and column_sum's partials, in inference the activations' scratch.
  void allocate() {
    const size_t max_w = static_cast<size_t>(L.max_width_pad());
    m.workspace_ = DeviceBuffer(kWorkspaceBytes, "the cuBLASLt workspace", stream);
    m.input_ = DeviceBuffer(rows * L.in_pad[0] * esize, "the model input", stream);
    m.output_ = DeviceBuffer(rows * L.out_pad.back() * sizeof(float), "the model output", stream);
    if (training) {
      m.dout_ = DeviceBuffer(rows * L.out_pad.back() * esize, "the output gradient", stream);
      m.grad_a_ = DeviceBuffer(rows * max_w * esize, "activation gradients", stream);
      m.grad_b_ = DeviceBuffer(rows * max_w * esize, "activation gradients", stream);
      const size_t colsum_floats = column_sum_workspace_floats(m.rows_, static_cast<int>(max_w));
      if (colsum_floats > 0) {
        m.column_sum_ws_ = DeviceBuffer(colsum_floats * sizeof(float), "the bias-gradient workspace", stream);
      }
    } else {
      m.scratch_a_ = DeviceBuffer(rows * max_w * esize, "activations", stream);
      m.scratch_b_ = DeviceBuffer(rows * max_w * esize, "activations", stream);
      m.scratch_z_ = DeviceBuffer(rows * max_w * esize, "pre-activations", stream);
    }
    ws = m.workspace_.get();
  }

  std::unique_ptr<LtGemm> gemm(const GemmSpec& s) {
    return LtGemm::try_create(m.handle_, s, ws, kWorkspaceBytes, stream, &m.refusals_);
  }

  GemmSpec forward_spec(int l, const void* x, void* d, bool last) const {
    GemmSpec s;
    s.compute = compute;
    s.ta = CUBLAS_OP_T;
    s.tb = CUBLAS_OP_N;
    s.m = L.out_pad[l];
    s.n = rows;
    s.k = L.in_pad[l];
    s.a_type = s.b_type = T;
    s.d_type = last ? CUDA_R_32F : T;
    s.lda = s.ldb = L.in_pad[l];
    s.ldd = L.out_pad[l];
    s.a = m.weight(l);
    s.b = x;
    s.d = d;
    return s;
  }

  // The unfused forward of a layer: bias epilogue into z (else plain GEMM + bias in the kernel).
  void unfused_forward(int l, Layer& ly, const void* x) {
    if (training && !ly.last && ly.z.get() == nullptr) {  // the activation kernels read z back
      ly.z = DeviceBuffer(rows * static_cast<size_t>(L.out_pad[l]) * esize, "pre-activations", stream);
      ly.zp = ly.z.get();
    }
    GemmSpec s = forward_spec(l, x, ly.zp, ly.last);
    ly.fwd = nullptr;
    if (m.epilogues_.bias) {
      s.epilogue = CUBLASLT_EPILOGUE_BIAS;
      s.bias = const_cast<void*>(m.bias_for_epilogue(l, ly.last));
      ly.fwd = gemm(s);
    }
    ly.bias_fused = ly.fwd != nullptr;
    ly.act_fused = false;
    if (!ly.fwd) {
      s.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
      s.bias = nullptr;
      ly.fwd = gemm(s);
    }
    CUFM_REQUIRE(ly.fwd, "cuBLASLt has no algorithm for layer " << l << " (" << L.out_pad[l] << " x "
                                                                << m.rows_ << " x " << L.in_pad[l]
                                                                << ", precision " << to_string(m.precision_)
                                                                << "): try precision fp32 or other widths");
  }

  // Layer l's forward: the activation (and its aux output) fused into the GEMM where the policy
  // and cuBLASLt allow, else the unfused forward.
  void forward(int l) {
    auto ly = std::make_unique<Layer>();
    ly->last = l == L.layers - 1;
    const void* x = l == 0 ? m.input_.get() : m.layer_[l - 1]->y;
    const size_t width = static_cast<size_t>(L.out_pad[l]);
    if (ly->last) {
      ly->y = ly->zp = m.output_.get();
      unfused_forward(l, *ly, x);
    } else {
      if (training) {
        ly->a = DeviceBuffer(rows * width * esize, "activations", stream);
        ly->y = ly->a.get();
        // The pre-activation: GELU's epilogue writes it as its aux output; a fused ReLU keeps a
        // bit mask instead, and an unfused layer gets z in unfused_forward.
        if (fusable_act && act == Activation::GELU) {
          ly->z = DeviceBuffer(rows * width * esize, "pre-activations", stream);
          ly->zp = ly->z.get();
        }
      } else {
        ly->y = (l % 2 == 0) ? m.scratch_a_.get() : m.scratch_b_.get();
        ly->zp = m.scratch_z_.get();
      }
      if (fusable_act) {
        GemmSpec s = forward_spec(l, x, ly->y, false);
        s.bias = const_cast<void*>(m.bias_for_epilogue(l, false));
        if (!training) {
          s.epilogue = act == Activation::ReLU ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_GELU_BIAS;
        } else if (act == Activation::ReLU) {
          ly->mask_ld = round_up(static_cast<int>(width), 128);  // bits
          ly->mask = DeviceBuffer(static_cast<size_t>(ly->mask_ld) / 8 * rows, "the ReLU mask", stream);
          s.epilogue = CUBLASLT_EPILOGUE_RELU_AUX_BIAS;
          s.aux = ly->mask.get();
          s.aux_ld = ly->mask_ld;
        } else {
          s.epilogue = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
          s.aux = ly->zp;
          s.aux_ld = static_cast<int64_t>(width);
        }
        ly->fwd = gemm(s);
        ly->act_fused = ly->bias_fused = ly->fwd != nullptr;
      }
      if (!ly->fwd) unfused_forward(l, *ly, x);
    }
    m.layer_.push_back(std::move(ly));
  }

  // dX of layer l (l > 0) from its output gradient g into g_prev, with the previous layer's
  // activation derivative (and bias gradient) fused where allowed; a refused derivative re-plans
  // the previous layer's forward unfused.
  void input_gradient(int l, void* g, void* g_prev) {
    Layer& ly = *m.layer_[l];
    Layer& prev = *m.layer_[l - 1];
    GemmSpec s;
    s.compute = compute;
    s.ta = CUBLAS_OP_N;
    s.tb = CUBLAS_OP_N;
    s.m = L.in_pad[l];
    s.n = rows;
    s.k = L.out_pad[l];
    s.a_type = s.b_type = s.d_type = T;
    s.lda = L.in_pad[l];
    s.ldb = L.out_pad[l];
    s.ldd = L.in_pad[l];
    s.a = m.weight(l);
    s.b = g;
    s.d = g_prev;
    if (prev.act_fused) {
      // The derivative of the previous layer's activation in this GEMM's epilogue, with that
      // layer's bias gradient too (BGRAD) where the gradient buffer's type allows: cuBLASLt's bias
      // gradient has the output's type, and in bf16 the fp32 gradient comes from BGRADB instead.
      const bool relu = act == Activation::ReLU;
      GemmSpec f = s;
      f.aux = relu ? prev.mask.get() : prev.zp;
      f.aux_ld = relu ? prev.mask_ld : L.out_pad[l - 1];
      if (m.act_type_ == DType::F32 && m.epilogues_.bias && m.epilogues_.derivative) {
        f.epilogue = relu ? CUBLASLT_EPILOGUE_DRELU_BGRAD : CUBLASLT_EPILOGUE_DGELU_BGRAD;
        f.bias = m.grads_ + L.b_off[l - 1];
        ly.dx = gemm(f);
        prev.db_from_next_dx = ly.dx != nullptr;
      }
      if (!ly.dx && m.epilogues_.derivative) {
        f.epilogue = relu ? CUBLASLT_EPILOGUE_DRELU : CUBLASLT_EPILOGUE_DGELU;
        f.bias = nullptr;
        ly.dx = gemm(f);
      }
      if (!ly.dx) {
        // No fused derivative: the previous layer's forward stores z and runs the kernels instead.
        const void* px = l - 1 == 0 ? m.input_.get() : m.layer_[l - 2]->y;
        unfused_forward(l - 1, prev, px);
        prev.mask = DeviceBuffer();
      }
    }
    if (!ly.dx) ly.dx = gemm(s);
    CUFM_REQUIRE(ly.dx, "cuBLASLt has no algorithm for the input gradient of layer "
                            << l << " at precision " << to_string(m.precision_) << ": try precision fp32");
  }

  // dW of layer l from its output gradient g: dW = X^T G (column-major: dW^T[in, out] =
  // X^T[in, rows] * G[rows, out]), with the bias gradient (BGRADB) where it is not the next dX's.
  void weight_gradient(int l, void* g) {
    Layer& ly = *m.layer_[l];
    GemmSpec s;
    s.compute = compute;
    s.ta = CUBLAS_OP_N;
    s.tb = CUBLAS_OP_T;
    s.m = L.in_pad[l];
    s.n = L.out_pad[l];
    s.k = rows;
    s.a_type = s.b_type = T;
    s.d_type = CUDA_R_32F;
    s.lda = L.in_pad[l];
    s.ldb = L.out_pad[l];
    s.ldd = L.in_pad[l];
    s.a = l == 0 ? m.input_.get() : m.layer_[l - 1]->y;
    s.b = g;
    s.d = m.grads_ + L.w_off[l];
    ly.db_from_dw = !ly.db_from_next_dx;
    if (ly.db_from_dw && m.epilogues_.bias) {
      GemmSpec f = s;
      f.epilogue = CUBLASLT_EPILOGUE_BGRADB;
      f.bias = m.grads_ + L.b_off[l];
      ly.dw = gemm(f);
      ly.bgradb_fused = ly.dw != nullptr;
    }
    if (!ly.dw) ly.dw = gemm(s);
    CUFM_REQUIRE(ly.dw, "cuBLASLt has no algorithm for the weight gradient of layer "
                            << l << " at precision " << to_string(m.precision_) << ": try precision fp32");
  }
};

void LtMlp::build(cudaStream_t stream) {
  Planner p(*this, stream);
  p.allocate();
  for (int l = 0; l < layout_.layers; ++l) p.forward(l);
  if (mode_ != MlpMode::Training) return;
  // The backward, from the last layer down, its gradient ping-ponging between two buffers.
  void* g = dout_.get();
  for (int l = layout_.layers - 1; l >= 0; --l) {
    void* g_prev = (g == grad_a_.get()) ? grad_b_.get() : grad_a_.get();
    if (l > 0) p.input_gradient(l, g, g_prev);
    p.weight_gradient(l, g);
    g = g_prev;
  }
}

void LtMlp::forward(cudaStream_t stream) {
  for (int l = 0; l < layout_.layers; ++l) {
    Layer& ly = *layer_[l];
    ly.fwd->run(stream);
    const float* bias = ly.bias_fused ? nullptr : params_ + layout_.b_off[l];
    if (ly.last) {
      if (bias) bias_add(DType::F32, ly.zp, bias, rows_, layout_.out_pad[l], stream);
    } else if (!ly.act_fused) {
      activation_forward(config_.activation, act_type_, ly.zp, ly.y, bias, rows_, layout_.out_pad[l], stream);
    }
  }
}

void LtMlp::backward(cudaStream_t stream) {
  CUFM_REQUIRE(mode_ == MlpMode::Training, "LtMlp::backward: this MLP was built for inference");
  void* g = dout_.get();
  for (int l = layout_.layers - 1; l >= 0; --l) {
    Layer& ly = *layer_[l];
    void* g_prev = (g == grad_a_.get()) ? grad_b_.get() : grad_a_.get();
    ly.dw->run(stream);
    if (ly.db_from_dw && !ly.bgradb_fused) {
      column_sum(act_type_, g, rows_, layout_.out_pad[l], grads_ + layout_.b_off[l],
                 column_sum_ws_.as<float>(), stream);
    }
    if (l > 0) {
      ly.dx->run(stream);
      const Layer& prev = *layer_[l - 1];
      if (!prev.act_fused) {
        activation_backward(config_.activation, act_type_, g_prev, prev.zp, rows_, layout_.in_pad[l], stream);
      }
    }
    g = g_prev;
  }
}

int64_t inference_chunk_rows(const PaddedLayout& layout, Precision precision, int copies, int64_t cap) {
  constexpr size_t kChunkBytes = size_t{1} << 30;
  const size_t esize = precision == Precision::BF16 ? 2 : 4;
  const size_t row_bytes = (layout.in_pad[0] + 3 * static_cast<size_t>(layout.max_width_pad())) * esize +
                           static_cast<size_t>(layout.out_pad.back()) * sizeof(float);
  int64_t rows =
      std::max<int64_t>(1024, static_cast<int64_t>(kChunkBytes / (static_cast<size_t>(copies) * row_bytes)));
  return cap > 0 ? std::min(rows, cap) : rows;
}

const void* LtMlp::hidden_activation(int l) const {
  CUFM_REQUIRE(mode_ == MlpMode::Training, "LtMlp: hidden activations are kept in training mode only");
  CUFM_REQUIRE(l >= 0 && l + 1 < static_cast<int>(layer_.size()),
               "LtMlp: hidden layer " << l << " out of range [0, " << layer_.size() - 1 << ")");
  return layer_[l]->a.get();
}

std::string LtMlp::describe() const {
  std::ostringstream os;
  os << "cuBLASLt MLP, precision " << to_string(precision_) << ", " << rows_ << " rows, epilogues "
     << to_string(epilogue_mode_) << "\n";
  for (int l = 0; l < layout_.layers; ++l) {
    const Layer& ly = *layer_[l];
    os << "  layer " << l << " " << layout_.in[l] << "->" << layout_.out[l] << " (padded "
       << layout_.in_pad[l] << "->" << layout_.out_pad[l] << "): forward " << ly.fwd->name();
    if (!ly.last && !ly.act_fused) os << " + " << to_string(config_.activation) << " kernel";
    if (ly.dw) os << ", dW " << ly.dw->name() << (ly.db_from_dw && !ly.bgradb_fused ? " + column sum" : "");
    if (ly.dx) os << ", dX " << ly.dx->name();
    os << "\n";
  }
  for (const std::string& r : refusals_) os << "  refused: " << r << "\n";
  return os.str();
}

}  // namespace cufm::cuda
