// The CUDA backend behind the seam (host/backend.hpp): the trainer (cuda_trainer.cpp), the sampler
// (cuda_sampler.cpp), the field (cuda_field.cpp), the divergence (cuda_divergence.cpp) and
// loss_and_grad (cuda_loss.cpp), each keeping its device state between calls.
#include <sstream>

#include "cufm/error.hpp"
#include "cufm_build_info.hpp"
#include "host/cuda/cuda_backend.hpp"
#include "kernels/fused_sampler.hpp"

namespace cufm::detail {
namespace {

class GpuSampler final : public SampleBackend {
 public:
  SampleResult sample(const Model& model, const SampleConfig& config, const float* x0) override {
    if (!sampler_) sampler_ = make_cuda_sampler();
    return cuda_sample(*sampler_, model, config, x0);
  }

 private:
  CudaSamplerPtr sampler_;  // created by the first call
};

class GpuField final : public FieldBackend {
 public:
  GpuField(const Model& model, const FieldOptions& options) : field_(make_cuda_field(model, options)) {}

  void evaluate(float t, const float* x, const int32_t* labels, const float* context, int64_t n,
                float* v) override {
    cuda_field_evaluate(*field_, t, x, labels, context, n, v, nullptr, /*host_pointers=*/true);
  }

  void evaluate_device(float t, const float* x, const int32_t* labels, const float* context, int64_t n,
                       float* v, void* stream) override {
    if (n == 0) return;
    cuda_field_evaluate(*field_, t, x, labels, context, n, v, stream, /*host_pointers=*/false);
  }

  void set_weights(const Model& model) override { cuda_field_set_weights(*field_, model); }

 private:
  CudaFieldPtr field_;
};

class GpuDivergence final : public DivergenceBackend {
 public:
  explicit GpuDivergence(const Model& model) : divergence_(make_cuda_divergence(model)) {}

  void evaluate(float t, const float* x, const int32_t* labels, const float* context, int64_t n,
                const float* guidance, const float* probes, int P, float* v, float* div) override {
    cuda_divergence_evaluate(*divergence_, t, x, labels, context, n, guidance, probes, P, v, div);
  }

  DivergenceFlowResult integrate(const float* x0, int64_t n, const DivergenceFlow& flow, const float* probes,
                                 bool keep_trajectory) override {
    return cuda_integrate_with_divergence(*divergence_, x0, n, flow, probes, keep_trajectory);
  }

 private:
  CudaDivergencePtr divergence_;
};

class CudaBackend final : public Backend {
 public:
  Device device() const override { return Device::CUDA; }

  // The GPU runs every precision: fp32 on the CUDA cores, tf32 and bf16 on the tensor cores.
  std::string unavailable_reason(Precision) const override { return {}; }
  void check_precision(Precision, const char*) const override {}

  // The host threads of the CPU work a GPU call still does (the host solver's loops).
  int max_threads() const override { return max_host_threads_(); }

  // The activations, the optimiser and the dataset live in device memory: the trainer's own memory
  // check weighs them against the GPU's free memory.
  uint64_t host_step_floats(const MlpConfig&, int64_t, Precision) const override { return 0; }
  uint64_t host_sampling_floats(const MlpConfig&, const SampleConfig&) const override { return 0; }
  uint64_t host_divergence_floats(const MlpConfig&) const override { return 0; }
  bool copies_dataset_to_host() const override { return false; }

  std::unique_ptr<TrainBackend> make_trainer(const MlpConfig& model, const TrainConfig& config,
                                             const Dataset& data, TrainState state,
                                             const RunOptions& run) const override {
    return make_cuda_trainer(model, config, data, std::move(state), run.precision);
  }

  std::unique_ptr<SampleBackend> make_sampler() const override { return std::make_unique<GpuSampler>(); }

  std::unique_ptr<FieldBackend> make_field(const Model& model, const FieldOptions& options) const override {
    return std::make_unique<GpuField>(model, options);
  }

  std::unique_ptr<DivergenceBackend> make_divergence(const Model& model, int) const override {
    return std::make_unique<GpuDivergence>(model);
  }

  // Per-row times (the time features differ from row to row) through the field would need a
  // per-row-time input kernel that nothing else wants; Model::forward is the CPU's by contract.
  void forward(const Model&, const float*, const float*, const int32_t*, const float*, int64_t,
               float*) const override {
    CUFM_FAIL("Model::forward runs on the CPU backend; a VelocityField evaluates the model on the GPU");
  }

  LossGrad loss_and_grad(const Model& model, const FlowBatch& batch, float sigma_min,
                         const RunOptions& run) const override {
    return cuda_loss_and_grad(model, batch, sigma_min, run.precision);
  }

  // The GPU couples inside its training step (kernels::fm_couple, from Philox's draws); the caller's
  // host arrays are the CPU's to couple.
  void couple(const CouplingConfig&, int64_t, int, const float*, const float*, const int32_t*, int,
              uint32_t*) const override {
    CUFM_FAIL("cufm::couple pairs host arrays on the CPU backend; on the GPU, coupling runs inside the "
              "training step (kernels::fm_couple)");
  }

  std::string describe() const override {
    std::ostringstream os;
    os << "CUDA backend: built (nvcc " << CUFM_CUDA_COMPILER << ", architectures " << CUFM_CUDA_ARCHITECTURES
       << "); training: the fused step (one kernel for the forward, the loss and the backward; fp32 on the "
          "CUDA cores, tf32 and bf16 on the tensor cores, widths "
          "up to "
       << cuda::kFusedMaxWidth << ", D up to " << cuda::kFusedMaxDim
       << ") where it applies, else cuBLASLt layer by layer; "
          "sampling: the fused sampler (one kernel; fp32 on the CUDA cores, tf32 and bf16 on the "
          "tensor cores, fixed steps, widths up to "
       << cuda::kFusedMaxWidth << ", D up to " << cuda::kFusedMaxDim
       << ") where it applies, else cuBLASLt layer by layer (CUFM_GPU_MLP=fused|layered overrides); "
          "log-likelihoods: on the device from the first step to the last, the fused kernel with the "
          "divergence's tangents where it applies, else a device-resident solver over cuBLAS (fp32)";
    return os.str();
  }

 private:
  static int max_host_threads_() { return cpu_backend().max_threads(); }
};

}  // namespace

const Backend& cuda_backend() {
  static const CudaBackend instance;
  return instance;
}

}  // namespace cufm::detail
