// The velocity and its divergence on the GPU (log-likelihoods), in fp32: the MLP's forward with
// cuBLAS SGEMMs keeping each hidden layer's pre-activations, then forward-mode tangents, P rows per
// point, through the same weights: one SGEMM per layer over P times the rows (not P launches), with
// kernels/divergence.cu's elementwise steps between them. Called by the solver with host arrays:
// each evaluation uploads the points (and Hutchinson's probes), runs chunk by chunk on a stream of
// its own and downloads v and div.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "cufm/error.hpp"
#include "host/cuda/cuda_backend.hpp"
#include "host/cuda/device_buffer.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/divergence.hpp"

namespace cufm::detail {

using cuda::DeviceBuffer;

class CudaDivergence {
 public:
  explicit CudaDivergence(const Model& model)
      : m_(model.config()),
        layout_(model.config()),
        params_(model.params().size() * sizeof(float), "the model's weights for the divergence") {
    CUFM_CUDA_CHECK(
        cudaMemcpy(params_.get(), model.params().data(), params_.bytes(), cudaMemcpyHostToDevice));
    CUFM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    const cublasStatus_t st = cublasCreate(&handle_);
    if (st != CUBLAS_STATUS_SUCCESS) {
      (void)cudaStreamDestroy(stream_);
      CUFM_CUBLAS_CHECK(st);
    }
    CUFM_CUBLAS_CHECK(cublasSetStream(handle_, stream_));
    // Plain fp32 (no TF32): a log-density is a sum along a path, and TF32's 10-bit inputs would
    // show in it.
    CUFM_CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_PEDANTIC_MATH));
    max_width_ = m_.data_dim;
    for (int h : m_.hidden) max_width_ = std::max(max_width_, h);
  }
  ~CudaDivergence() {
    if (handle_) (void)cublasDestroy(handle_);
    if (stream_) (void)cudaStreamDestroy(stream_);
  }
  CudaDivergence(const CudaDivergence&) = delete;
  CudaDivergence& operator=(const CudaDivergence&) = delete;

  void evaluate(float t, const float* x, const int32_t* labels, const float* context, int64_t n,
                const float* guidance, const float* probes, int P, float* v, float* div) {
    const int D = m_.data_dim;
    const bool guided = guidance != nullptr;
    const int passes = guided ? 2 : 1;
    // Rows per chunk: each tangent buffer holds rows x P x the widest layer, up to 2^25 floats.
    const int64_t chunk = std::max<int64_t>(
        1, std::min<int64_t>(n, (int64_t{1} << 25) / (static_cast<int64_t>(P) * max_width_)));
    reserve(chunk, P, passes, probes != nullptr, labels != nullptr, context != nullptr);
    const int K = m_.context_dim;
    for (int64_t first = 0; first < n; first += chunk) {
      const int64_t R = std::min(chunk, n - first);
      CUFM_CUDA_CHECK(
          cudaMemcpyAsync(x_.get(), x + first * D, sizeof(float) * R * D, cudaMemcpyHostToDevice, stream_));
      if (labels) {
        CUFM_CUDA_CHECK(cudaMemcpyAsync(labels_.get(), labels + first, sizeof(int32_t) * R,
                                        cudaMemcpyHostToDevice, stream_));
      }
      if (context) {
        CUFM_CUDA_CHECK(cudaMemcpyAsync(context_.get(), context + first * K, sizeof(float) * R * K,
                                        cudaMemcpyHostToDevice, stream_));
      }
      if (probes) {
        CUFM_CUDA_CHECK(cudaMemcpyAsync(dirs_.get(), probes + first * P * D, sizeof(float) * R * P * D,
                                        cudaMemcpyHostToDevice, stream_));
      }
      forward(t, R, passes, labels != nullptr, context != nullptr);
      const float* out = out_.as<float>();
      if (guided) {
        cuda::divergence_guided(out, out + R * D, *guidance, R * D, v_.as<float>(), stream_);
        out = v_.as<float>();
      }
      CUFM_CUDA_CHECK(
          cudaMemcpyAsync(v + first * D, out, sizeof(float) * R * D, cudaMemcpyDeviceToHost, stream_));
      for (int pass = 0; pass < passes; ++pass) {
        tangents(R, pass, P, probes != nullptr, div_.as<float>() + pass * R);
      }
      const float* d = div_.as<float>();
      if (guided) {
        cuda::divergence_guided(d, d + R, *guidance, R, div_.as<float>() + 2 * R, stream_);
        d = div_.as<float>() + 2 * R;
      }
      CUFM_CUDA_CHECK(cudaMemcpyAsync(div + first, d, sizeof(float) * R, cudaMemcpyDeviceToHost, stream_));
      CUFM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
  }

 private:
  const float* weight(int l) const { return params_.as<float>() + layout_.weight_offset(l); }
  const float* bias(int l) const { return params_.as<float>() + layout_.bias_offset(l); }

  // y [M, N] = x [M, K] (row stride ldx) times W^T, W row-major [N, ldw] (its first K columns).
  void gemm(const float* x, int64_t M, int K, int ldx, const float* w, int N, int ldw, float* y) {
    CUFM_REQUIRE(M <= INT32_MAX, "divergence: a GEMM of " << M << " rows");
    const float one = 1.0f, zero = 0.0f;
    CUFM_CUBLAS_CHECK(cublasSgemm(handle_, CUBLAS_OP_T, CUBLAS_OP_N, N, static_cast<int>(M), K, &one, w, ldw,
                                  x, ldx, &zero, y, N));
  }

  void reserve(int64_t rows, int P, int passes, bool hutchinson, bool labels, bool context) {
    if (rows <= rows_ && P <= P_ && passes <= passes_ && (!hutchinson || dirs_.get()) &&
        (!labels || labels_.get()) && (!context || context_.get()))
      return;
    rows_ = std::max(rows, rows_);
    P_ = std::max(P, P_);
    passes_ = std::max(passes, passes_);
    const int D = m_.data_dim, L = m_.num_layers();
    const size_t pr = static_cast<size_t>(passes_) * rows_;
    const size_t tr = static_cast<size_t>(rows_) * P_;
    auto floats = [](size_t n, const char* what) { return DeviceBuffer(n * sizeof(float), what); };
    x_ = floats(static_cast<size_t>(rows_) * D, "the divergence's points");
    labels_ = DeviceBuffer(static_cast<size_t>(rows_) * sizeof(int32_t), "the divergence's labels");
    if (m_.context_dim > 0) {
      context_ = floats(static_cast<size_t>(rows_) * m_.context_dim, "the divergence's context");
    }
    if (hutchinson || dirs_.get()) dirs_ = floats(tr * D, "Hutchinson's probes");
    input_ = floats(pr * m_.input_dim(), "the divergence's model input");
    pre_.clear();
    act_.clear();
    for (int l = 0; l + 1 < L; ++l) {
      pre_.push_back(floats(pr * m_.layer_out(l), "a layer's pre-activations"));
      act_.push_back(floats(pr * m_.layer_out(l), "a layer's activations"));
    }
    out_ = floats(pr * D, "the velocity");
    v_ = floats(static_cast<size_t>(rows_) * D, "the guided velocity");
    tan_a_ = floats(tr * max_width_, "the tangents");
    tan_b_ = floats(tr * max_width_, "the tangents");
    div_ = floats(static_cast<size_t>(rows_) * 3, "the divergences");
  }

  void forward(float t, int64_t R, int passes, bool labels, bool context) {
    cuda::divergence_input(x_.as<float>(), labels ? labels_.as<int32_t>() : nullptr,
                           context ? context_.as<float>() : nullptr, R, passes, m_.data_dim, m_.time_features,
                           m_.context_dim, m_.num_classes, t, input_.as<float>(), stream_);
    const int L = m_.num_layers();
    const int64_t rows = passes * R;
    const float* h = input_.as<float>();
    for (int l = 0; l < L; ++l) {
      const int in = m_.layer_in(l), out = m_.layer_out(l);
      const bool last = l + 1 == L;
      float* z = last ? out_.as<float>() : pre_[l].as<float>();
      gemm(h, rows, in, in, weight(l), out, in, z);
      cuda::divergence_bias_act(m_.activation, z, last ? nullptr : act_[l].as<float>(), bias(l), rows, out,
                                stream_);
      if (!last) h = act_[l].as<float>();
    }
  }

  // div [R] of pass `pass`'s rows from their P tangents each.
  void tangents(int64_t R, int pass, int P, bool hutchinson, float* div) {
    const int D = m_.data_dim, L = m_.num_layers(), in0 = m_.input_dim(), w0 = m_.layer_out(0);
    const int64_t TR = R * P;
    const int64_t offset = pass * R;  // this pass's rows in the forward's buffers
    float* cur = tan_a_.as<float>();
    if (hutchinson) {
      gemm(dirs_.as<float>(), TR, D, D, weight(0), w0, in0, cur);
      cuda::divergence_scale_tangents(m_.activation, cur, pre_[0].as<float>() + offset * w0, R, P, w0,
                                      stream_);
    } else {
      cuda::divergence_first_tangents(m_.activation, weight(0), in0, pre_[0].as<float>() + offset * w0, R, D,
                                      w0, cur, stream_);
    }
    int width = w0;
    for (int l = 1; l < L; ++l) {
      const int out = m_.layer_out(l);
      float* next = cur == tan_a_.as<float>() ? tan_b_.as<float>() : tan_a_.as<float>();
      gemm(cur, TR, width, width, weight(l), out, width, next);
      if (l + 1 < L) {
        cuda::divergence_scale_tangents(m_.activation, next, pre_[l].as<float>() + offset * out, R, P, out,
                                        stream_);
      }
      cur = next;
      width = out;
    }
    cuda::divergence_trace(cur, hutchinson ? dirs_.as<float>() : nullptr, R, P, D, div, stream_);
  }

  MlpConfig m_;
  ParamLayout layout_;
  DeviceBuffer params_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t handle_ = nullptr;
  int max_width_ = 0;
  int64_t rows_ = 0;
  int P_ = 0, passes_ = 0;
  DeviceBuffer x_, labels_, context_, dirs_, input_, out_, v_, tan_a_, tan_b_, div_;
  std::vector<DeviceBuffer> pre_, act_;
};

void CudaDivergenceDeleter::operator()(CudaDivergence* d) const {
  delete d;
}

CudaDivergencePtr make_cuda_divergence(const Model& model) {
  return CudaDivergencePtr(new CudaDivergence(model));
}

void cuda_divergence_evaluate(CudaDivergence& d, float t, const float* x, const int32_t* labels,
                              const float* context, int64_t n, const float* guidance, const float* probes,
                              int P, float* v, float* div) {
  d.evaluate(t, x, labels, context, n, guidance, probes, P, v, div);
}

}  // namespace cufm::detail
