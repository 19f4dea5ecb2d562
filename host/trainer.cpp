#include "cufm/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "cufm/error.hpp"
#include "host/backend.hpp"
#include "host/field_checks.hpp"
#include "host/memory.hpp"

namespace cufm {

void TrainConfig::validate() const {
  CUFM_REQUIRE(batch_size >= 1 && batch_size <= (1 << 26),
               "batch_size must be in [1, 2^26], got " << batch_size);
  CUFM_REQUIRE(std::isfinite(path.sigma_min) && path.sigma_min >= 0.0f && path.sigma_min < 1.0f,
               "sigma_min must be in [0, 1), got " << path.sigma_min);
  CUFM_REQUIRE(std::isfinite(path.logit_mean) && std::isfinite(path.logit_std) &&
                   (path.logit_std > 0.0f || path.time_sampling != TimeSampling::LogitNormal),
               "logit-normal time sampling needs a finite mean and a std > 0, got mean "
                   << path.logit_mean << " std " << path.logit_std);
  CUFM_REQUIRE(std::isfinite(optim.lr) && optim.lr > 0.0f, "learning rate must be > 0, got " << optim.lr);
  CUFM_REQUIRE(optim.beta1 >= 0.0f && optim.beta1 < 1.0f, "beta1 must be in [0, 1), got " << optim.beta1);
  CUFM_REQUIRE(optim.beta2 >= 0.0f && optim.beta2 < 1.0f, "beta2 must be in [0, 1), got " << optim.beta2);
  CUFM_REQUIRE(optim.eps > 0.0f, "Adam eps must be > 0, got " << optim.eps);
  CUFM_REQUIRE(std::isfinite(optim.weight_decay) && optim.weight_decay >= 0.0f,
               "weight_decay must be >= 0, got " << optim.weight_decay);
  CUFM_REQUIRE(std::isfinite(optim.grad_clip) && optim.grad_clip >= 0.0f,
               "grad_clip must be >= 0 (0: off), got " << optim.grad_clip);
  CUFM_REQUIRE(optim.lr_schedule == LrSchedule::Constant || optim.lr_schedule == LrSchedule::Cosine ||
                   optim.lr_schedule == LrSchedule::Linear,
               "unknown learning-rate schedule " << static_cast<int>(optim.lr_schedule));
  CUFM_REQUIRE(optim.lr_schedule == LrSchedule::Constant || optim.decay_steps >= 1,
               "a cosine or linear learning-rate decay needs decay_steps >= 1");
  CUFM_REQUIRE(std::isfinite(optim.min_lr) && optim.min_lr >= 0.0f && optim.min_lr <= optim.lr,
               "min_lr must be in [0, lr = " << optim.lr << "], got " << optim.min_lr);
  CUFM_REQUIRE(optim.ema_decay >= 0.0f && optim.ema_decay < 1.0f,
               "ema_decay must be in [0, 1) (0: off), got " << optim.ema_decay);
  CUFM_REQUIRE(label_dropout >= 0.0f && label_dropout <= 1.0f,
               "label_dropout must be in [0, 1], got " << label_dropout);
  CUFM_REQUIRE(context_dropout >= 0.0f && context_dropout <= 1.0f,
               "context_dropout must be in [0, 1], got " << context_dropout);
  CouplingConfig c;
  c.kind = coupling;
  c.reg = ot_reg;
  c.validate();
  CUFM_REQUIRE(coupling == Coupling::Independent || batch_size <= kMaxCouplingGroup,
               "coupling " << to_string(coupling) << " pairs a batch's rows by solving over the whole batch: "
                           << "batch_size must be at most " << kMaxCouplingGroup << ", got " << batch_size);
}

namespace detail {
void complete_state(const MlpConfig& model, const TrainConfig& config, TrainState& state) {
  const size_t n = ParamLayout(model).total();
  CUFM_REQUIRE(state.params.size() == n,
               "trainer: expected " << n << " parameters, got " << state.params.size());
  if (state.adam_m.empty()) state.adam_m.assign(n, 0.0f);
  if (state.adam_v.empty()) state.adam_v.assign(n, 0.0f);
  CUFM_REQUIRE(state.adam_m.size() == n && state.adam_v.size() == n,
               "trainer: Adam moments hold " << state.adam_m.size() << " and " << state.adam_v.size()
                                             << " values, expected " << n);
  const bool ema_on = config.optim.ema_decay > 0.0f;
  if (ema_on && state.ema.empty()) state.ema = state.params;
  if (!ema_on) state.ema.clear();
  CUFM_REQUIRE(state.ema.empty() || state.ema.size() == n,
               "trainer: EMA holds " << state.ema.size() << " values, expected " << n);
}
}  // namespace detail

namespace {

void check_data(const MlpConfig& model, const Dataset& data) {
  data.validate();
  CUFM_REQUIRE(data.dim == model.data_dim,
               "the data has " << data.dim << " dims but the model's data_dim is " << model.data_dim);
  CUFM_REQUIRE(data.n <= 0xFFFFFFFFll,
               "the data has " << data.n << " points; at most 2^32 - 1 are supported");
  if (model.num_classes > 0) {
    CUFM_REQUIRE(data.labelled(),
                 "the model is conditional (" << model.num_classes << " classes) but the data has no labels");
    CUFM_REQUIRE(data.num_classes <= model.num_classes,
                 "the data has " << data.num_classes << " classes but the model only " << model.num_classes);
  }
  if (model.context_dim == 0) {
    CUFM_REQUIRE(data.context_dim == 0, "the data carries a context of "
                                            << data.context_dim
                                            << " dims but the model has none (set the "
                                               "model's context_dim)");
  }
  CUFM_REQUIRE(data.context_dim == model.context_dim,
               "the model's context_dim is " << model.context_dim << " but the data's context has "
                                             << data.context_dim << " dims");
}

// Host memory a trainer holds: the parameters with their gradient, Adam moments, EMA and the copy
// state() hands out; where the backend keeps the dataset in host memory, its copy, one batch's input,
// noise and dL/dv, and the step's working memory (the MLP's activations or the fused step's buffers).
uint64_t host_training_bytes(const MlpConfig& m, const TrainConfig& c, const Dataset& data,
                             const detail::Backend& backend, Precision precision) {
  using detail::add_sat;
  using detail::mul_sat;
  const uint64_t params = ParamLayout(m).total();
  uint64_t bytes = mul_sat(params, 6 * sizeof(float));
  if (backend.copies_dataset_to_host()) {
    bytes = add_sat(bytes, mul_sat(static_cast<uint64_t>(data.n),
                                   (static_cast<uint64_t>(data.dim) + data.context_dim) * sizeof(float) +
                                       sizeof(int32_t)));
    const uint64_t io = static_cast<uint64_t>(m.input_dim()) + 2 * static_cast<uint64_t>(m.data_dim);
    const uint64_t work = backend.host_step_floats(m, c.batch_size, precision);
    bytes = add_sat(bytes,
                    mul_sat(add_sat(mul_sat(static_cast<uint64_t>(c.batch_size), io), work), sizeof(float)));
  }
  if (c.coupling != Coupling::Independent) {  // a group's costs (the CPU's solvers, and step(batch)'s)
    const uint64_t b = static_cast<uint64_t>(c.batch_size);
    bytes = add_sat(bytes, mul_sat(mul_sat(b, b), sizeof(float)));
  }
  return bytes;
}

// Coupling pairs each data row with noise from the batch's other rows: with a context, the noise a
// context's points get would depend on the other points' contexts, and its distribution given the
// context would no longer be N(0, I).
void check_coupling(const MlpConfig& model, const TrainConfig& config) {
  CUFM_REQUIRE(config.coupling == Coupling::Independent || model.context_dim == 0,
               "coupling " << to_string(config.coupling) << " is not available for a model with a context ("
                           << model.context_dim
                           << " dims): the noise paired with a point would depend on the other points' "
                              "contexts; train it with coupling independent");
}

std::unique_ptr<detail::TrainBackend> make_backend(Device device, const MlpConfig& model,
                                                   const TrainConfig& config, const RunOptions& run,
                                                   const Dataset& data, TrainState state) {
  CUFM_REQUIRE(run.threads >= 0, "threads must be >= 0 (0: all cores), got " << run.threads);
  return detail::backend(device).make_trainer(model, config, data, std::move(state), run);
}

}  // namespace

Trainer::Trainer(const Model& model, const Dataset& data, const TrainConfig& config, const RunOptions& run)
    : Trainer(model.config(), TrainState{0, model.params(), {}, {}, {}}, data, config, run) {}

Trainer::Trainer(const MlpConfig& model_config, const TrainState& state, const Dataset& data,
                 const TrainConfig& config, const RunOptions& run)
    : model_config_(model_config), config_(config), run_(run) {
  model_config_.validate();
  config_.validate();
  check_coupling(model_config_, config_);
  check_data(model_config_, data);
  for (const std::vector<float>* buf : {&state.params, &state.adam_m, &state.adam_v, &state.ema}) {
    for (size_t i = 0; i < buf->size(); ++i) {
      CUFM_REQUIRE(std::isfinite((*buf)[i]),
                   "trainer: the initial state holds a non-finite value at index " << i);
    }
  }
  device_ = resolve_device(run_.device);
  detail::require_memory(
      host_training_bytes(model_config_, config_, data, detail::backend(device_), run_.precision),
      "training (model, optimiser" +
          std::string(device_ == Device::CPU ? ", dataset copy and a batch's activations)" : ")"),
      "use a smaller batch, smaller widths or a subset of the data");
  backend_ = make_backend(device_, model_config_, config_, run_, data, state);
}

Trainer::Trainer(const Model& model, const TrainConfig& config, const RunOptions& run)
    : Trainer(model.config(), TrainState{0, model.params(), {}, {}, {}}, config, run) {}

// No dataset: the backends get an empty one (no copy, no upload) and only step(batch) runs.
Trainer::Trainer(const MlpConfig& model_config, const TrainState& state, const TrainConfig& config,
                 const RunOptions& run)
    : model_config_(model_config), config_(config), run_(run), has_data_(false) {
  model_config_.validate();
  config_.validate();
  check_coupling(model_config_, config_);
  for (const std::vector<float>* buf : {&state.params, &state.adam_m, &state.adam_v, &state.ema}) {
    for (size_t i = 0; i < buf->size(); ++i) {
      CUFM_REQUIRE(std::isfinite((*buf)[i]),
                   "trainer: the initial state holds a non-finite value at index " << i);
    }
  }
  device_ = resolve_device(run_.device);
  Dataset none;
  none.dim = model_config_.data_dim;
  none.num_classes = model_config_.num_classes;
  none.context_dim = model_config_.context_dim;
  detail::require_memory(host_training_bytes(model_config_, config_, none, detail::backend(device_), run_.precision),
                         "training (model, optimiser)", "use a smaller batch or smaller widths");
  backend_ = make_backend(device_, model_config_, config_, run_, none, state);
}

void Trainer::require_data(const char* what) const {
  CUFM_REQUIRE(has_data_,
               "trainer: " << what
                           << " draws from a dataset, and this trainer was built without one: pass "
                              "your batches to step(batch)");
}

float Trainer::step(const DataBatch& batch) {
  const MlpConfig& m = model_config_;
  const int D = m.data_dim;
  CUFM_REQUIRE(batch.size == config_.batch_size, "step(batch): the batch has "
                                                     << batch.size << " rows; the config's batch_size is "
                                                     << config_.batch_size);
  CUFM_REQUIRE(batch.x1, "step(batch): x1 must not be null");
  CUFM_REQUIRE(m.num_classes == 0 || batch.labels, "step(batch): the model is conditional ("
                                                       << m.num_classes << " classes): labels are required");
  CUFM_REQUIRE(m.num_classes > 0 || !batch.labels,
               "step(batch): labels given, but the model is unconditional");
  CUFM_REQUIRE(m.context_dim == 0 || batch.context,
               "step(batch): the model takes a context of " << m.context_dim << " dims: context is required");
  detail::check_field_context(m, batch.context, batch.size, "step(batch)");
  for (int64_t i = 0; i < batch.size; ++i) {
    for (int d = 0; d < D; ++d) {
      CUFM_REQUIRE(std::isfinite(batch.x1[i * D + d]),
                   "step(batch): x1 at row " << i << ", column " << d << " is not finite");
    }
    CUFM_REQUIRE(!batch.labels || (batch.labels[i] >= 0 && batch.labels[i] < m.num_classes),
                 "step(batch): label " << batch.labels[i] << " at row " << i << " is outside [0, "
                                       << m.num_classes << ")");
  }
  return backend_->step_batch(batch);
}

Trainer::~Trainer() = default;
Trainer::Trainer(Trainer&&) noexcept = default;
Trainer& Trainer::operator=(Trainer&&) noexcept = default;

float Trainer::step() {
  require_data("step()");
  backend_->run(1);
  return backend_->loss();
}

void Trainer::run(uint64_t n) {
  require_data("run()");
  backend_->run(n);
}

float Trainer::loss() {
  CUFM_REQUIRE(backend_->step_count() > 0, "trainer: loss() asked before any step ran");
  return backend_->loss();
}

void Trainer::fit(uint64_t steps, const std::function<void(const FitProgress&)>& callback, uint64_t every) {
  require_data("fit()");
  CUFM_REQUIRE(every >= 1, "fit: the callback interval must be >= 1");
  const auto start = std::chrono::steady_clock::now();
  const uint64_t total = backend_->step_count() + steps;
  uint64_t done = 0;
  while (done < steps) {
    const uint64_t chunk = std::min(every, steps - done);
    backend_->run(chunk);
    done += chunk;
    if (callback) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      callback(FitProgress{backend_->step_count(), total, backend_->loss(), secs});
    }
  }
}

void Trainer::fit(DataSource& source, uint64_t steps, const std::function<void(const FitProgress&)>& callback,
                  uint64_t every) {
  CUFM_REQUIRE(every >= 1, "fit: the callback interval must be >= 1");
  const MlpConfig& m = model_config_;
  CUFM_REQUIRE(source.dim() == m.data_dim, "fit: the source's points have "
                                               << source.dim() << " dims but the model's data_dim is "
                                               << m.data_dim);
  CUFM_REQUIRE(
      m.num_classes == 0 || source.num_classes() > 0,
      "fit: the model is conditional (" << m.num_classes << " classes) but the source has no labels");
  CUFM_REQUIRE(
      m.num_classes == 0 || source.num_classes() <= m.num_classes,
      "fit: the source has " << source.num_classes() << " classes but the model only " << m.num_classes);
  CUFM_REQUIRE(source.context_dim() == m.context_dim,
               "fit: the source's context has " << source.context_dim()
                                                << " dims but the model's context_dim is " << m.context_dim);
  const int B = config_.batch_size;
  std::vector<float> x1(static_cast<size_t>(B) * m.data_dim);
  std::vector<int32_t> labels(source.num_classes() > 0 ? B : 0);
  std::vector<float> context(static_cast<size_t>(B) * m.context_dim);
  const auto start = std::chrono::steady_clock::now();
  const uint64_t total = backend_->step_count() + steps;
  float last = 0.0f;
  for (uint64_t done = 1; done <= steps; ++done) {
    source.next_batch(backend_->step_count(), B, x1.data(), labels.empty() ? nullptr : labels.data(),
                      context.empty() ? nullptr : context.data());
    DataBatch b;
    b.size = B;
    b.x1 = x1.data();
    b.labels = m.num_classes > 0 ? labels.data() : nullptr;  // an unconditional model ignores them
    b.context = context.empty() ? nullptr : context.data();
    last = step(b);
    if (callback && (done % every == 0 || done == steps)) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      callback(FitProgress{backend_->step_count(), total, last, secs});
    }
  }
}

uint64_t Trainer::step_count() const {
  return backend_->step_count();
}

std::string Trainer::mlp() const {
  return backend_->mlp();
}
TrainState Trainer::state() const {
  return backend_->state();
}
Model Trainer::model() const {
  return Model(model_config_, backend_->state().params);
}

Model Trainer::ema_model() const {
  TrainState s = backend_->state();
  CUFM_REQUIRE(!s.ema.empty(), "ema_model: EMA is off (set optim.ema_decay > 0)");
  return Model(model_config_, std::move(s.ema));
}

}  // namespace cufm
