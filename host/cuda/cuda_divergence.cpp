// Log-likelihoods on the GPU, in fp32.
//
// CudaDivergence: the velocity and its divergence. The MLP's forward with cuBLAS SGEMMs keeping each
// hidden layer's pre-activations, then forward-mode tangents, P rows per point, through the same
// weights: one SGEMM per layer over P times the rows (not P launches), with kernels/divergence.cu's
// elementwise steps between them. The points run in chunks whose tangents fit two buffers of about
// 2^25 floats. A call's labels, contexts and Hutchinson probes are uploaded once (bind) and the
// evaluations read and write device arrays on the divergence's stream without waiting.
//
// cuda_integrate_with_divergence: the flow with its divergence (host/divergence_flow.hpp), never
// leaving the device between the first step and the last. Where the fused sampler takes the model
// and solver (fixed steps, widths up to 128, D up to 64: kernels/fused_sampler.hpp), one launch
// integrates every point with its tangents (CUFM_GPU_MLP overrides, as for sampling). Else the
// layered path: the state [x | a], the solver's stages and stage points in device memory, the
// solver driver of host/solver_driver.hpp over kernels/solver.cu's combinations and norms as the
// GPU sampler runs it, and the divergence above; fixed steps never wait, Dormand-Prince reads back
// one scalar (the error norm) per step, and a kept trajectory downloads x at each step.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cufm/detail/math.hpp"
#include "cufm/error.hpp"
#include "host/cuda/cuda_backend.hpp"
#include "host/cuda/device_buffer.hpp"
#include "host/cuda/gpu_mlp.hpp"
#include "host/divergence_flow.hpp"
#include "host/solver_driver.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/divergence.hpp"
#include "kernels/fused_sampler_launch.hpp"
#include "kernels/solver.hpp"

namespace cufm::detail {

using cuda::DeviceBuffer;

class CudaDivergence {
 public:
  CudaDivergence(const Model& model, int64_t max_chunk_rows)
      : m_(model.config()),
        layout_(model.config()),
        params_(model.params().size() * sizeof(float), "the model's weights for the divergence"),
        max_chunk_(max_chunk_rows) {
    CUFM_REQUIRE(max_chunk_rows >= 0,
                 "make_cuda_divergence: max_chunk_rows must be >= 0, got " << max_chunk_rows);
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
  // Queued work must not outlive the buffers it uses.
  ~CudaDivergence() {
    if (stream_ && cudaStreamSynchronize(stream_) != cudaSuccess) (void)cudaGetLastError();
    if (handle_) (void)cublasDestroy(handle_);
    if (stream_) (void)cudaStreamDestroy(stream_);
  }
  CudaDivergence(const CudaDivergence&) = delete;
  CudaDivergence& operator=(const CudaDivergence&) = delete;

  cudaStream_t stream() const { return stream_; }
  const MlpConfig& config() const { return m_; }

  // The next evaluations' n points and their conditions, from HOST arrays (uploaded here, once):
  // labels [n] (nullptr: the null class), context [n, K] (nullptr: the null context), guidance
  // (nullptr: none), probes [n, P, D] (nullptr: exact, P = D). Waits for the uploads.
  void bind(int64_t n, const int32_t* labels, const float* context, const float* guidance,
            const float* probes, int P) {
    const int D = m_.data_dim, K = m_.context_dim;
    CUFM_REQUIRE(n >= 1, "divergence: no points");
    CUFM_REQUIRE(probes || P == D, "divergence: the exact trace takes P = " << D << " tangents, got " << P);
    CUFM_REQUIRE(P >= 1, "divergence: P must be >= 1, got " << P);
    n_ = n;
    P_ = P;
    guided_ = guidance != nullptr;
    w_ = guided_ ? *guidance : 0.0f;
    has_labels_ = labels != nullptr;
    has_context_ = context != nullptr;
    hutchinson_ = probes != nullptr;
    upload(labels_, labels, static_cast<size_t>(n) * sizeof(int32_t), "the divergence's labels");
    upload(context_, context, static_cast<size_t>(n) * K * sizeof(float), "the divergence's contexts");
    upload(probes_, probes, static_cast<size_t>(n) * P * D * sizeof(float), "Hutchinson's probes");
    CUFM_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host sources may change after the call
    // Rows per chunk: each tangent buffer holds rows x P x the widest layer, up to 2^25 floats.
    int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 25) / (static_cast<int64_t>(P) * max_width_));
    if (max_chunk_ > 0) chunk = std::min(chunk, max_chunk_);
    chunk_ = std::min(chunk, n);
  }

  // The weights (ParamLayout order) and the bound call's conditions in device memory (nullptr:
  // none bound).
  const float* params() const { return params_.as<float>(); }
  const int32_t* labels() const { return has_labels_ ? labels_.as<int32_t>() : nullptr; }
  const float* context() const { return has_context_ ? context_.as<float>() : nullptr; }
  const float* probes() const { return hutchinson_ ? probes_.as<float>() : nullptr; }

  // v [n, D] and div [n] at the DEVICE points x [n, D] at time t, for the bound points and
  // conditions, enqueued on stream() without waiting. v and div may not overlap x.
  void evaluate_device(float t, const float* x, float* v, float* div) {
    CUFM_REQUIRE(n_ >= 1, "divergence: evaluate_device before bind");
    const int D = m_.data_dim, K = m_.context_dim;
    reserve(chunk_, P_, guided_ ? 2 : 1);
    for (int64_t first = 0; first < n_; first += chunk_) {
      const int64_t R = std::min(chunk_, n_ - first);
      const int32_t* labels = has_labels_ ? labels_.as<int32_t>() + first : nullptr;
      const float* context = has_context_ ? context_.as<float>() + first * K : nullptr;
      // Unguided, the output layer writes v in place; guided, both passes' v then their blend.
      float* out = guided_ ? out_.as<float>() : v + first * D;
      forward(t, x + first * D, labels, context, R, out);
      if (guided_) cuda::divergence_guided(out, out + R * D, w_, R * D, v + first * D, stream_);
      const float* dirs = hutchinson_ ? probes_.as<float>() + first * P_ * D : nullptr;
      if (guided_) {
        float* d = div_.as<float>();
        tangents(R, 0, dirs, d);
        tangents(R, 1, dirs, d + R);
        cuda::divergence_guided(d, d + R, w_, R, div + first, stream_);
      } else {
        tangents(R, 0, dirs, div + first);
      }
    }
  }

  // evaluate_device on HOST arrays: uploads x and the conditions, waits, downloads v and div.
  void evaluate(float t, const float* x, const int32_t* labels, const float* context, int64_t n,
                const float* guidance, const float* probes, int P, float* v, float* div) {
    const int D = m_.data_dim;
    bind(n, labels, context, guidance, probes, P);
    const size_t xb = static_cast<size_t>(n) * D * sizeof(float);
    if (host_x_.bytes() < xb) host_x_ = DeviceBuffer(xb, "the divergence's points");
    if (host_v_.bytes() < xb) host_v_ = DeviceBuffer(xb, "the velocity");
    if (host_div_.bytes() < static_cast<size_t>(n) * sizeof(float))
      host_div_ = DeviceBuffer(static_cast<size_t>(n) * sizeof(float), "the divergences");
    CUFM_CUDA_CHECK(cudaMemcpyAsync(host_x_.get(), x, xb, cudaMemcpyHostToDevice, stream_));
    evaluate_device(t, host_x_.as<float>(), host_v_.as<float>(), host_div_.as<float>());
    CUFM_CUDA_CHECK(cudaMemcpyAsync(v, host_v_.get(), xb, cudaMemcpyDeviceToHost, stream_));
    CUFM_CUDA_CHECK(cudaMemcpyAsync(div, host_div_.get(), static_cast<size_t>(n) * sizeof(float),
                                    cudaMemcpyDeviceToHost, stream_));
    CUFM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

 private:
  const float* weight(int l) const { return params_.as<float>() + layout_.weight_offset(l); }
  const float* bias(int l) const { return params_.as<float>() + layout_.bias_offset(l); }

  // b holds `bytes` copied from the host src (or nothing, with src nullptr), on the stream.
  void upload(DeviceBuffer& b, const void* src, size_t bytes, const char* what) {
    if (!src || bytes == 0) return;
    if (b.bytes() < bytes) b = DeviceBuffer(bytes, what);
    CUFM_CUDA_CHECK(cudaMemcpyAsync(b.get(), src, bytes, cudaMemcpyHostToDevice, stream_));
  }

  // y [M, N] = x [M, K] (row stride ldx) times W^T, W row-major [N, ldw] (its first K columns).
  void gemm(const float* x, int64_t M, int K, int ldx, const float* w, int N, int ldw, float* y) {
    CUFM_REQUIRE(M <= INT32_MAX, "divergence: a GEMM of " << M << " rows");
    const float one = 1.0f, zero = 0.0f;
    CUFM_CUBLAS_CHECK(cublasSgemm(handle_, CUBLAS_OP_T, CUBLAS_OP_N, N, static_cast<int>(M), K, &one, w, ldw,
                                  x, ldx, &zero, y, N));
  }

  // One chunk's workspace: rows points, P tangents each, `passes` forward passes.
  void reserve(int64_t rows, int P, int passes) {
    if (rows <= rows_ && P <= tangents_per_row_ && passes <= passes_) return;
    rows_ = std::max(rows, rows_);
    tangents_per_row_ = std::max(P, tangents_per_row_);
    passes_ = std::max(passes, passes_);
    const int D = m_.data_dim, L = m_.num_layers();
    const size_t pr = static_cast<size_t>(passes_) * rows_;
    const size_t tr = static_cast<size_t>(rows_) * tangents_per_row_;
    auto floats = [](size_t n, const char* what) { return DeviceBuffer(n * sizeof(float), what); };
    input_ = floats(pr * m_.input_dim(), "the divergence's model input");
    pre_.clear();
    act_.clear();
    for (int l = 0; l + 1 < L; ++l) {
      pre_.push_back(floats(pr * m_.layer_out(l), "a layer's pre-activations"));
      act_.push_back(floats(pr * m_.layer_out(l), "a layer's activations"));
    }
    out_ = floats(pr * D, "the velocity of both passes");
    tan_a_ = floats(tr * max_width_, "the tangents");
    tan_b_ = floats(tr * max_width_, "the tangents");
    div_ = floats(static_cast<size_t>(rows_) * 2, "the divergences of both passes");
  }

  // The forward of R points (both passes when guided) into out [passes R, D], keeping each hidden
  // layer's pre-activations for the tangents.
  void forward(float t, const float* x, const int32_t* labels, const float* context, int64_t R, float* out) {
    const int passes = guided_ ? 2 : 1;
    cuda::divergence_input(x, labels, context, R, passes, m_.data_dim, m_.time_features, m_.context_dim,
                           m_.num_classes, t, input_.as<float>(), stream_);
    const int L = m_.num_layers();
    const int64_t rows = passes * R;
    const float* h = input_.as<float>();
    for (int l = 0; l < L; ++l) {
      const int in = m_.layer_in(l), width = m_.layer_out(l);
      const bool last = l + 1 == L;
      float* z = last ? out : pre_[l].as<float>();
      gemm(h, rows, in, in, weight(l), width, in, z);
      cuda::divergence_bias_act(m_.activation, z, last ? nullptr : act_[l].as<float>(), bias(l), rows, width,
                                stream_);
      if (!last) h = act_[l].as<float>();
    }
  }

  // div [R] of pass `pass`'s rows from their P tangents each (dirs: this chunk's probes, or
  // nullptr: exact).
  void tangents(int64_t R, int pass, const float* dirs, float* div) {
    const int D = m_.data_dim, L = m_.num_layers(), in0 = m_.input_dim(), w0 = m_.layer_out(0);
    const int P = P_;
    const int64_t TR = R * P;
    const int64_t offset = pass * R;  // this pass's rows in the forward's buffers
    float* cur = tan_a_.as<float>();
    if (dirs) {
      gemm(dirs, TR, D, D, weight(0), w0, in0, cur);
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
    cuda::divergence_trace(cur, dirs, R, P, D, div, stream_);
  }

  MlpConfig m_;
  ParamLayout layout_;
  DeviceBuffer params_;
  const int64_t max_chunk_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t handle_ = nullptr;
  int max_width_ = 0;
  // The bound call.
  int64_t n_ = 0, chunk_ = 0;
  int P_ = 0;
  bool guided_ = false, has_labels_ = false, has_context_ = false, hutchinson_ = false;
  float w_ = 0.0f;
  DeviceBuffer labels_, context_, probes_;
  // One chunk's workspace, sized for the largest call so far.
  int64_t rows_ = 0;
  int tangents_per_row_ = 0, passes_ = 0;
  DeviceBuffer input_, out_, tan_a_, tan_b_, div_;
  std::vector<DeviceBuffer> pre_, act_;
  // evaluate()'s device copies of the host arrays.
  DeviceBuffer host_x_, host_v_, host_div_;
};

namespace {

// The solver driver's backend (host/solver_driver.hpp) for the state [x | a] of n (D + 1) floats
// on the device: stage points and updates by cuda::solver_update, the field by the divergence,
// the norms reduced on the device and read back as one double.
class DeviceFlowSteps {
 public:
  DeviceFlowSteps(CudaDivergence& d, int64_t n, float atol, float rtol, DivergenceFlowResult* keep)
      : d_(d),
        s_(d.stream()),
        xn_(n * d.config().data_dim),
        elems_(n * (d.config().data_dim + 1)),
        atol_(atol),
        rtol_(rtol),
        keep_(keep),
        scratch_(static_cast<size_t>(elems_) * sizeof(float), "the flow's stage point", s_),
        workspace_(cuda::solver_workspace_bytes(), "the solver workspace", s_),
        err_sum_(sizeof(double), "the error norm", s_) {}

  void eval(float t, const hd::Combination& c, float* k, float* y_out) {
    const float* at = c.x;
    if (c.terms > 0) {
      float* y = y_out ? y_out : scratch_.as<float>();
      update(c, y);
      at = y;
    }
    d_.evaluate_device(t, at, k, k + xn_);  // dx/dt = v (the first n D floats), da/dt = div v
    ++evaluations;
  }
  void update(const hd::Combination& c, float* x_out) {
    cuda::solver_update(c, elems_, x_out, nullptr, 0.0f, 0.0f, nullptr, nullptr, s_);
  }
  double update_with_error(const hd::Combination& y, float* y_out, const hd::Combination& err) {
    cuda::solver_update(y, elems_, y_out, &err, atol_, rtol_, err_sum_.as<double>(), workspace_.get(), s_);
    return read_rms();
  }
  double norm(const float* e, const float* x) {
    cuda::scaled_norm_sq(e, x, nullptr, elems_, atol_, rtol_, err_sum_.as<double>(), workspace_.get(), s_);
    return read_rms();
  }
  void record(float t, const float* x) {
    if (!keep_) return;
    keep_->times.push_back(t);
    const size_t at = keep_->trajectory.size();
    keep_->trajectory.resize(at + static_cast<size_t>(xn_));
    CUFM_CUDA_CHECK(cudaMemcpyAsync(keep_->trajectory.data() + at, x,
                                    static_cast<size_t>(xn_) * sizeof(float), cudaMemcpyDeviceToHost, s_));
    CUFM_CUDA_CHECK(cudaStreamSynchronize(s_));
  }

  int64_t evaluations = 0;

 private:
  // The RMS over the whole state, as the host driver's.
  double read_rms() {
    double sum = 0.0;
    CUFM_CUDA_CHECK(cudaMemcpyAsync(&sum, err_sum_.get(), sizeof(double), cudaMemcpyDeviceToHost, s_));
    CUFM_CUDA_CHECK(cudaStreamSynchronize(s_));
    return std::sqrt(sum / static_cast<double>(elems_));
  }

  CudaDivergence& d_;
  cudaStream_t s_;
  const int64_t xn_, elems_;
  const float atol_, rtol_;
  DivergenceFlowResult* keep_;
  DeviceBuffer scratch_, workspace_, err_sum_;
};

// The fused sampler's program for the flow of the bound call (x, integral and trajectory unset).
cuda::FusedSample fused_flow(const CudaDivergence& d, const DivergenceFlow& f, int64_t n, int P) {
  return cuda::fused_flow_of(d.config(), d.params(), f.solver, f.steps, f.t0, f.t1, n, d.labels(),
                             d.context(), f.guidance ? &*f.guidance : nullptr, P, d.probes(), nullptr,
                             nullptr, nullptr);
}

// Empty where the fused kernel runs the bound call's flow, else why not.
std::string fused_flow_refusal(const CudaDivergence& d, const DivergenceFlow& f, int64_t n, int P) {
  const cuda::FusedSample p = fused_flow(d, f, n, P);
  std::string why = cuda::fused_sampler_refusal(p.net, p.dim, Precision::FP32, f.solver);
  if (why.empty() && cuda::fused_sampler_tile(p) == 0) {
    why = "a tile of 4 points with their " + std::to_string(P) +
          " tangents each does not fit the GPU's shared memory";
  }
  return why;
}

// The whole flow in one launch of the fused kernel (fixed steps; kernels/fused_sampler.hpp).
DivergenceFlowResult integrate_fused(CudaDivergence& d, const float* x0, int64_t n, const DivergenceFlow& f,
                                     int P, bool keep) {
  cudaStream_t s = d.stream();
  const int D = d.config().data_dim;
  const size_t xn = static_cast<size_t>(n) * D;
  DeviceBuffer x(xn * sizeof(float), "the flow's points", s);
  DeviceBuffer integral(static_cast<size_t>(n) * sizeof(float), "the divergence's integrals", s);
  DeviceBuffer trajectory;
  if (keep)
    trajectory = DeviceBuffer((static_cast<size_t>(f.steps) + 1) * xn * sizeof(float), "the trajectory", s);
  DivergenceFlowResult r;  // the downloads' destination: declared before the wait below
  struct WaitOnExit {      // destroyed before the buffers: queued work finishes before they are freed
    cudaStream_t s;
    ~WaitOnExit() {
      if (cudaStreamSynchronize(s) != cudaSuccess) (void)cudaGetLastError();
    }
  } wait_on_exit{s};
  CUFM_CUDA_CHECK(cudaMemcpyAsync(x.get(), x0, xn * sizeof(float), cudaMemcpyHostToDevice, s));
  cuda::FusedSample p = fused_flow(d, f, n, P);
  p.x = x.as<float>();
  p.integral = integral.as<float>();
  p.trajectory = keep ? trajectory.as<float>() : nullptr;
  p.tile = cuda::fused_sampler_tile(p);
  cuda::fused_sample(p, s);
  r.x.resize(xn);
  r.integral.resize(static_cast<size_t>(n));
  CUFM_CUDA_CHECK(cudaMemcpyAsync(r.x.data(), x.get(), xn * sizeof(float), cudaMemcpyDeviceToHost, s));
  CUFM_CUDA_CHECK(cudaMemcpyAsync(r.integral.data(), integral.get(), static_cast<size_t>(n) * sizeof(float),
                                  cudaMemcpyDeviceToHost, s));
  if (keep) {
    for (int i = 0; i <= f.steps; ++i) r.times.push_back(hd::fixed_step_time(f.t0, f.t1, i, f.steps));
    r.trajectory.resize((static_cast<size_t>(f.steps) + 1) * xn);
    CUFM_CUDA_CHECK(cudaMemcpyAsync(r.trajectory.data(), trajectory.get(),
                                    r.trajectory.size() * sizeof(float), cudaMemcpyDeviceToHost, s));
  }
  CUFM_CUDA_CHECK(cudaStreamSynchronize(s));
  r.counts.accepted_steps = f.steps;
  r.counts.evaluations = static_cast<int64_t>(f.steps) * p.tableau.stages;
  r.mlp = "cuda fused divergence";
  return r;
}

DivergenceFlowResult integrate_on_device(CudaDivergence& d, const float* x0, int64_t n,
                                         const DivergenceFlow& f, const float* probes, bool keep) {
  const int D = d.config().data_dim;
  CUFM_REQUIRE(f.dim == D,
               "integrate_with_divergence: the flow's dim " << f.dim << " is not the model's " << D);
  const int P = probes ? f.probes : D;
  d.bind(n, f.labels.empty() ? nullptr : f.labels.data(), f.context.empty() ? nullptr : f.context.data(),
         f.guidance ? &*f.guidance : nullptr, probes, P);
  const cuda::GpuMlp want = cuda::gpu_mlp_from_env();
  if (want != cuda::GpuMlp::Layered && cuda::take_fused(want, fused_flow_refusal(d, f, n, P))) {
    return integrate_fused(d, x0, n, f, P, keep);
  }
  cudaStream_t s = d.stream();
  const int64_t xn = n * D, elems = xn + n;
  const size_t bytes = static_cast<size_t>(elems) * sizeof(float);
  auto state = [&](const char* what) { return DeviceBuffer(bytes, what, s); };  // zeroed: a(t0) = 0
  DeviceBuffer x = state("the flow's state"), y = state("the flow's next state");
  std::vector<DeviceBuffer> k;
  float* kp[hd::kMaxStages] = {};
  for (int i = 0; i < solver_stages(f.solver); ++i) {
    k.push_back(state("the solver's stages"));
    kp[i] = k.back().as<float>();
  }
  CUFM_CUDA_CHECK(
      cudaMemcpyAsync(x.get(), x0, static_cast<size_t>(xn) * sizeof(float), cudaMemcpyHostToDevice, s));
  DivergenceFlowResult r;
  DeviceFlowSteps b(d, n, f.atol, f.rtol, keep ? &r : nullptr);
  // Destroyed before the buffers above: however the call ends, its queued work finishes before
  // they are freed.
  struct WaitOnExit {
    cudaStream_t s;
    ~WaitOnExit() {
      if (cudaStreamSynchronize(s) != cudaSuccess) (void)cudaGetLastError();
    }
  } wait_on_exit{s};
  const float* final_state = nullptr;
  if (f.solver == Solver::Dopri5) {
    StepCounts counts;
    final_state = dopri5(b, f.t0, f.t1, f.max_steps, x.as<float>(), y.as<float>(), kp, counts);
    r.counts.accepted_steps = counts.accepted;
    r.counts.rejected_steps = counts.rejected;
  } else {
    const hd::FixedTableau& tab = fixed_tableau(f.solver);
    float* xs = x.as<float>();
    b.record(f.t0, xs);
    for (int i = 0; i < f.steps; ++i) {  // in place: each element is read before it is written
      const float tn = hd::fixed_step_time(f.t0, f.t1, i + 1, f.steps);
      fixed_step(b, tab, hd::fixed_step_time(f.t0, f.t1, i, f.steps), tn, xs, xs, kp, y.as<float>());
      b.record(tn, xs);
    }
    r.counts.accepted_steps = f.steps;
    final_state = xs;
  }
  r.counts.evaluations = b.evaluations;
  r.x.resize(static_cast<size_t>(xn));
  r.integral.resize(static_cast<size_t>(n));
  CUFM_CUDA_CHECK(cudaMemcpyAsync(r.x.data(), final_state, static_cast<size_t>(xn) * sizeof(float),
                                  cudaMemcpyDeviceToHost, s));
  CUFM_CUDA_CHECK(cudaMemcpyAsync(r.integral.data(), final_state + xn, static_cast<size_t>(n) * sizeof(float),
                                  cudaMemcpyDeviceToHost, s));
  CUFM_CUDA_CHECK(cudaStreamSynchronize(s));
  r.mlp = "cuda layered divergence";
  return r;
}

}  // namespace

void CudaDivergenceDeleter::operator()(CudaDivergence* d) const {
  delete d;
}

CudaDivergencePtr make_cuda_divergence(const Model& model, int64_t max_chunk_rows) {
  return CudaDivergencePtr(new CudaDivergence(model, max_chunk_rows));
}

void cuda_divergence_evaluate(CudaDivergence& d, float t, const float* x, const int32_t* labels,
                              const float* context, int64_t n, const float* guidance, const float* probes,
                              int P, float* v, float* div) {
  d.evaluate(t, x, labels, context, n, guidance, probes, P, v, div);
}

DivergenceFlowResult cuda_integrate_with_divergence(CudaDivergence& d, const float* x0, int64_t n,
                                                    const DivergenceFlow& flow, const float* probes,
                                                    bool keep) {
  return integrate_on_device(d, x0, n, flow, probes, keep);
}

}  // namespace cufm::detail
