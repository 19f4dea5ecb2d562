// The seam between the front end (the public API: host/*.cpp, the CLI) and the backends (internal).
//
// A backend is one implementation of `Backend`: it makes trainers, samplers, fields and divergences,
// computes a loss and gradient on the caller's batch, couples host rows, and says what it can run
// and how much host memory it holds. The CPU backend (host/cpu/cpu_backend.cpp) and the CUDA backend
// (host/cuda/cuda_backend.cpp; host/cuda_absent.cpp in a build without CUDA, whose every factory
// says so) are peers behind it. `backend(device)` finds one in the registry (host/backends.cpp).
// Front-end files include this header and never one from host/cpu/ or host/cuda/ (a ctest,
// frontend_include_no_backend, checks it). A new backend is one folder implementing Backend and
// one line in the registry.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cufm/coupling.hpp"
#include "cufm/dataset.hpp"
#include "cufm/device.hpp"
#include "cufm/loss.hpp"
#include "cufm/model.hpp"
#include "cufm/sampler.hpp"
#include "cufm/trainer.hpp"
#include "cufm/velocity.hpp"
#include "host/divergence_flow.hpp"

namespace cufm::detail {

// A training run's state on one backend.
class TrainBackend {
 public:
  virtual ~TrainBackend() = default;
  // n training steps on the backend's copy of the dataset. The CUDA backend enqueues them without
  // synchronising with the host.
  virtual void run(uint64_t n) = 0;
  // The loss of the latest step (waits for it).
  virtual float loss() = 0;
  virtual uint64_t step_count() const = 0;
  // Copies parameters, moments and EMA to the host.
  virtual TrainState state() const = 0;
  // One step on a batch with its draws (host arrays of batch_size rows): the loss and gradient of
  // cufm::loss_and_grad, then the optimiser's update. Returns the loss (waits for it).
  virtual float step_given(const FlowBatch& batch) = 0;
  // One step on the caller's rows (Trainer::step(batch), checked by the caller: batch_size rows,
  // finite, labels in range): the step's Philox draws for row i taken as fm_prepare's
  // rows_in_order takes them, the coupling's pairs when the recipe has one, then the update. Returns
  // the loss (waits for it).
  virtual float step_batch(const DataBatch& batch) = 0;
  // How the step runs, for describe(): "" where there is nothing to say.
  virtual std::string describe() const { return {}; }
  // Which path runs the model: "cpu", "cpu fused", "cuda fused" or "cuda layered" (Trainer::mlp).
  virtual std::string mlp() const = 0;
};

// The sampler behind cufm::Sampler: keeps what it can reuse between calls of the same shape.
class SampleBackend {
 public:
  virtual ~SampleBackend() = default;
  // x0: the caller's HOST points [count, dim] to integrate from, or nullptr for the seed's noise
  // (cufm::sampler_noise). Validates the config.
  virtual SampleResult sample(const Model& model, const SampleConfig& config, const float* x0) = 0;
};

// The field behind cufm::VelocityField. Labels and contexts come checked (check_field_labels,
// check_field_context).
class FieldBackend {
 public:
  virtual ~FieldBackend() = default;
  // HOST arrays; the call waits.
  virtual void evaluate(float t, const float* x, const int32_t* labels, const float* context, int64_t n,
                        float* v) = 0;
  // DEVICE arrays, enqueued on stream (a cudaStream_t) without waiting; a backend without device
  // memory throws.
  virtual void evaluate_device(float t, const float* x, const int32_t* labels, const float* context,
                               int64_t n, float* v, void* stream) = 0;
  virtual void set_weights(const Model& model) = 0;
};

// The velocity and its divergence, for log-likelihoods: v [n, D] and div [n] = (1/P) sum_p
// e_p . J e_p (probes [n, P, D]; nullptr: exact, P = D, the trace), guided where guidance is set.
// Labels and contexts come checked.
class DivergenceBackend {
 public:
  virtual ~DivergenceBackend() = default;
  // On HOST arrays; the call waits.
  virtual void evaluate(float t, const float* x, const int32_t* labels, const float* context, int64_t n,
                        const float* guidance, const float* probes, int P, float* v, float* div) = 0;
  // The flow with its divergence (host/divergence_flow.hpp) from the HOST points x0 [n, D], with
  // flow's per-point labels and contexts and the HOST probes [n, P, D] (nullptr: exact). The
  // default runs the host solver (host/host_solver.cpp) over evaluate(); the CUDA backend keeps the
  // state, the solver's stages and the divergence on the device for the whole integration.
  virtual DivergenceFlowResult integrate(const float* x0, int64_t n, const DivergenceFlow& flow,
                                         const float* probes, bool keep_trajectory);
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  // Empty when this backend runs precision p in this build on this machine, else why not.
  virtual std::string unavailable_reason(Precision p) const = 0;
  // Throws cufm::Error naming why `who` cannot run at precision p here (and what to use instead).
  virtual void check_precision(Precision p, const char* who) const = 0;
  // The most threads RunOptions::threads takes (more are capped to it).
  virtual int max_threads() const = 0;
  // Host floats a training step or a loss_and_grad over `batch` rows works in, beyond the batch's
  // own arrays (the memory checks' estimate; 0 where the work is in device memory).
  virtual uint64_t host_step_floats(const MlpConfig& model, int64_t batch, Precision precision) const = 0;
  // Host floats a sampling call works in, beyond its result and trajectory.
  virtual uint64_t host_sampling_floats(const MlpConfig& model, const SampleConfig& config) const = 0;
  // Host floats a divergence evaluation works in (one chunk's tangents and workspace), beyond the
  // flow's state.
  virtual uint64_t host_divergence_floats(const MlpConfig& model) const = 0;
  // Whether a training run keeps its own copy of the dataset in host memory.
  virtual bool copies_dataset_to_host() const = 0;

  // `state` holds params (and moments/EMA, or empty moments to start them at zero).
  virtual std::unique_ptr<TrainBackend> make_trainer(const MlpConfig& model, const TrainConfig& config,
                                                     const Dataset& data, TrainState state,
                                                     const RunOptions& run) const = 0;
  virtual std::unique_ptr<SampleBackend> make_sampler() const = 0;
  virtual std::unique_ptr<FieldBackend> make_field(const Model& model, const FieldOptions& options) const = 0;
  virtual std::unique_ptr<DivergenceBackend> make_divergence(const Model& model, int threads) const = 0;
  // Model::forward: v [n, D] at x [n, D] with per-row times t [n] (HOST arrays, checked by the
  // caller), in float32.
  virtual void forward(const Model& model, const float* x, const float* t, const int32_t* labels,
                       const float* context, int64_t n, float* v) const = 0;
  // cufm::loss_and_grad: the batch is checked by the caller.
  virtual LossGrad loss_and_grad(const Model& model, const FlowBatch& batch, float sigma_min,
                                 const RunOptions& run) const = 0;
  // cufm::couple on HOST arrays (checked by the caller): noise_row [B].
  virtual void couple(const CouplingConfig& config, int64_t B, int D, const float* x1, const float* eps,
                      const int32_t* groups, int threads, uint32_t* noise_row) const = 0;
  // Lines for build_summary() and `cufm info`: what this backend runs with, one per line, no final
  // newline.
  virtual std::string describe() const = 0;
};

// The registry (host/backends.cpp): the backend for a resolved device (CPU or CUDA).
const Backend& backend(Device device);
// Each backend's instance (host/cpu/cpu_backend.cpp, host/cuda/cuda_backend.cpp or
// host/cuda_absent.cpp), for the registry.
const Backend& cpu_backend();
const Backend& cuda_backend();

// Checks a starting state's sizes against the model and completes it: empty Adam moments start at
// zero, and the EMA at the weights when the config keeps one (cleared when it does not). Every
// backend's trainer starts from it.
void complete_state(const MlpConfig& model, const TrainConfig& config, TrainState& state);

// The lowest compute capability (x10) in a CMAKE_CUDA_ARCHITECTURES list ("80;90", "90-real"); 0
// when the list names none ("native", "all"). A GPU at or above it runs this build's code.
int lowest_built_architecture(const std::string& archs);
// The GPUs the CUDA runtime lists (empty in a build without CUDA) and the one it would use now.
std::vector<DeviceInfo> cuda_device_list();
int cuda_current_device();

}  // namespace cufm::detail
