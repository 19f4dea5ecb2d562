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
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "cufm/detail/math.hpp"
#include "cufm/error.hpp"
#include "cufm/sampler.hpp"
#include "host/cuda/cuda_backend.hpp"
#include "host/cuda/cuda_graph.hpp"
#include "host/cuda/device_buffer.hpp"
#include "host/cuda/gpu_mlp.hpp"
#include "host/cuda/lt_mlp.hpp"
#include "host/divergence_flow.hpp"
#include "host/solver_driver.hpp"
#include "kernels/convert.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/fused_sampler_launch.hpp"
#include "kernels/solver.hpp"

namespace cufm::detail {

namespace {

using cuda::DeviceBuffer;
using cuda::StageCombination;

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
  const float* context = nullptr;   // the per-sample contexts' buffer (its contents are rewritten)
  float t0 = 0.0f, t1 = 1.0f;       // the span: every stage's time is baked in
  bool operator==(const GraphKey& o) const {
    return solver == o.solver && steps == o.steps && keep_trajectory == o.keep_trajectory &&
           std::memcmp(&guidance, &o.guidance, sizeof(float)) == 0 && label_all == o.label_all &&
           labels == o.labels && context == o.context && std::memcmp(&t0, &o.t0, sizeof(float)) == 0 &&
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
      const bool fused = choose_fused(model, cfg);
      SampleResult res;
      if (fused) {
        res = run_fused(model, cfg);
      } else {
        prepare(model, cfg);
        res = run();
      }
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
  // The fused sampler where it applies (kernels/fused_sampler.hpp: fp32, fixed steps, widths up to
  // 128, D up to 64, a tile that fits the device's shared memory), else the layered path;
  // CUFM_GPU_MLP=fused or layered overrides, and a forced fused path that cannot run says why.
  bool choose_fused(const Model& model, const SampleConfig& cfg) {
    const MlpConfig& m = model.config();
    const cuda::GpuMlp want = cuda::gpu_mlp_from_env();
    if (want == cuda::GpuMlp::Layered) return false;
    // The host weights stand in for the device's: only the shapes are read here.
    std::string why = cuda::fused_sampler_refusal(cuda::fused_net(m, model.params().data()), m.data_dim,
                                                  cfg.precision, cfg.solver);
    fused_tile_ = 0;
    if (why.empty()) {
      const cuda::FusedSample probe =
          cuda::fused_sample_of(m, cfg, model.params().data(), nullptr, nullptr, nullptr, nullptr);
      fused_tile_ = cuda::fused_sampler_tile(probe);
      if (fused_tile_ == 0) why = "a tile of 4 points does not fit the GPU's shared memory";
    }
    return cuda::take_fused(want, why);
  }

  // One launch integrates every point (cuda::fused_sample); the weights in ParamLayout order.
  SampleResult run_fused(const Model& model, const SampleConfig& cfg) {
    const MlpConfig& m = model.config();
    cudaStream_t s = stream_.get();
    n_ = cfg.count;
    dim_ = m.data_dim;
    elems_ = n_ * dim_;
    const bool keep = cfg.keep_trajectory;
    ensure(fused_params_, model.params().size() * sizeof(float), "the parameters");
    CUFM_CUDA_CHECK(cudaMemcpyAsync(fused_params_.get(), model.params().data(), fused_params_.bytes(),
                                    cudaMemcpyHostToDevice, s));
    ensure(x_, static_cast<size_t>(elems_) * sizeof(float), "the samples");
    if (keep) {
      ensure(y_, (static_cast<size_t>(cfg.steps) + 1) * elems_ * sizeof(float), "the trajectory");
    }
    const Conditions on = upload_conditions(m, cfg);
    start_points(x_.as<float>());
    cuda::FusedSample p = cuda::fused_sample_of(m, cfg, fused_params_.as<float>(), on.labels, on.context,
                                                x_.as<float>(), keep ? y_.as<float>() : nullptr);
    p.tile = fused_tile_;
    cuda::fused_sample(p, s);
    SampleResult res;
    res.count = n_;
    res.dim = dim_;
    res.device = Device::CUDA;
    res.mlp = "cuda fused";
    res.x.resize(static_cast<size_t>(elems_));
    CUFM_CUDA_CHECK(
        cudaMemcpyAsync(res.x.data(), x_.get(), res.x.size() * sizeof(float), cudaMemcpyDeviceToHost, s));
    if (keep) {
      for (int i = 0; i <= cfg.steps; ++i) res.times.push_back(hd::fixed_step_time(cfg.t0, cfg.t1, i, cfg.steps));
      res.trajectory.resize((static_cast<size_t>(cfg.steps) + 1) * elems_);
      CUFM_CUDA_CHECK(cudaMemcpyAsync(res.trajectory.data(), y_.get(), res.trajectory.size() * sizeof(float),
                                      cudaMemcpyDeviceToHost, s));
    }
    CUFM_CUDA_CHECK(cudaStreamSynchronize(s));  // also: the uploads' host sources may change now
    context_host_ = std::vector<float>();
    res.accepted_steps = cfg.steps;
    res.evaluations = static_cast<int64_t>(cfg.steps) * p.tableau.stages;
    return res;
  }

  void reset() {
    graphs_.clear();
    mlp_.reset();
    shape_.reset();
    for (DeviceBuffer* b :
         {&params_, &params_bf16_, &labels_, &context_, &workspace_, &err_sum_, &x_, &y_, &fused_params_}) {
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

  // The call's per-point labels and contexts, uploaded on the stream (nullptr: none per point; one
  // label for all travels in the kernels' arguments). The contexts' host copy (context_host_) must
  // outlive the upload: the caller waits before dropping it.
  struct Conditions {
    const int32_t* labels = nullptr;
    const float* context = nullptr;
  };
  Conditions upload_conditions(const MlpConfig& m, const SampleConfig& cfg) {
    cudaStream_t s = stream_.get();
    Conditions c;
    if (m.num_classes > 0 && cfg.labels.size() > 1) {
      ensure(labels_, cfg.labels.size() * sizeof(int32_t), "the labels");
      CUFM_CUDA_CHECK(
          cudaMemcpyAsync(labels_.get(), cfg.labels.data(), labels_.bytes(), cudaMemcpyHostToDevice, s));
      c.labels = labels_.as<int32_t>();
    }
    if (m.context_dim > 0 && !cfg.context.empty()) {
      context_host_ = detail::context_per_point(cfg.context, m.context_dim, n_);
      ensure(context_, context_host_.size() * sizeof(float), "the context");
      CUFM_CUDA_CHECK(
          cudaMemcpyAsync(context_.get(), context_host_.data(), context_.bytes(), cudaMemcpyHostToDevice, s));
      c.context = context_.as<float>();
    }
    return c;
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
    const Conditions on = upload_conditions(m, cfg);
    input_.labels = on.labels;
    if (m.num_classes > 0 && cfg.labels.size() == 1) input_.label_all = cfg.labels[0];
    input_.context_dim = m.context_dim;
    input_.context = on.context;
    for (int i = 0; i < solver_stages(cfg.solver); ++i)
      ensure(k_[i], elems_ * sizeof(float), "solver stages");
    // The host copies above read padded_, cfg.labels and context_host_: let them finish before any
    // can change.
    CUFM_CUDA_CHECK(cudaStreamSynchronize(s));
    context_host_ = std::vector<float>();  // uploaded: the per-sample copy is not kept
  }

  SampleResult run() {
    SampleResult res;
    res.count = n_;
    res.dim = dim_;
    res.device = Device::CUDA;
    res.mlp = "cuda layered";
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
      if (in.context) in.context += first * in.context_dim;
      cuda::stage_input(cc, t, in, y_out ? y_out + off : nullptr, s);
      mlp_->forward(s);
      cuda::collect_velocity(mlp_->output(), mlp_->output_ld(), rows, dim_, copies_,
                             cfg_->guidance.value_or(0.0f), k + off, s);
    }
    ++evaluations_;
  }
  float* k(int i) { return k_[i].as<float>(); }

  // The driver's backend (host/solver_driver.hpp) on the device: stage points fused into the model
  // input (eval), the updates and the error norm in solver_update, all on one stream; the norms
  // read back one scalar each.
  struct DeviceSteps {
    CudaSampler& sampler;
    cudaStream_t stream;
    SampleResult* res;  // nullptr: no trajectory points (the fixed steps keep theirs in slots)
    void eval(float t, const StageCombination& c, float* k, float* y_out) {
      sampler.eval(t, c, k, y_out, stream);
    }
    void update(const StageCombination& c, float* x_out) {
      cuda::solver_update(c, sampler.elems_, x_out, nullptr, 0.0f, 0.0f, nullptr, nullptr, stream);
    }
    double update_with_error(const StageCombination& y, float* y_out, const StageCombination& err) {
      cuda::solver_update(y, sampler.elems_, y_out, &err, sampler.cfg_->atol, sampler.cfg_->rtol,
                          sampler.err_sum_.as<double>(), sampler.workspace_.get(), stream);
      return sampler.read_rms();
    }
    double norm(const float* e, const float* x) { return sampler.rms(e, x, nullptr); }
    void record(float t, const float* x) {
      if (res) sampler.record(*res, t, x);
    }
  };

  // One fixed step from slot(i) to slot(i + 1), enqueued (or captured) on s.
  void enqueue_step(int i, int steps, const std::function<float*(int)>& slot, cudaStream_t s) {
    float* k_ptr[cuda::kMaxStages];
    for (int j = 0; j < cuda::kMaxStages; ++j) k_ptr[j] = k(j);
    DeviceSteps b{*this, s, nullptr};
    fixed_step(b, fixed_tableau(cfg_->solver), hd::fixed_step_time(cfg_->t0, cfg_->t1, i, steps),
               hd::fixed_step_time(cfg_->t0, cfg_->t1, i + 1, steps), slot(i), slot(i + 1), k_ptr,
               y_.as<float>());
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
    const GraphKey key{cfg_->solver,     steps,         keep,           cfg_->guidance.value_or(0.0f),
                       input_.label_all, input_.labels, input_.context, cfg_->t0,
                       cfg_->t1};
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
    evaluations_ = static_cast<int64_t>(steps) * solver_stages(cfg_->solver);
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

  // Dormand-Prince 5(4): the driver's controller, as on the CPU.
  void dopri5(SampleResult& res) {
    float* k_ptr[cuda::kMaxStages];
    for (int j = 0; j < cuda::kMaxStages; ++j) k_ptr[j] = k(j);
    DeviceSteps b{*this, stream_.get(), &res};
    StepCounts counts;
    final_x_ =
        detail::dopri5(b, cfg_->t0, cfg_->t1, cfg_->max_steps, x_.as<float>(), y_.as<float>(), k_ptr, counts);
    res.accepted_steps = counts.accepted;
    res.rejected_steps = counts.rejected;
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
  DeviceBuffer params_, params_bf16_, labels_, context_, workspace_, err_sum_, x_, y_;
  DeviceBuffer fused_params_;  // the fused path's weights, in ParamLayout order
  int fused_tile_ = 0;         // the fused path's points per block, from choose_fused
  std::vector<float> context_host_;  // the per-sample contexts being uploaded
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
