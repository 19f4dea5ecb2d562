// The CUDA backend's parts (internal): what host/cuda/cuda_backend.cpp puts behind the seam
// (host/backend.hpp), and what the gpu tests call directly.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "host/backend.hpp"

namespace cufm::detail {

// The CUDA trainer (host/cuda/cuda_trainer.cpp; its knobs for the tests: host/cuda/cuda_trainer.hpp).
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
// The velocity and its divergence on the GPU (host/cuda/cuda_divergence.cpp), for log-likelihoods,
// computed on the device in fp32 with cuBLAS: one GEMM per layer over the P tangents of all points.
// max_chunk_rows: at most this many points at a time (0: tangent buffers of about 2^25 floats; the
// tests use small values to run several chunks on small counts).
class CudaDivergence;
struct CudaDivergenceDeleter {
  void operator()(CudaDivergence* d) const;
};
using CudaDivergencePtr = std::unique_ptr<CudaDivergence, CudaDivergenceDeleter>;
CudaDivergencePtr make_cuda_divergence(const Model& model, int64_t max_chunk_rows = 0);
// cpu::evaluate_divergence's contract on HOST arrays: the call uploads x, waits and downloads v and
// div.
void cuda_divergence_evaluate(CudaDivergence& d, float t, const float* x, const int32_t* labels,
                              const float* context, int64_t n, const float* guidance, const float* probes,
                              int P, float* v, float* div);
// DivergenceBackend::integrate on the device: the state [x | a], the solver's stages and the
// divergence stay in device memory from t0 to t1 (flow.dim set; probes: HOST [n, P, D] or nullptr).
DivergenceFlowResult cuda_integrate_with_divergence(CudaDivergence& d, const float* x0, int64_t n,
                                                    const DivergenceFlow& flow, const float* probes,
                                                    bool keep_trajectory);
// cufm::loss_and_grad on the GPU (host/cuda/cuda_loss.cpp): the batch is checked by the caller.
LossGrad cuda_loss_and_grad(const Model& model, const FlowBatch& batch, float sigma_min, Precision precision);

}  // namespace cufm::detail
