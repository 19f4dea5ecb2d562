// The CPU backend's training step: draw the batch, forward, loss and dL/dv, backward, optional
// gradient clipping, Adam/AdamW and EMA. Float32 throughout, the reference for the CUDA backend; with
// Precision::BF16 the MLP's GEMMs take bf16 inputs (host/cpu/cpu_mlp.cpp), all else stays fp32.
#include <cstring>

#include "cufm/error.hpp"
#include "host/backend.hpp"
#include "host/cpu/cpu_ops.hpp"

namespace cufm::detail {
namespace {

class CpuTrainer final : public TrainBackend {
 public:
  CpuTrainer(const MlpConfig& model, const TrainConfig& config, const Dataset& data, TrainState state,
             int threads, Precision precision)
      : model_(model), config_(config), threads_(threads), data_(data), state_(std::move(state)) {
    complete_state(model_, config_, state_);
    grads_.assign(state_.params.size(), 0.0f);
    dout_.resize(static_cast<size_t>(config_.batch_size) * model_.data_dim);
    ws_.precision = precision;
    given_.ws.precision = precision;
    fused_ = cpu::fused_step_applies(model_, precision);
    if (!fused_) ws_.resize(model_, config_.batch_size);
  }

  void run(uint64_t n) override {
    cpu::set_threads(threads_);
    for (uint64_t i = 0; i < n; ++i) one_step();
  }

  float step_given(const FlowBatch& b) override {
    cpu::set_threads(threads_);
    loss_ =
        cpu::loss_grad_given(model_, state_.params.data(), b, config_.path.sigma_min, given_, grads_.data());
    update();
    return loss_;
  }

  // The caller's rows with the step's draws (host/draws.hpp) and, with a coupling, its pairs.
  float step_batch(const DataBatch& batch) override {
    cpu::set_threads(threads_);
    const int64_t B = batch.size;
    cpu::draw_given(model_, config_, state_.step, B, batch.labels, given_t_, given_eps_, given_labels_,
                    given_context_drop_);
    if (config_.coupling != Coupling::Independent) {
      cpu::couple_rows(cpu::coupling_config(config_, state_.step), B, model_.data_dim, batch.x1,
                       given_labels_.empty() ? nullptr : given_labels_.data(), given_eps_);
    }
    FlowBatch fb;
    fb.size = B;
    fb.x1 = batch.x1;
    fb.t = given_t_.data();
    fb.eps = given_eps_.data();
    fb.labels = given_labels_.empty() ? nullptr : given_labels_.data();
    fb.context = batch.context;
    fb.context_null = given_context_drop_.empty() ? nullptr : given_context_drop_.data();
    return step_given(fb);
  }

  float loss() override { return loss_; }
  uint64_t step_count() const override { return state_.step; }
  TrainState state() const override { return state_; }

  std::string mlp() const override { return fused_ ? "cpu fused" : "cpu"; }

 private:
  void one_step() {
    const uint64_t step = state_.step;
    cpu::fm_prepare(model_, config_, data_, step, batch_);
    if (fused_) {
      const cpu::RowLoss rows = [&](int64_t r0, int64_t r1, const float* v, float* grad) {
        return cpu::fm_loss_rows(model_, config_, data_, step, batch_, r0, r1, v, grad);
      };
      const double sum = cpu::fused_step(model_, state_.params.data(), batch_.input.data(),
                                         config_.batch_size, rows, fused_scratch_, grads_.data());
      loss_ = static_cast<float>(sum / (static_cast<double>(config_.batch_size) * model_.data_dim));
      update();
      return;
    }
    cpu::mlp_forward(model_, state_.params.data(), batch_.input.data(), config_.batch_size, ws_);
    loss_ = cpu::fm_loss_grad(model_, config_, data_, step, batch_, ws_.out.data(), dout_.data());
    cpu::mlp_backward(model_, state_.params.data(), batch_.input.data(), config_.batch_size, dout_.data(),
                      ws_, grads_.data());
    update();
  }

  // Clipping, Adam/AdamW and EMA from grads_, then the step counter.
  void update() {
    const uint64_t step = state_.step;
    const float norm = config_.optim.grad_clip > 0.0f
                           ? static_cast<float>(cpu::l2_norm(grads_.data(), grads_.size()))
                           : 0.0f;
    const hd::AdamCoeffs c = cpu::adam_coeffs(config_.optim, step + 1, norm);
    cpu::adam_step(c, grads_.data(), grads_.size(), state_.params.data(), state_.adam_m.data(),
                   state_.adam_v.data(), state_.ema.empty() ? nullptr : state_.ema.data());
    state_.step = step + 1;
  }

  MlpConfig model_;
  TrainConfig config_;
  int threads_;   // 0: all cores
  Dataset data_;  // a copy: the caller's may not outlive the trainer
  TrainState state_;
  cpu::PreparedBatch batch_;
  cpu::MlpWorkspace ws_;
  bool fused_ = false;  // the narrow models' fused step (host/cpu/cpu_fused.cpp)
  cpu::FusedScratch fused_scratch_;
  cpu::GivenScratch given_;
  std::vector<float> grads_, dout_;
  std::vector<float> given_t_, given_eps_;  // step_batch's draws
  std::vector<int32_t> given_labels_;
  std::vector<uint8_t> given_context_drop_;
  float loss_ = 0.0f;
};

}  // namespace
}  // namespace cufm::detail

namespace cufm::cpu {
std::unique_ptr<detail::TrainBackend> make_trainer(const MlpConfig& model, const TrainConfig& config,
                                                   const Dataset& data, TrainState state, int threads,
                                                   Precision precision) {
  return std::make_unique<detail::CpuTrainer>(model, config, data, std::move(state), threads, precision);
}
}  // namespace cufm::cpu
