// The seam between the public API and the backends (internal).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "cufm/dataset.hpp"
#include "cufm/loss.hpp"
#include "cufm/model.hpp"
#include "cufm/sampler.hpp"
#include "cufm/trainer.hpp"
#include "cufm/velocity.hpp"

namespace cufm::detail {

class TrainBackend {
 public:
  virtual ~TrainBackend() = default;
  // n training steps. The CUDA backend enqueues them without synchronising with the host.
  virtual void run(uint64_t n) = 0;
  // The loss of the latest step (waits for it).
  virtual float loss() = 0;
  virtual uint64_t step_count() const = 0;
  // Copies parameters, moments and EMA to the host.
  virtual TrainState state() const = 0;
  // One step on a batch with its draws (host arrays of batch_size rows): the loss and gradient of
  // cufm::loss_and_grad, then the optimiser's update. Returns the loss (waits for it).
  virtual float step_given(const FlowBatch& batch) = 0;
};

// Checks a starting state's sizes against the model and completes it: empty Adam moments start at
// zero, and the EMA at the weights when the config keeps one (cleared when it does not). Both
// backends' constructors start from it.
void complete_state(const MlpConfig& model, const TrainConfig& config, TrainState& state);

// `state` holds params (and moments/EMA, or empty moments to start them at zero).
std::unique_ptr<TrainBackend> make_cpu_trainer(const MlpConfig& model, const TrainConfig& config,
                                               const Dataset& data, TrainState state, int threads,
                                               Precision precision);

// The lowest compute capability (x10) in a CMAKE_CUDA_ARCHITECTURES list ("80;90", "90-real"); 0
// when the list names none ("native", "all"). A GPU at or above it runs this build's code.
int lowest_built_architecture(const std::string& archs);

// The CUDA backend (host/cuda/; in a build without it, host/cuda_absent.cpp, whose functions say so).
std::unique_ptr<TrainBackend> make_cuda_trainer(const MlpConfig& model, const TrainConfig& config,
                                                const Dataset& data, TrainState state, Precision precision);
// The GPU sampler behind cufm::Sampler: keeps the weights' device copy, the cuBLASLt plans, the
// buffers and the fixed-step graphs between calls of the same shape. max_chunk_rows: the model
// runs over at most this many points at a time (0: sized by memory; the tests use small values
// to run several chunks on small counts).
class CudaSampler;
struct CudaSamplerDeleter {
  void operator()(CudaSampler* s) const;
};
using CudaSamplerPtr = std::unique_ptr<CudaSampler, CudaSamplerDeleter>;
CudaSamplerPtr make_cuda_sampler(int64_t max_chunk_rows = 0);
// x0: the caller's HOST points [count, dim] to integrate from, or nullptr for the seed's noise.
SampleResult cuda_sample(CudaSampler& sampler, const Model& model, const SampleConfig& config,
                         const float* x0 = nullptr);
// One call with a sampler of its own.
SampleResult cuda_sample(const Model& model, const SampleConfig& config, const float* x0 = nullptr);
// The GPU field behind cufm::VelocityField (host/cuda/cuda_field.cpp).
class CudaField;
struct CudaFieldDeleter {
  void operator()(CudaField* f) const;
};
using CudaFieldPtr = std::unique_ptr<CudaField, CudaFieldDeleter>;
CudaFieldPtr make_cuda_field(const Model& model, const FieldOptions& options);
// host_pointers: x, labels and v are host memory (the call waits); else device memory, enqueued on
// stream (a cudaStream_t) without waiting.
void cuda_field_evaluate(CudaField& field, float t, const float* x, const int32_t* labels,
                         const float* context, int64_t n, float* v, void* stream, bool host_pointers);
void cuda_field_set_weights(CudaField& field, const Model& model);
// The velocity and its divergence on the GPU (host/cuda/cuda_divergence.cpp), for log-likelihoods:
// cpu::evaluate_divergence's contract on HOST arrays (the call uploads x, waits and downloads v and
// div), computed on the device in fp32 with cuBLAS: one GEMM per layer over the P tangents of all
// points.
class CudaDivergence;
struct CudaDivergenceDeleter {
  void operator()(CudaDivergence* d) const;
};
using CudaDivergencePtr = std::unique_ptr<CudaDivergence, CudaDivergenceDeleter>;
CudaDivergencePtr make_cuda_divergence(const Model& model);
void cuda_divergence_evaluate(CudaDivergence& d, float t, const float* x, const int32_t* labels,
                              const float* context, int64_t n, const float* guidance, const float* probes,
                              int P, float* v, float* div);
// cufm::loss_and_grad on the GPU (host/cuda/cuda_loss.cpp): the batch is checked by the caller.
LossGrad cuda_loss_and_grad(const Model& model, const FlowBatch& batch, float sigma_min, Precision precision);
std::vector<DeviceInfo> cuda_device_list();
int cuda_current_device();  // the device the runtime would use now (0 unless the caller chose one)

}  // namespace cufm::detail
