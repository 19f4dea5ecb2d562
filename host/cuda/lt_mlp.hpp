// The MLP on the GPU through cuBLASLt (internal).
//
// Device layout: every layer width is padded to a multiple of 8 (zero rows and columns in W, zero
// bias), so every leading dimension meets the tensor-core and epilogue alignment rules (aux ld a
// multiple of 8, 128 bits for ReLU masks), and every tensor starts on a 256-byte boundary, in the
// fp32 parameters and in their bf16 copy (the heuristic is also told each pointer's alignment). Zero
// padding is exact: padded units compute act(0) = 0 for SiLU/ReLU/GELU, their weights get zero
// gradients, and Adam leaves zeros at zero. Activations are row-major [rows, width_pad], which in
// cuBLAS's column-major view is X^T[width, rows]: forward Y^T = W(op T) X^T.
//
// Which epilogues a plan asks for is host/cuda/epilogue_policy.hpp's decision (no GELU epilogue at
// FP32; none at all with Epilogues::Unfused). Per layer the chosen fused epilogues are tried first (bias +
// ReLU/GELU with an aux output forward, DRELU/DGELU + bias gradient backward (in bf16 DRELU/DGELU alone: the
// bias gradient would have the bf16 output's type, so it comes from BGRADB into the fp32 gradient), BGRADB
// for the other bias gradients). In bf16 a fused forward adds the bias rounded to bf16 (cuBLASLt's bias has
// the output's type) and the unfused one the fp32 bias: the two paths differ by that rounding. Each GEMM's
// algorithm is chosen once by the heuristic and then test-run; an epilogue that is unavailable
// or fails falls back to the plain GEMM plus cuFM's own elementwise kernels. SiLU has no epilogue:
// bias epilogue + one fused elementwise kernel per layer and direction.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

#include "cufm/device.hpp"
#include "cufm/model.hpp"
#include "host/cuda/device_buffer.hpp"
#include "host/cuda/epilogue_policy.hpp"
#include "kernels/activation.hpp"
#include "kernels/dtype.hpp"

namespace cufm::cuda {

// Where each layer's padded tensors live in the device's flat parameter buffer.
struct PaddedLayout {
  explicit PaddedLayout(const MlpConfig& config);
  int layers = 0;
  std::vector<int> in, out;          // true widths
  std::vector<int> in_pad, out_pad;  // padded to multiples of 8
  std::vector<size_t> w_off, b_off;  // in floats
  size_t total = 0;                  // a multiple of 128
  int max_width_pad() const;
  size_t unpadded_total() const;  // ParamLayout(config).total()
  // Host flat buffer (ParamLayout order) <-> padded device order.
  std::vector<float> pad(const std::vector<float>& flat) const;
  std::vector<float> unpad(const std::vector<float>& padded) const;
};

inline int round_up(int v, int m) {
  return (v + m - 1) / m * m;
}

enum class MlpMode : int { Training = 0, Inference = 1 };

// Points per inference pass whose activations (input, three hidden buffers and the fp32 output per
// row, times `copies`: 2 with guidance) fit in about 1 GiB, at least 1024, at most cap when cap > 0.
int64_t inference_chunk_rows(const PaddedLayout& layout, Precision precision, int copies, int64_t cap);

// One cuBLASLt matmul with its descriptor, layouts and the algorithm that passed its test run.
class LtGemm;

class LtMlp {
 public:
  // params: DEVICE padded fp32 weights; params_bf16: their bf16 copy (BF16 only, else nullptr);
  // grads: DEVICE padded fp32 gradient buffer (Training only). Buffers are sized for `rows`.
  // epilogues: the process's CUFM_LT_EPILOGUES setting unless a test asks for one.
  LtMlp(const MlpConfig& config, Precision precision, int64_t rows, MlpMode mode, const float* params,
        const __nv_bfloat16* params_bf16, float* grads, cudaStream_t stream,
        Epilogues epilogues = epilogues_from_environment());
  ~LtMlp();
  LtMlp(const LtMlp&) = delete;
  LtMlp& operator=(const LtMlp&) = delete;

  const PaddedLayout& layout() const { return layout_; }
  DType act_type() const { return act_type_; }
  int64_t rows() const { return rows_; }
  // The first layer's input [rows, input_ld()] of act_type(), which the caller fills.
  void* input() const { return input_.get(); }
  int input_ld() const { return layout_.in_pad[0]; }
  // The output [rows, output_ld()] fp32, valid after forward().
  const float* output() const { return output_.as<float>(); }
  int output_ld() const { return layout_.out_pad.back(); }
  // dL/d(output) [rows, output_ld()] of act_type(), which the caller fills before backward().
  void* dout() const { return dout_.get(); }
  // Hidden layer l's activation [rows, layout().out_pad[l]] of act_type(), as the last forward()
  // left it (Training only; for tests that check a backward against the forward's own decisions).
  const void* hidden_activation(int l) const;

  void forward(cudaStream_t stream);
  // Writes every parameter's gradient (overwrites). Needs the forward of the same input.
  void backward(cudaStream_t stream);
  // A line per layer: which epilogues were fused (for logs and the benchmark reports).
  std::string describe() const;

 private:
  struct Layer;
  struct Planner;  // build()'s forward, input-gradient and weight-gradient planning (lt_mlp.cpp)
  void build(cudaStream_t stream);
  const void* weight(int l) const;
  const void* bias_for_epilogue(int l, bool fp32_output) const;

  MlpConfig config_;
  PaddedLayout layout_;
  Precision precision_;
  EpiloguePlan epilogues_;
  Epilogues epilogue_mode_;
  DType act_type_;
  int64_t rows_;
  MlpMode mode_;
  const float* params_;
  const __nv_bfloat16* params_bf16_;
  float* grads_;
  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer workspace_, input_, output_, dout_, grad_a_, grad_b_, scratch_a_, scratch_b_, scratch_z_;
  DeviceBuffer column_sum_ws_;  // column_sum's split partials (training)
  std::vector<std::unique_ptr<Layer>> layer_;
  std::vector<std::string> refusals_;  // the fused epilogues cuBLASLt refused, and why
};

}  // namespace cufm::cuda
