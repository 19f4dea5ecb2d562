// Sampling on the GPU: the CPU's solvers (host/sampler.cpp) with the model through cuBLASLt and
// each stage's state update fused into the kernel that writes the model input. Guidance runs the
// conditional and null rows as one forward pass of 2n rows. The model runs over the points in
// chunks whose activations fit in about 1 GiB (cuda::inference_chunk_rows: one chunk up to ~170k
// points at width 512), so large counts fit; the solver state (count x dim floats per stage) is whole.
// Fixed-step solvers are captured as CUDA graphs; Dopri5 reads back one scalar per step (the error norm) for
// its step-size controller. A CudaSampler (cufm::Sampler) keeps its plans, buffers and graphs for the next
// call of the same shape; a call that throws waits for its queued work and drops them all.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "cufm/error.hpp"
#include "cufm/math.hpp"
#include "cufm/sampler.hpp"
#include "host/backend.hpp"
#include "host/cuda/cuda_graph.hpp"
#include "host/cuda/device_buffer.hpp"
#include "host/cuda/lt_mlp.hpp"
#include "kernels/convert.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/solver.hpp"

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

// What the model's plans and buffers depend on.
struct ShapeKey {
  MlpConfig model;
  Precision precision = Precision::FP32;
  int64_t count = 0;
  int copies = 0;
  bool operator==(const ShapeKey& o) const {
    return model == o.model && precision == o.precision && count == o.count && copies == o.copies;
  }
};

// What a fixed-step graph bakes into its kernels' arguments besides the buffers (the weights,
// the per-sample labels and the noise are rewritten in place before each launch).
struct GraphKey {
  Solver solver = Solver::Euler;
  int steps = 0;
  bool keep_trajectory = false;
  float guidance = 0.0f;
  int32_t label_all = -1;
  const int32_t* labels = nullptr;  // the per-sample labels' buffer (its contents are rewritten)
  float t0 = 0.0f, t1 = 1.0f;       // the span: every stage's time is baked in
  bool operator==(const GraphKey& o) const {
    return solver == o.solver && steps == o.steps && keep_trajectory == o.keep_trajectory &&
           std::memcmp(&guidance, &o.guidance, sizeof(float)) == 0 && label_all == o.label_all &&
           labels == o.labels && std::memcmp(&t0, &o.t0, sizeof(float)) == 0 &&
           std::memcmp(&t1, &o.t1, sizeof(float)) == 0;
  }
};

}  // namespace

// The GPU sampler, kept between calls (cufm::Sampler): the weights' device copy, the cuBLASLt plans,
// the solver's buffers and the fixed-step graphs are reused while the shapes match and rebuilt
// when they do not.
class CudaSampler {
 public:
  explicit CudaSampler(int64_t max_chunk) : max_chunk_(max_chunk) {}
  // Queued work must not outlive the buffers it uses.
  ~CudaSampler() {
    const cuda::DeviceScope on(device_, false);
    if (cudaStreamSynchronize(stream_.get()) != cudaSuccess) {
      (void)cudaGetLastError();
      std::fprintf(stderr, "cufm: warning: a CUDA error was pending when the sampler was destroyed\n");
    }
    reset();
    stream_.reset();  // on this sampler's device, not the caller's
  }
  CudaSampler(const CudaSampler&) = delete;
  CudaSampler& operator=(const CudaSampler&) = delete;

  SampleResult sample(const Model& model, const SampleConfig& cfg, const float* x0) {
    cfg.validate(model.config());
    const cuda::DeviceScope on(device_);
    cfg_ = &cfg;
    x0_ = x0;
    try {
      prepare(model, cfg);
      SampleResult res = run();
      cfg_ = nullptr;
      x0_ = nullptr;
      return res;
    } catch (...) {
      cfg_ = nullptr;
      x0_ = nullptr;
      // A failed call leaves nothing half-built for the next one: wait for what it queued and
      // drop everything (the next call rebuilds).
      (void)cudaStreamSynchronize(stream_.get());
      (void)cudaGetLastError();
      reset();
      throw;
    }
  }

 private:
  void reset() {
    graphs_.clear();
    mlp_.reset();
    shape_.reset();
    for (DeviceBuffer* b : {&params_, &params_bf16_, &labels_, &workspace_, &err_sum_, &x_, &y_}) {
      *b = DeviceBuffer();
    }
    for (DeviceBuffer& b : k_) b = DeviceBuffer();
  }

  // (Re)allocates b unless it already has `bytes`; a new allocation invalidates the graphs.
  void ensure(DeviceBuffer& b, size_t bytes, const char* what) {
    if (b.bytes() == bytes) return;
    graphs_.clear();
    b = DeviceBuffer();
    b = DeviceBuffer(bytes, what, stream_.get());
  }

  // Builds what this call's shape needs (or keeps it), then uploads the weights and labels.
  void prepare(const Model& model, const SampleConfig& cfg) {
    const MlpConfig& m = model.config();
    cudaStream_t s = stream_.get();
    n_ = cfg.count;
    dim_ = m.data_dim;
    elems_ = n_ * dim_;
    copies_ = cfg.guidance ? 2 : 1;
    const ShapeKey shape{m, cfg.precision, n_, copies_};
    if (!shape_ || !(*shape_ == shape)) {
      reset();
      const cuda::PaddedLayout layout(m);
      chunk_ = std::min(cuda::inference_chunk_rows(layout, cfg.precision, copies_, max_chunk_), n_);
      params_ = DeviceBuffer(layout.total * sizeof(float), "the parameters", s);
      if (cfg.precision == Precision::BF16) {
        params_bf16_ = DeviceBuffer(layout.total * sizeof(__nv_bfloat16), "the bf16 weights", s);
      }
      mlp_ = std::make_unique<cuda::LtMlp>(m, cfg.precision, copies_ * chunk_, cuda::MlpMode::Inference,
                                           params_.as<float>(), params_bf16_.as<__nv_bfloat16>(), nullptr, s);
      workspace_ = DeviceBuffer(cuda::solver_workspace_bytes(), "the solver workspace", s);
      err_sum_ = DeviceBuffer(sizeof(double), "the error norm", s);
      layout_ = std::make_unique<cuda::PaddedLayout>(layout);
      shape_ = shape;
    }
    // The weights, in place (the graphs read them from this buffer).
    padded_ = layout_->pad(model.params());
    CUFM_CUDA_CHECK(
        cudaMemcpyAsync(params_.get(), padded_.data(), params_.bytes(), cudaMemcpyHostToDevice, s));
    if (cfg.precision == Precision::BF16) {
      cuda::convert_to_bf16(params_.as<float>(), params_bf16_.as<__nv_bfloat16>(), layout_->total, s);
    }
    input_ = cuda::ModelInput{};
    input_.n = n_;
    input_.dim = dim_;
    input_.time_features = m.time_features;
    input_.num_classes = m.num_classes;
    input_.copies = copies_;
    input_.type = mlp_->act_type();
    input_.input = mlp_->input();
    input_.ld = mlp_->input_ld();
    if (m.num_classes > 0 && cfg.labels.size() > 1) {
      ensure(labels_, cfg.labels.size() * sizeof(int32_t), "the labels");
      CUFM_CUDA_CHECK(
          cudaMemcpyAsync(labels_.get(), cfg.labels.data(), labels_.bytes(), cudaMemcpyHostToDevice, s));
      input_.labels = labels_.as<int32_t>();
    } else if (m.num_classes > 0 && cfg.labels.size() == 1) {
      input_.label_all = cfg.labels[0];
    }
    for (int i = 0; i < stages(cfg.solver); ++i) ensure(k_[i], elems_ * sizeof(float), "solver stages");
    // The host copies above read padded_ and cfg.labels: let them finish before either can change.
    CUFM_CUDA_CHECK(cudaStreamSynchronize(s));
  }

  SampleResult run() {
    SampleResult res;
    res.count = n_;
    res.dim = dim_;
    res.device = Device::CUDA;
    evaluations_ = 0;
    cudaStream_t s = stream_.get();
    if (cfg_->solver == Solver::Dopri5) {
      ensure(x_, elems_ * sizeof(float), "the samples");
      ensure(y_, elems_ * sizeof(float), "the samples");
      start_points(x_.as<float>());
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

  // The initial points in x: the caller's (uploaded) or the seed's noise.
  void start_points(float* x) {
    if (x0_) {
      CUFM_CUDA_CHECK(cudaMemcpyAsync(x, x0_, elems_ * sizeof(float), cudaMemcpyHostToDevice, stream_.get()));
    } else {
      cuda::sampler_noise(cfg_->seed, n_, dim_, x, stream_.get());
    }
  }

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
                             cfg_->guidance.value_or(0.0f), k + off, s);
    }
    ++evaluations_;
  }
  float* k(int i) { return k_[i].as<float>(); }
  static int stages(Solver solver) {
    switch (solver) {
      case Solver::Euler:
        return 1;
      case Solver::Midpoint:
      case Solver::Heun:
        return 2;
      case Solver::RK4:
        return 4;
      default:
        return cuda::kMaxStages;  // Dormand-Prince
    }
  }

  // One fixed step from slot(i) to slot(i + 1), enqueued (or captured) on s.
  void enqueue_step(int i, int steps, const std::function<float*(int)>& slot, cudaStream_t s) {
    const float t = hd::fixed_step_time(cfg_->t0, cfg_->t1, i, steps);
    const float tn = hd::fixed_step_time(cfg_->t0, cfg_->t1, i + 1, steps);
    const float h = tn - t;
    const float* x = slot(i);
    float* xn = slot(i + 1);
    float* y = y_.as<float>();
    const StageCombination at_x = comb(x, 0.0f, {});
    StageCombination update;
    switch (cfg_->solver) {
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
  }

  void fixed_steps(SampleResult& res) {
    cudaStream_t s = stream_.get();
    const int steps = cfg_->steps;
    const bool keep = cfg_->keep_trajectory;
    // With a trajectory, state i lives in slot i; without, x is updated in place.
    ensure(x_, (keep ? static_cast<size_t>(steps) + 1 : 1) * elems_ * sizeof(float), "the samples");
    if (cfg_->solver != Solver::Euler) ensure(y_, elems_ * sizeof(float), "the stage points");
    const std::function<float*(int)> slot = [&](int i) {
      return x_.as<float>() + (keep ? static_cast<size_t>(i) * elems_ : 0);
    };
    // The steps are captured as CUDA graphs of at most steps_per_graph steps each, launched one
    // after another and waited for once: a few launches instead of thousands, with each graph's
    // size (and host memory) bounded however many steps are asked for. The graphs stay for the
    // next call with the same key and buffers, which then only rewrites the weights, the labels
    // and the noise before launching them.
    const GraphKey key{cfg_->solver,     steps,         keep,     cfg_->guidance.value_or(0.0f),
                       input_.label_all, input_.labels, cfg_->t0, cfg_->t1};
    if (!(key == graph_key_)) graphs_.clear();
    start_points(x_.as<float>());
    if (graphs_.empty()) {
      const int chunks = static_cast<int>((n_ + chunk_ - 1) / chunk_);
      const int steps_per_graph = std::max(1, 256 / chunks);  // about 256 chunk evaluations per stage
      for (int first = 0; first < steps; first += steps_per_graph) {
        const int last = std::min(steps, first + steps_per_graph);
        try {
          graphs_.push_back(cuda::CudaGraph::capture(s, [&](cudaStream_t cs) {
            for (int i = first; i < last; ++i) enqueue_step(i, steps, slot, cs);
          }));
        } catch (...) {
          graphs_.clear();  // never keep a partial set under the old key
          throw;
        }
      }
      graph_key_ = key;
    }
    for (const cuda::CudaGraph& g : graphs_) g.launch(s);
    CUFM_CUDA_CHECK(cudaStreamSynchronize(s));
    res.accepted_steps = steps;
    evaluations_ = static_cast<int64_t>(steps) * stages(cfg_->solver);
    final_x_ = slot(steps);
    if (keep) {
      for (int i = 0; i <= steps; ++i) res.times.push_back(hd::fixed_step_time(cfg_->t0, cfg_->t1, i, steps));
      res.trajectory.resize((static_cast<size_t>(steps) + 1) * elems_);
      CUFM_CUDA_CHECK(cudaMemcpyAsync(res.trajectory.data(), x_.get(), res.trajectory.size() * sizeof(float),
                                      cudaMemcpyDeviceToHost, s));
      CUFM_CUDA_CHECK(cudaStreamSynchronize(s));
    }
  }

  // RMS of scaled_error_sq over the batch, as the CPU's rms_scaled (xn nullptr: zeros).
  double rms(const float* e, const float* x, const float* xn) {
    cuda::scaled_norm_sq(e, x, xn, elems_, cfg_->atol, cfg_->rtol, err_sum_.as<double>(), workspace_.get(),
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
    if (!cfg_->keep_trajectory) return;
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
    const float atol = cfg_->atol, rtol = cfg_->rtol;
    const dp::Direction dir(cfg_->t0, cfg_->t1);
    const float length = dir.length;
    float* x = x_.as<float>();
    float* y = y_.as<float>();
    float* k1 = k(0);
    float* k7 = k(6);
    float s_done = 0.0f;  // the distance from t0 covered so far
    record(res, dir.t0, x);
    eval(dir.t0, comb(x, 0.0f, {}), k1, nullptr, s);
    float h;
    {
      const double d0 = rms(x, x, nullptr), d1 = rms(k1, x, nullptr);
      const double h0 = dp::first_guess(d0, d1, length);
      eval(dir.at(s_done, static_cast<float>(h0)), comb(x, dir.step(static_cast<float>(h0)), {{1.0f, k1}}),
           k(1), y, s);
      cuda::solver_update(comb(k(1), 1.0f, {{-1.0f, k1}}), elems_, k(2), nullptr, 0, 0, nullptr, nullptr, s);
      const double d2 = rms(k(2), x, nullptr) / h0;
      h = dp::initial_step(h0, d1, d2, length);
    }
    while (s_done < length) {
      CUFM_REQUIRE(res.accepted_steps + res.rejected_steps < cfg_->max_steps,
                   "dopri5 did not reach t = " << dir.t1 << " within max_steps = " << cfg_->max_steps
                                               << " (at t = " << dir.time(s_done)
                                               << "): loosen atol/rtol or raise max_steps");
      if (s_done + h > length || length - (s_done + h) < 1e-6f * length) h = length - s_done;
      const float hs = dir.step(h);
      float* k2 = k(1);
      float* k3 = k(2);
      float* k4 = k(3);
      float* k5 = k(4);
      float* k6 = k(5);
      eval(dir.at(s_done, dp::c2 * h), comb(x, hs, {{dp::a21, k1}}), k2, nullptr, s);
      eval(dir.at(s_done, dp::c3 * h), comb(x, hs, {{dp::a31, k1}, {dp::a32, k2}}), k3, nullptr, s);
      eval(dir.at(s_done, dp::c4 * h), comb(x, hs, {{dp::a41, k1}, {dp::a42, k2}, {dp::a43, k3}}), k4,
           nullptr, s);
      eval(dir.at(s_done, dp::c5 * h),
           comb(x, hs, {{dp::a51, k1}, {dp::a52, k2}, {dp::a53, k3}, {dp::a54, k4}}), k5, nullptr, s);
      eval(dir.at(s_done, h),
           comb(x, hs, {{dp::a61, k1}, {dp::a62, k2}, {dp::a63, k3}, {dp::a64, k4}, {dp::a65, k5}}), k6,
           nullptr, s);
      const StageCombination y_comb =
          comb(x, hs, {{dp::b1, k1}, {dp::b3, k3}, {dp::b4, k4}, {dp::b5, k5}, {dp::b6, k6}});
      eval(dir.at(s_done, h), y_comb, k7, y, s);
      const StageCombination e_comb = comb(
          nullptr, hs, {{dp::e1, k1}, {dp::e3, k3}, {dp::e4, k4}, {dp::e5, k5}, {dp::e6, k6}, {dp::e7, k7}});
      // Rewrites y with the same bits and reduces the scaled error against (x, y).
      cuda::solver_update(y_comb, elems_, y, &e_comb, atol, rtol, err_sum_.as<double>(), workspace_.get(), s);
      const double e = read_rms();
      if (e <= 1.0) {
        s_done = (s_done + h >= length) ? length : s_done + h;
        std::swap(x, y);
        std::swap(k1, k7);  // first same as last
        ++res.accepted_steps;
        record(res, dir.time(s_done), x);
      } else {
        ++res.rejected_steps;
      }
      h *= dp::step_factor(e);
      dp::check_step(h, dir.time(s_done), length);
    }
    final_x_ = x;
  }

  const int64_t max_chunk_;
  const SampleConfig* cfg_ = nullptr;  // the call in progress
  const float* x0_ = nullptr;          // its HOST initial points, or nullptr: the seed's noise
  std::optional<ShapeKey> shape_;      // what mlp_ and the buffers were built for
  GraphKey graph_key_;                 // what graphs_ were captured for
  int64_t n_ = 0, elems_ = 0, chunk_ = 0;
  int dim_ = 0, copies_ = 1;
  int device_ = cuda::current_device();  // the GPU current at construction: every call runs there
  cuda::Stream stream_;
  std::unique_ptr<cuda::PaddedLayout> layout_;
  std::vector<float> padded_;  // the weights in the device's layout, the upload's source
  DeviceBuffer params_, params_bf16_, labels_, workspace_, err_sum_, x_, y_;
  DeviceBuffer k_[cuda::kMaxStages];
  std::unique_ptr<cuda::LtMlp> mlp_;
  std::vector<cuda::CudaGraph> graphs_;  // declared after the buffers their kernels use: destroyed first
  cuda::ModelInput input_;
  const float* final_x_ = nullptr;
  int64_t evaluations_ = 0;
};

void CudaSamplerDeleter::operator()(CudaSampler* s) const {
  delete s;
}

CudaSamplerPtr make_cuda_sampler(int64_t max_chunk_rows) {
  CUFM_REQUIRE(max_chunk_rows >= 0, "make_cuda_sampler: max_chunk_rows must be >= 0, got " << max_chunk_rows);
  return CudaSamplerPtr(new CudaSampler(max_chunk_rows));
}

SampleResult cuda_sample(CudaSampler& sampler, const Model& model, const SampleConfig& config,
                         const float* x0) {
  return sampler.sample(model, config, x0);
}

SampleResult cuda_sample(const Model& model, const SampleConfig& config, const float* x0) {
  return make_cuda_sampler(0)->sample(model, config, x0);
}

}  // namespace cufm::detail
