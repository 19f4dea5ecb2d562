// Sampling on the GPU: the CPU's solvers (host/sampler.cpp) with the model through cuBLASLt and
// each stage's state update fused into the kernel that writes the model input. Guidance runs the
// conditional and null rows as one forward pass of 2n rows. The model runs over the points in
// chunks whose activations fit in kChunkBytes (one chunk up to ~170k points at width 512), so large
// counts fit; the solver state (count x dim floats per stage) is whole. Fixed-step solvers are
// captured as CUDA graphs; Dopri5 reads back one scalar per step (the error norm) for its
// step-size controller. A call that throws leaves its queued work to the destructor's wait.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "cufm/error.hpp"
#include "cufm/math.hpp"
#include "cufm/sampler.hpp"
#include "host/backend.hpp"
#include "host/cuda/cuda_check.hpp"
#include "host/cuda/device_buffer.hpp"
#include "host/cuda/lt_mlp.hpp"
#include "host/cuda/ops.hpp"

namespace cufm::detail {

namespace {

using cuda::DeviceBuffer;
using cuda::StageCombination;

StageCombination comb(const float* x, float h, std::initializer_list<std::pair<float, const float*>> terms) {
  StageCombination c;
  c.x = x;
  c.h = h;
  for (const auto& [a, k] : terms) {
    c.a[c.terms] = a;
    c.k[c.terms] = k;
    ++c.terms;
  }
  return c;
}

constexpr size_t kChunkBytes = size_t{1} << 30;  // the model's activations per chunk of points

class GpuSampler {
 public:
  GpuSampler(const Model& model, const SampleConfig& cfg, int64_t max_chunk) : cfg_(cfg) {
    const MlpConfig& m = model.config();
    n_ = cfg.count;
    dim_ = m.data_dim;
    elems_ = n_ * dim_;
    copies_ = cfg.guidance ? 2 : 1;
    cudaStream_t s = stream_.get();
    const cuda::PaddedLayout layout(m);
    // Bytes per model row: input, three activation buffers (inference), fp32 output.
    const size_t esize = cfg.precision == Precision::BF16 ? 2 : 4;
    const size_t row_bytes = (layout.in_pad[0] + 3 * static_cast<size_t>(layout.max_width_pad())) * esize +
                             static_cast<size_t>(layout.out_pad.back()) * sizeof(float);
    chunk_ = std::max<int64_t>(1024, static_cast<int64_t>(kChunkBytes / (copies_ * row_bytes)));
    if (max_chunk > 0) chunk_ = std::min(chunk_, max_chunk);
    chunk_ = std::min(chunk_, n_);
    const std::vector<float> padded = layout.pad(model.params());
    params_ = DeviceBuffer(layout.total * sizeof(float), "the parameters");
    CUFM_CUDA_CHECK(
        cudaMemcpyAsync(params_.get(), padded.data(), params_.bytes(), cudaMemcpyHostToDevice, s));
    if (cfg.precision == Precision::BF16) {
      params_bf16_ = DeviceBuffer(layout.total * sizeof(__nv_bfloat16), "the bf16 weights");
      cuda::convert_to_bf16(params_.as<float>(), params_bf16_.as<__nv_bfloat16>(), layout.total, s);
    }
    mlp_ = std::make_unique<cuda::LtMlp>(m, cfg.precision, copies_ * chunk_, cuda::MlpMode::Inference,
                                         params_.as<float>(), params_bf16_.as<__nv_bfloat16>(), nullptr, s);
    input_.n = n_;
    input_.dim = dim_;
    input_.time_features = m.time_features;
    input_.num_classes = m.num_classes;
    input_.copies = copies_;
    input_.type = mlp_->act_type();
    input_.input = mlp_->input();
    input_.ld = mlp_->input_ld();
    if (m.num_classes > 0 && cfg.labels.size() > 1) {
      labels_ = DeviceBuffer(cfg.labels.size() * sizeof(int32_t), "the labels");
      CUFM_CUDA_CHECK(
          cudaMemcpyAsync(labels_.get(), cfg.labels.data(), labels_.bytes(), cudaMemcpyHostToDevice, s));
      input_.labels = labels_.as<int32_t>();
    } else if (m.num_classes > 0 && cfg.labels.size() == 1) {
      input_.label_all = cfg.labels[0];
    }
    for (int i = 0; i < stages(cfg.solver); ++i) k_[i] = DeviceBuffer(elems_ * sizeof(float), "solver stages");
    workspace_ = DeviceBuffer(cuda::solver_workspace_bytes(), "the solver workspace");
    err_sum_ = DeviceBuffer(sizeof(double), "the error norm");
    CUFM_CUDA_CHECK(cudaStreamSynchronize(s));
  }

  // Queued work of a call that threw must not outlive the buffers it uses.
  ~GpuSampler() {
    (void)cudaStreamSynchronize(stream_.get());
    (void)cudaGetLastError();
  }
  GpuSampler(const GpuSampler&) = delete;
  GpuSampler& operator=(const GpuSampler&) = delete;

  SampleResult run() {
    SampleResult res;
    res.count = n_;
    res.dim = dim_;
    res.device = Device::CUDA;
    cudaStream_t s = stream_.get();
    if (cfg_.solver == Solver::Dopri5) {
      x_ = DeviceBuffer(elems_ * sizeof(float), "the samples");
      y_ = DeviceBuffer(elems_ * sizeof(float), "the samples");
      cuda::sampler_noise(cfg_.seed, n_, dim_, x_.as<float>(), s);
      dopri5(res);
    } else {
      fixed_steps(res);
    }
    res.x.resize(static_cast<size_t>(elems_));
    CUFM_CUDA_CHECK(
        cudaMemcpyAsync(res.x.data(), final_x_, res.x.size() * sizeof(float), cudaMemcpyDeviceToHost, s));
    CUFM_CUDA_CHECK(cudaStreamSynchronize(s));
    res.evaluations = evaluations_;
    return res;
  }

 private:
  // k = v(t, y) for the stage point y = comb (also stored in y_out when given), chunk by chunk.
  // A short last chunk runs the model on all of its rows; the rows past it are not read.
  void eval(float t, const StageCombination& c, float* k, float* y_out, cudaStream_t s) {
    for (int64_t first = 0; first < n_; first += chunk_) {
      const int64_t rows = std::min(chunk_, n_ - first);
      const int64_t off = first * dim_;
      StageCombination cc = c;
      if (cc.x) cc.x += off;
      for (int j = 0; j < cc.terms; ++j) cc.k[j] += off;
      cuda::ModelInput in = input_;
      in.n = rows;
      if (in.labels) in.labels += first;
      cuda::stage_input(cc, t, in, y_out ? y_out + off : nullptr, s);
      mlp_->forward(s);
      cuda::collect_velocity(mlp_->output(), mlp_->output_ld(), rows, dim_, copies_,
                             cfg_.guidance.value_or(0.0f), k + off, s);
    }
    ++evaluations_;
  }
  float* k(int i) { return k_[i].as<float>(); }
  static int stages(Solver solver) {
    switch (solver) {
      case Solver::Euler: return 1;
      case Solver::Midpoint:
      case Solver::Heun: return 2;
      case Solver::RK4: return 4;
      default: return cuda::kMaxStages;  // Dormand-Prince
    }
  }

  void fixed_steps(SampleResult& res) {
    cudaStream_t s = stream_.get();
    const int steps = cfg_.steps;
    const bool keep = cfg_.keep_trajectory;
    // With a trajectory, state s lives in slot s; without, x is updated in place.
    x_ = DeviceBuffer((keep ? static_cast<size_t>(steps) + 1 : 1) * elems_ * sizeof(float), "the samples");
    if (cfg_.solver != Solver::Euler) y_ = DeviceBuffer(elems_ * sizeof(float), "the stage points");
    float* y = y_.as<float>();
    cuda::sampler_noise(cfg_.seed, n_, dim_, x_.as<float>(), s);
    auto slot = [&](int i) { return x_.as<float>() + (keep ? static_cast<size_t>(i) * elems_ : 0); };
    // The steps are captured as CUDA graphs of at most steps_per_graph steps each, launched one after
    // another and waited for once: a few launches instead of thousands, with the graph's size (and
    // its host memory) bounded however many steps are asked for. An executable graph destroyed
    // while in flight is freed when it completes, so each goes as soon as it is launched.
    const int chunks = static_cast<int>((n_ + chunk_ - 1) / chunk_);
    const int steps_per_graph = std::max(1, 256 / chunks);  // about 256 chunk evaluations per stage
    const float t0 = 0.0f, span = 1.0f;
    if (keep) res.times.push_back(t0);
    for (int first = 0; first < steps; first += steps_per_graph) {
      const int last = std::min(steps, first + steps_per_graph);
      cudaGraph_t graph = nullptr;
      CUFM_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      try {
        for (int i = first; i < last; ++i) {
          const float t = t0 + span * static_cast<float>(i) / static_cast<float>(steps);
          const float tn = t0 + span * static_cast<float>(i + 1) / static_cast<float>(steps);
          const float h = tn - t;
          const float* x = slot(i);
          float* xn = slot(i + 1);
          const StageCombination at_x = comb(x, 0.0f, {});
          StageCombination update;
          switch (cfg_.solver) {
            case Solver::Euler:
              eval(t, at_x, k(0), nullptr, s);
              update = comb(x, h, {{1.0f, k(0)}});
              break;
            case Solver::Midpoint:
              eval(t, at_x, k(0), nullptr, s);
              eval(t + 0.5f * h, comb(x, 0.5f * h, {{1.0f, k(0)}}), k(1), y, s);
              update = comb(x, h, {{1.0f, k(1)}});
              break;
            case Solver::Heun:
              eval(t, at_x, k(0), nullptr, s);
              eval(tn, comb(x, h, {{1.0f, k(0)}}), k(1), y, s);
              update = comb(x, h, {{0.5f, k(0)}, {0.5f, k(1)}});
              break;
            default:  // RK4
              eval(t, at_x, k(0), nullptr, s);
              eval(t + 0.5f * h, comb(x, 0.5f * h, {{1.0f, k(0)}}), k(1), y, s);
              eval(t + 0.5f * h, comb(x, 0.5f * h, {{1.0f, k(1)}}), k(2), y, s);
              eval(tn, comb(x, h, {{1.0f, k(2)}}), k(3), y, s);
              update = comb(x, h, {{1.0f / 6, k(0)}, {1.0f / 3, k(1)}, {1.0f / 3, k(2)}, {1.0f / 6, k(3)}});
              break;
          }
          cuda::solver_update(update, elems_, xn, nullptr, 0.0f, 0.0f, nullptr, nullptr, s);
          if (keep) res.times.push_back(tn);
        }
      } catch (...) {
        if (cudaStreamEndCapture(s, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
        (void)cudaGetLastError();
        throw;
      }
      CUFM_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
      cudaGraphExec_t exec = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      CUFM_CUDA_CHECK(e);
      const cudaError_t launched = cudaGraphLaunch(exec, s);
      cudaGraphExecDestroy(exec);
      CUFM_CUDA_CHECK(launched);
    }
    CUFM_CUDA_CHECK(cudaStreamSynchronize(s));
    res.accepted_steps = steps;
    final_x_ = slot(steps);
    if (keep) {
      res.trajectory.resize((static_cast<size_t>(steps) + 1) * elems_);
      CUFM_CUDA_CHECK(cudaMemcpyAsync(res.trajectory.data(), x_.get(), res.trajectory.size() * sizeof(float),
                                      cudaMemcpyDeviceToHost, s));
      CUFM_CUDA_CHECK(cudaStreamSynchronize(s));
    }
  }

  // RMS of scaled_error_sq over the batch, as the CPU's rms_scaled (xn nullptr: zeros).
  double rms(const float* e, const float* x, const float* xn) {
    cuda::scaled_norm_sq(e, x, xn, elems_, cfg_.atol, cfg_.rtol, err_sum_.as<double>(), workspace_.get(),
                         stream_.get());
    return read_rms();
  }
  double read_rms() {
    double sum = 0.0;
    CUFM_CUDA_CHECK(
        cudaMemcpyAsync(&sum, err_sum_.get(), sizeof(double), cudaMemcpyDeviceToHost, stream_.get()));
    CUFM_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    return std::sqrt(sum / static_cast<double>(std::max<int64_t>(1, elems_)));
  }

  void record(SampleResult& res, float t, const float* x) {
    if (!cfg_.keep_trajectory) return;
    res.times.push_back(t);
    const size_t at = res.trajectory.size();
    res.trajectory.resize(at + static_cast<size_t>(elems_));
    CUFM_CUDA_CHECK(cudaMemcpyAsync(res.trajectory.data() + at, x, elems_ * sizeof(float),
                                    cudaMemcpyDeviceToHost, stream_.get()));
    CUFM_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
  }

  // Dormand-Prince 5(4), step for step the CPU's controller (host/sampler.cpp).
  void dopri5(SampleResult& res) {
    namespace dp = hd::dopri5;
    cudaStream_t s = stream_.get();
    const float t0 = 0.0f, t1 = 1.0f, span = t1 - t0, atol = cfg_.atol, rtol = cfg_.rtol;
    float* x = x_.as<float>();
    float* y = y_.as<float>();
    float* k1 = k(0);
    float* k7 = k(6);
    float t = t0;
    record(res, t, x);
    eval(t, comb(x, 0.0f, {}), k1, nullptr, s);
    float h;
    {
      const double d0 = rms(x, x, nullptr), d1 = rms(k1, x, nullptr);
      double h0 = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
      h0 = std::min<double>(h0, span);
      eval(t + static_cast<float>(h0), comb(x, static_cast<float>(h0), {{1.0f, k1}}), k(1), y, s);
      cuda::solver_update(comb(k(1), 1.0f, {{-1.0f, k1}}), elems_, k(2), nullptr, 0, 0, nullptr, nullptr, s);
      const double d2 = rms(k(2), x, nullptr) / h0;
      const double h1 =
          std::max(d1, d2) <= 1e-15 ? std::max(1e-6, h0 * 1e-3) : std::pow(0.01 / std::max(d1, d2), 0.2);
      h = static_cast<float>(std::min({100.0 * h0, h1, static_cast<double>(span)}));
    }
    while (t < t1) {
      CUFM_REQUIRE(res.accepted_steps + res.rejected_steps < cfg_.max_steps,
                   "dopri5 did not reach t = " << t1 << " within max_steps = " << cfg_.max_steps
                                               << " (at t = " << t
                                               << "): loosen atol/rtol or raise max_steps");
      if (t + h > t1 || t1 - (t + h) < 1e-6f * span) h = t1 - t;
      float* k2 = k(1);
      float* k3 = k(2);
      float* k4 = k(3);
      float* k5 = k(4);
      float* k6 = k(5);
      eval(t + dp::c2 * h, comb(x, h, {{dp::a21, k1}}), k2, nullptr, s);
      eval(t + dp::c3 * h, comb(x, h, {{dp::a31, k1}, {dp::a32, k2}}), k3, nullptr, s);
      eval(t + dp::c4 * h, comb(x, h, {{dp::a41, k1}, {dp::a42, k2}, {dp::a43, k3}}), k4, nullptr, s);
      eval(t + dp::c5 * h, comb(x, h, {{dp::a51, k1}, {dp::a52, k2}, {dp::a53, k3}, {dp::a54, k4}}), k5,
           nullptr, s);
      eval(t + h, comb(x, h, {{dp::a61, k1}, {dp::a62, k2}, {dp::a63, k3}, {dp::a64, k4}, {dp::a65, k5}}), k6,
           nullptr, s);
      const StageCombination y_comb =
          comb(x, h, {{dp::b1, k1}, {dp::b3, k3}, {dp::b4, k4}, {dp::b5, k5}, {dp::b6, k6}});
      eval(t + h, y_comb, k7, y, s);
      const StageCombination e_comb = comb(
          nullptr, h, {{dp::e1, k1}, {dp::e3, k3}, {dp::e4, k4}, {dp::e5, k5}, {dp::e6, k6}, {dp::e7, k7}});
      // Rewrites y with the same bits and reduces the scaled error against (x, y).
      cuda::solver_update(y_comb, elems_, y, &e_comb, atol, rtol, err_sum_.as<double>(), workspace_.get(), s);
      const double e = read_rms();
      if (e <= 1.0) {
        t = (t + h >= t1) ? t1 : t + h;
        std::swap(x, y);
        std::swap(k1, k7);  // first same as last
        ++res.accepted_steps;
        record(res, t, x);
      } else {
        ++res.rejected_steps;
      }
      h *= dp::step_factor(e);
      CUFM_REQUIRE(h > 1e-7f * span, "dopri5 step size collapsed to "
                                         << h << " at t = " << t
                                         << ": the field is not smooth enough for "
                                            "atol/rtol; loosen them");
    }
    final_x_ = x;
  }

  const SampleConfig& cfg_;
  int64_t n_ = 0, elems_ = 0, chunk_ = 0;
  int dim_ = 0, copies_ = 1;
  cuda::Stream stream_;
  DeviceBuffer params_, params_bf16_, labels_, workspace_, err_sum_, x_, y_;
  DeviceBuffer k_[cuda::kMaxStages];
  std::unique_ptr<cuda::LtMlp> mlp_;
  cuda::ModelInput input_;
  const float* final_x_ = nullptr;
  int64_t evaluations_ = 0;
};

}  // namespace

SampleResult cuda_sample_with(const Model& model, const SampleConfig& config, int64_t max_chunk_rows) {
  config.validate(model.config());
  GpuSampler sampler(model, config, max_chunk_rows);
  return sampler.run();
}

SampleResult cuda_sample(const Model& model, const SampleConfig& config) {
  return cuda_sample_with(model, config, 0);
}

}  // namespace cufm::detail
