// Training: draws (t, eps, x1) for a batch, regresses the model onto the path's target with the
// MSE loss, and updates the weights with Adam or AdamW, on the CPU or the GPU.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cufm/coupling.hpp"
#include "cufm/dataset.hpp"
#include "cufm/device.hpp"
#include "cufm/math.hpp"  // Activation, LrSchedule
#include "cufm/model.hpp"
#include "cufm/path.hpp"

namespace cufm {

enum class Optimizer : int { Adam = 0, AdamW = 1 };
// "adam", "adamw" (the names' table: cufm/names.hpp).
const char* to_string(Optimizer o);
Optimizer parse_optimizer(const std::string& s);

struct OptimConfig {
  Optimizer kind = Optimizer::Adam;
  float lr = 1e-3f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weight_decay = 0.0f;
  float grad_clip = 0.0f;  // > 0: clip the global gradient norm to this value
  float ema_decay = 0.0f;  // > 0: keep an exponential moving average of the weights
  // The learning rate's schedule: linear warm-up over warmup_steps, then
  // constant, or a cosine or linear decay from lr to min_lr over decay_steps (>= 1 for those).
  LrSchedule lr_schedule = LrSchedule::Constant;
  uint64_t warmup_steps = 0;
  uint64_t decay_steps = 0;
  float min_lr = 0.0f;
};

// "constant", "cosine", "linear".
const char* to_string(LrSchedule s);
LrSchedule parse_lr_schedule(const std::string& s);

// The training recipe: what a checkpoint records and a resume continues. Where it runs (device,
// precision, threads) is the RunOptions given to the Trainer, and may differ from run to run.
struct TrainConfig {
  int batch_size = 4096;
  uint64_t seed = 0;
  PathConfig path;
  OptimConfig optim;
  float label_dropout = 0.1f;    // per-sample probability of the null class (conditional models)
  float context_dropout = 0.0f;  // per-sample probability of the null context (models with a
                                 // context), drawn independently of the label's: > 0 trains the
                                 // unconditional field that guidance on a context needs
  // Which noise each data row of a batch is paired with (cufm/coupling.hpp): independent, or
  // minibatch optimal transport, exact or Sinkhorn (with ot_reg), within each class (the null class
  // its own). Not for models with a context. A coupled group holds at most kMaxCouplingGroup rows.
  Coupling coupling = Coupling::Independent;
  float ot_reg = 0.05f;  // Sinkhorn's regularisation, relative to the batch's mean pair cost

  void validate() const;
};

// Everything that changes during training. A run resumed from a TrainState continues exactly as
// the uninterrupted run would have: the random streams depend on (seed, step) alone.
struct TrainState {
  uint64_t step = 0;
  std::vector<float> params;
  std::vector<float> adam_m, adam_v;
  std::vector<float> ema;  // empty when EMA is off
};

// A batch of the caller's data for Trainer::step(batch): HOST arrays, row-major.
struct DataBatch {
  int64_t size = 0;                 // rows: the config's batch_size
  const float* x1 = nullptr;        // [size, D] the data points (finite)
  const int32_t* labels = nullptr;  // [size] classes in [0, num_classes): required by a conditional
                                    // model, nullptr for an unconditional one
  const float* context = nullptr;   // [size, context_dim] the points' contexts (finite): required by
                                    // a model with a context, nullptr for one without
};

struct FitProgress {
  uint64_t step;   // steps done so far
  uint64_t total;  // steps this fit() will have done when it returns
  float loss;      // loss of the latest step
  double seconds;  // wall time since fit() began
};

namespace detail {
class TrainBackend;
}

// On the GPU a Trainer holds the dataset, the model, the optimiser and the step's CUDA graph on the
// device that was current (cudaSetDevice, CUDA_VISIBLE_DEVICES) when it was constructed, and
// every call runs there whatever device is current at the time. Not thread-safe.
class Trainer {
 public:
  // The data must satisfy the model: dim == data_dim; labels present when num_classes > 0; a
  // context of context_dim floats per point exactly when the model has one. run:
  // the device (Auto: the GPU when there is a usable one), the layers' precision and the CPU
  // backend's threads.
  Trainer(const Model& model, const Dataset& data, const TrainConfig& config, const RunOptions& run = {});
  // Resumes from a saved state (a checkpoint's).
  Trainer(const MlpConfig& model_config, const TrainState& state, const Dataset& data,
          const TrainConfig& config, const RunOptions& run = {});
  // A trainer without a dataset: every step takes the caller's batch (step(batch)); step(), run()
  // and fit() refuse. Resumable from a state as above.
  Trainer(const Model& model, const TrainConfig& config, const RunOptions& run = {});
  Trainer(const MlpConfig& model_config, const TrainState& state, const TrainConfig& config,
          const RunOptions& run = {});
  ~Trainer();
  Trainer(Trainer&&) noexcept;
  Trainer& operator=(Trainer&&) noexcept;

  // One step; returns its loss (on the GPU this waits for the step to finish).
  float step();
  // One step on the caller's batch: the step's draws (t, eps, label dropout) come from (seed, step)
  // as for cuFM's own batches, row i drawing as if it had drawn data point i; then the same loss,
  // gradient and optimiser update. Returns the loss (waits on the GPU). Mixes freely with step().
  float step(const DataBatch& batch);
  // n steps with no read-back in between; loss() then gives the last step's loss.
  void run(uint64_t n);
  float loss();

  // Runs `steps` more steps, calling `callback` every `every` steps and after the last.
  void fit(uint64_t steps, const std::function<void(const FitProgress&)>& callback = {},
           uint64_t every = 100);
  // The same, each step on source.next_batch(step, batch_size) through step(batch); works with or
  // without a dataset of the trainer's own.
  void fit(DataSource& source, uint64_t steps, const std::function<void(const FitProgress&)>& callback = {},
           uint64_t every = 100);

  uint64_t step_count() const;
  Device device() const { return device_; }
  // How the step runs the model: "cpu" (layer by layer), "cpu fused" (the narrow models' fused step
  // on CPUs with AVX-512), "cuda fused" (one kernel runs the forward, the loss and the backward of a
  // tile of rows: models up to 128 wide, at any precision) or "cuda layered" (cuBLASLt, a GEMM per layer and
  // direction). CUFM_GPU_MLP=fused|layered overrides the GPU's choice.
  std::string mlp() const;
  const TrainConfig& config() const { return config_; }
  const RunOptions& run_options() const { return run_; }
  const MlpConfig& model_config() const { return model_config_; }
  TrainState state() const;  // copies the state to the host
  Model model() const;       // the current weights
  Model ema_model() const;   // the EMA weights (throws if EMA is off)

 private:
  MlpConfig model_config_;
  TrainConfig config_;
  RunOptions run_;
  Device device_ = Device::CPU;
  bool has_data_ = true;
  std::unique_ptr<detail::TrainBackend> backend_;
  void require_data(const char* what) const;
};

}  // namespace cufm
