// The CPU backend behind the seam (host/backend.hpp): the reference every GPU result is tested
// against. Its trainer is host/cpu/cpu_trainer.cpp; its sampler, field and divergence below run the
// shared solver loop (cpu::integrate) over cpu::evaluate_model and cpu::evaluate_divergence.
#include <algorithm>
#include <sstream>

#include "cufm/error.hpp"
#include "host/backend.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "host/divergence_flow.hpp"
#include "host/memory.hpp"

namespace cufm::detail {
namespace {

class CpuSampler final : public SampleBackend {
 public:
  SampleResult sample(const Model& model, const SampleConfig& config, const float* x0_in) override {
    config.validate(model.config());
    cpu::check_cpu_precision(config.precision, "sampling");
    cpu::set_threads(config.threads);
    const int D = model.config().data_dim;
    SampleResult res;
    res.count = config.count;
    res.dim = D;
    res.device = Device::CPU;
    res.mlp = "cpu";
    std::vector<float> x0;
    if (x0_in) {
      x0.assign(x0_in, x0_in + static_cast<size_t>(config.count) * D);
    } else {
      x0.resize(static_cast<size_t>(config.count) * D);
      sampler_noise(config.seed, 0, config.count, D, x0.data());
    }
    // The field: the model over all points, with one label for all or per sample (else the null class).
    const std::vector<int32_t> labels = labels_per_point(config.labels, config.count);
    const std::vector<float> context = context_per_point(config.context, model.config().context_dim, config.count);
    const float* guidance = config.guidance ? &*config.guidance : nullptr;
    scratch_.ws.precision = config.precision;
    auto field = [&](float t, const float* x, float* v) {
      cpu::evaluate_model(model.config(), model.params().data(), x, nullptr, t,
                          labels.empty() ? nullptr : labels.data(), context.empty() ? nullptr : context.data(),
                          config.count, guidance, v, scratch_);
    };
    const bool keep = config.keep_trajectory;
    OdeResult r = cpu::integrate(field, std::move(x0), config.solver, config.steps, config.atol, config.rtol,
                                 config.max_steps, config.t0, config.t1, keep ? &res.times : nullptr,
                                 keep ? &res.trajectory : nullptr);
    res.x = std::move(r.x);
    res.evaluations = r.evaluations;
    res.accepted_steps = r.accepted_steps;
    res.rejected_steps = r.rejected_steps;
    return res;
  }

 private:
  cpu::FieldScratch scratch_;
};

class CpuField final : public FieldBackend {
 public:
  CpuField(const Model& model, const FieldOptions& options)
      : config_(model.config()), options_(options), params_(model.params()) {
    scratch_.ws.precision = options.precision;
  }

  void evaluate(float t, const float* x, const int32_t* labels, const float* context, int64_t n,
                float* v) override {
    cpu::set_threads(options_.threads);
    const float* w = options_.guidance ? &*options_.guidance : nullptr;
    cpu::evaluate_model(config_, params_.data(), x, nullptr, t, labels, context, n, w, v, scratch_);
  }

  void evaluate_device(float, const float*, const int32_t*, const float*, int64_t, float*, void*) override {
    CUFM_FAIL("VelocityField::evaluate_device: this field runs on the CPU; use evaluate()");
  }

  void set_weights(const Model& model) override { params_ = model.params(); }

 private:
  MlpConfig config_;
  FieldOptions options_;
  std::vector<float> params_;
  cpu::FieldScratch scratch_;
};

class CpuDivergence final : public DivergenceBackend {
 public:
  CpuDivergence(const Model& model, int threads) : config_(model.config()), params_(model.params()) {
    cpu::set_threads(threads);
  }

  void evaluate(float t, const float* x, const int32_t* labels, const float* context, int64_t n,
                const float* guidance, const float* probes, int P, float* v, float* div) override {
    cpu::evaluate_divergence(config_, params_.data(), x, t, labels, context, n, guidance, probes, P, v, div,
                             scratch_);
  }

 private:
  MlpConfig config_;
  std::vector<float> params_;
  cpu::DivergenceScratch scratch_;
};

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::CPU; }

  std::string unavailable_reason(Precision p) const override {
    if (p == Precision::TF32) return "TF32 is a tensor-core format: it needs the CUDA backend";
    return p == Precision::BF16 ? cpu::bf16_unavailable_reason() : std::string();
  }

  void check_precision(Precision p, const char* who) const override { cpu::check_cpu_precision(p, who); }

  int max_threads() const override { return cpu::max_threads(); }

  uint64_t host_step_floats(const MlpConfig& model, int64_t batch, Precision precision) const override {
    return cpu::fused_step_applies(model, precision) ? cpu::fused_step_floats(model, batch)
                                                     : cpu::MlpWorkspace::floats_for(model, batch, precision);
  }

  // The solver's buffers beside the result (x0, x, the stage point, k1..k7, the error and its zero
  // reference: 11 more of count x dim), the per-point contexts, and one chunk's model inputs (both
  // passes with guidance) with the MLP's workspace for it.
  uint64_t host_sampling_floats(const MlpConfig& m, const SampleConfig& c) const override {
    const uint64_t count = static_cast<uint64_t>(std::max<int64_t>(c.count, 0));
    const int64_t rows = std::min<int64_t>(c.count, 8192) * (c.guidance ? 2 : 1);
    uint64_t floats = mul_sat(mul_sat(count, static_cast<uint64_t>(m.data_dim)), 11);
    floats = add_sat(floats, mul_sat(count, static_cast<uint64_t>(m.context_dim)));
    floats = add_sat(floats, mul_sat(static_cast<uint64_t>(rows), static_cast<uint64_t>(m.input_dim())));
    return add_sat(floats, cpu::MlpWorkspace::floats_for(m, rows, c.precision));
  }

  // One chunk's tangents (two buffers of at most 2^22 floats) and forward workspace.
  uint64_t host_divergence_floats(const MlpConfig& m) const override {
    return add_sat(uint64_t{1} << 23, cpu::MlpWorkspace::floats_for(m, 8192 * 2));
  }

  bool copies_dataset_to_host() const override { return true; }

  std::unique_ptr<TrainBackend> make_trainer(const MlpConfig& model, const TrainConfig& config,
                                             const Dataset& data, TrainState state,
                                             const RunOptions& run) const override {
    cpu::check_cpu_precision(run.precision, "training");
    return cpu::make_trainer(model, config, data, std::move(state), run.threads, run.precision);
  }

  std::unique_ptr<SampleBackend> make_sampler() const override { return std::make_unique<CpuSampler>(); }

  std::unique_ptr<FieldBackend> make_field(const Model& model, const FieldOptions& options) const override {
    cpu::check_cpu_precision(options.precision, "VelocityField");
    return std::make_unique<CpuField>(model, options);
  }

  std::unique_ptr<DivergenceBackend> make_divergence(const Model& model, int threads) const override {
    return std::make_unique<CpuDivergence>(model, threads);
  }

  void forward(const Model& model, const float* x, const float* t, const int32_t* labels, const float* context,
               int64_t n, float* v) const override {
    cpu::FieldScratch scratch;
    cpu::evaluate_model(model.config(), model.params().data(), x, t, 0.0f, labels, context, n, nullptr, v,
                        scratch);
  }

  LossGrad loss_and_grad(const Model& model, const FlowBatch& batch, float sigma_min,
                         const RunOptions& run) const override {
    cpu::check_cpu_precision(run.precision, "loss_and_grad");
    cpu::set_threads(run.threads);
    LossGrad r;
    r.grad.resize(model.num_params());
    cpu::GivenScratch scratch;
    scratch.ws.precision = run.precision;
    r.loss = cpu::loss_grad_given(model.config(), model.params().data(), batch, sigma_min, scratch,
                                  r.grad.data());
    return r;
  }

  void couple(const CouplingConfig& config, int64_t B, int D, const float* x1, const float* eps,
              const int32_t* groups, int threads, uint32_t* noise_row) const override {
    cpu::set_threads(threads);
    cpu::CouplingScratch scratch;
    cpu::couple(config, B, D, x1, eps, groups, noise_row, scratch);
  }

  std::string describe() const override {
    const std::string no_bf16 = cpu::bf16_unavailable_reason();
    std::ostringstream os;
    os << "CPU: " << cpu::cpu_isa() << "\n";
    os << "CPU backend: float32, " << cpu::gemm_providers() << "; OpenBLAS kernels: " << cpu::blas_kernels()
       << "; bf16: "
       << (no_bf16.empty() ? "oneDNN matmul (AVX512_BF16, or AMX where present)" : "no (" + no_bf16 + ")")
       << "; OpenMP";
    return os.str();
  }
};

}  // namespace

const Backend& cpu_backend() {
  static const CpuBackend instance;
  return instance;
}

}  // namespace cufm::detail
