// The CUDA training backend: the whole step is captured once as a CUDA graph and replayed, with the
// step index in device memory, so run(n) enqueues n graph launches and never waits for the device.
// The loss is read back only when asked. The step: fm_prepare into the model input, then either the
// fused step (kernels/fused_train.cu: forward, loss, backward and the gradient's partial sums in
// one kernel, the partials added by a second; models up to 128 wide) or the layered one
// (LtMlp's forward, fm_loss_grad, LtMlp's backward); then clipping, Adam and the EMA.
#include "host/cuda/cuda_trainer.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <vector>

#include "cufm/error.hpp"
#include "cufm/kernels.hpp"
#include "host/cuda/cuda_backend.hpp"
#include "host/cuda/cuda_graph.hpp"
#include "host/cuda/device_buffer.hpp"
#include "host/cuda/fm_grad.hpp"
#include "host/cuda/lt_mlp.hpp"
#include "kernels/adam.hpp"
#include "kernels/convert.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/fused_train_launch.hpp"

namespace cufm::detail {

namespace {

using cuda::DeviceBuffer;

void upload(const DeviceBuffer& dst, const void* src, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return;
  CUFM_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src, bytes, cudaMemcpyHostToDevice, stream));
}

class CudaTrainer final : public TrainBackend {
 public:
  CudaTrainer(const MlpConfig& model, const TrainConfig& config, const Dataset& data, TrainState state,
              const CudaTrainerOptions& options)
      : model_(model), config_(config), options_(options), layout_(model), step_(state.step) {
    complete_state(model, config, state);
    const bool ema_on = config.optim.ema_decay > 0.0f;
    // n == 0: no dataset (cufm::Trainer(model, config)): only step_given runs.
    CUFM_REQUIRE(data.n >= 0 && data.n <= 0xFFFFFFFFll,
                 "trainer: the dataset must hold 0 to 2^32 - 1 points");
    CUFM_REQUIRE(data.dim == model.data_dim,
                 "trainer: data dim " << data.dim << " != model data_dim " << model.data_dim);
    // The upload reads n * dim floats and n labels: their sizes, for a caller who builds this backend
    // directly (the gpu tests). cufm::Trainer has already checked every value (Dataset::validate);
    // fm_prepare only compares labels, so an out-of-range one cannot write outside its row.
    CUFM_REQUIRE(data.x.size() == static_cast<size_t>(data.n) * static_cast<size_t>(data.dim),
                 "trainer: x holds " << data.x.size() << " floats, not n * dim");
    CUFM_REQUIRE(
        model.num_classes == 0 || data.n == 0 ||
            (data.labels.size() == static_cast<size_t>(data.n) && data.num_classes <= model.num_classes),
        "trainer: a conditional model (" << model.num_classes << " classes) needs n labels in [0, "
                                         << model.num_classes << ")");
    CUFM_REQUIRE(
        data.context_dim == model.context_dim &&
            data.context.size() == static_cast<size_t>(data.n) * static_cast<size_t>(data.context_dim),
        "trainer: a model with a context of " << model.context_dim << " needs n x " << model.context_dim
                                              << " context values");

    choose_step(model, config, options);
    // The dataset lives on the device beside the model, the optimiser and the batch's activations;
    // refuse early, with numbers, when they cannot all fit.
    const size_t data_bytes = static_cast<size_t>(data.n) * (data.dim + data.context_dim) * sizeof(float) +
                              (model.num_classes > 0 ? static_cast<size_t>(data.n) * sizeof(int32_t) : 0);
    const size_t rows = static_cast<size_t>(config.batch_size);
    const size_t staging = rows * (2 * model.data_dim + model.context_dim + 3) * 4;  // step(batch)'s
    size_t step_bytes = 0;                                                           // the step's own buffers
    if (fused_) {  // the model input and the blocks' partial sums
      step_bytes = rows * layout_.in_pad[0] * sizeof(float) +
                   static_cast<size_t>(fused_step_.blocks) * layout_.total * sizeof(float);
    } else {  // the bf16 weights; the activations and their gradients; the cuBLASLt workspace
      const bool bf16 = options.precision == Precision::BF16;
      size_t widths = layout_.in_pad[0];
      for (int w : layout_.out_pad) widths += static_cast<size_t>(w);
      step_bytes = (bf16 ? layout_.total * sizeof(__nv_bfloat16) : 0) +
                   rows * (2 * widths + 2 * layout_.max_width_pad()) * (bf16 ? 2 : 4) + (size_t{32} << 20);
    }
    // Parameters, gradients, Adam's moments, the EMA; the step's buffers; the staging.
    const size_t model_bytes = layout_.total * sizeof(float) * (4 + (ema_on ? 1 : 0)) + step_bytes + staging;
    size_t free_b = 0, total_b = 0;
    CUFM_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (options.memory_limit > 0) free_b = std::min(free_b, options.memory_limit);
    CUFM_REQUIRE(data_bytes + model_bytes < free_b,
                 "the dataset needs "
                     << (data_bytes >> 20) << " MiB on the GPU and the model, optimiser and "
                     << "activations about " << (model_bytes >> 20) << " MiB, but only " << (free_b >> 20)
                     << " of " << (total_b >> 20)
                     << " MiB are free: train on a subset of the dataset, use a smaller batch, "
                        "or use device 'cpu'");

    n_data_ = static_cast<uint32_t>(data.n);
    cudaStream_t s = stream_.get();
    try {
      setup(model, config, data, state, ema_on, s);
      if (options_.launch == StepLaunch::Graph && n_data_ > 0) capture();
    } catch (...) {
      // The destructor does not run for a constructor that throws: let queued uploads finish
      // before the buffers they read and write are freed.
      (void)cudaStreamSynchronize(s);
      (void)cudaGetLastError();
      throw;
    }
  }

  ~CudaTrainer() override {
    const cuda::DeviceScope on(device_, false);
    // Finish the queued steps before the graph and the buffers they use go away.
    if (cudaStreamSynchronize(stream_.get()) != cudaSuccess) {
      (void)cudaGetLastError();
      std::fprintf(stderr, "cufm: warning: a CUDA error was pending when the trainer was destroyed\n");
    }
    graph_.reset();
    mlp_.reset();
    input_ = DeviceBuffer();
    partial_ = DeviceBuffer();
    loss_partial_ = DeviceBuffer();
    for (DeviceBuffer* b :
         {&given_x1_, &given_eps_,   &given_t_,      &given_labels_, &given_context_, &given_context_null_,
          &data_x_,   &data_labels_, &data_context_, &params_,       &grads_,         &m_,
          &v_,        &ema_,         &params_bf16_,  &adam_state_,   &loss_,          &loss_ws_,
          &adam_ws_,  &noise_row_,   &couple_ws_}) {
      *b = DeviceBuffer();
    }
    stream_.reset();  // on this trainer's device, not the caller's
  }

  void run(uint64_t n) override {
    const cuda::DeviceScope on(device_);
    CUFM_REQUIRE(n == 0 || n_data_ > 0, "trainer: no dataset on the device: only step(batch) runs");
    for (uint64_t i = 0; i < n; ++i) {
      if (graph_) {
        graph_.launch(stream_.get());
      } else {
        enqueue_step(stream_.get());
      }
      ++step_;
    }
  }

  float loss() override {
    const cuda::DeviceScope on(device_);
    float l = 0.0f;
    CUFM_CUDA_CHECK(cudaMemcpyAsync(&l, loss_.get(), sizeof(float), cudaMemcpyDeviceToHost, stream_.get()));
    CUFM_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    return l;
  }

  uint64_t step_count() const override { return step_; }

  // The caller's batch and draws, staged, then the same loss, gradient and update as a step of
  // cuFM's own batches (eager: the graph is captured for those).
  float step_given(const FlowBatch& fb) override {
    const cuda::DeviceScope on(device_);
    CUFM_REQUIRE(fb.size == config_.batch_size,
                 "trainer: the batch has " << fb.size << " rows, not batch_size " << config_.batch_size);
    CUFM_REQUIRE(model_.num_classes == 0 || fb.labels,
                 "trainer: a conditional model's batch needs its labels");
    CUFM_REQUIRE(model_.context_dim == 0 || fb.context, "trainer: a model with a context needs the batch's");
    cudaStream_t s = stream_.get();
    const size_t rows = static_cast<size_t>(fb.size), elems = rows * model_.data_dim;
    const size_t context_elems = rows * model_.context_dim;
    ensure_staging(s);
    upload(given_x1_, fb.x1, elems * sizeof(float), s);
    upload(given_eps_, fb.eps, elems * sizeof(float), s);
    upload(given_t_, fb.t, rows * sizeof(float), s);
    if (model_.num_classes > 0) upload(given_labels_, fb.labels, rows * sizeof(int32_t), s);
    if (model_.context_dim > 0) {
      upload(given_context_, fb.context, context_elems * sizeof(float), s);
      if (fb.context_null) {
        upload(given_context_null_, fb.context_null, rows, s);
      } else {
        CUFM_CUDA_CHECK(cudaMemsetAsync(given_context_null_.get(), 0, rows, s));
      }
    }
    kernels::FmBatch b = batch_desc();
    b.data = given_x1_.as<float>();
    b.labels = given_labels_.as<int32_t>();
    b.context = given_context_.as<float>();
    b.given_context_null = given_context_null_.as<uint8_t>();
    b.n_data = static_cast<uint32_t>(fb.size);
    b.given_t = given_t_.as<float>();
    b.given_eps = given_eps_.as<float>();
    enqueue_loss_grad(b, s);
    enqueue_update(s);
    ++step_;
    return loss();  // waits: the host arrays are free again when this returns
  }

  // The caller's rows uploaded once; t, eps, label and context dropout drawn on the device by
  // fm_prepare with rows_in_order (Philox's streams, as the CPU's draw_given draws them), the pairs by
  // fm_couple; then the loss, gradient and update of every step. Eager (the graph is captured for
  // cuFM's own batches).
  float step_batch(const DataBatch& batch) override {
    const cuda::DeviceScope on(device_);
    CUFM_REQUIRE(batch.size == config_.batch_size,
                 "trainer: the batch has " << batch.size << " rows, not batch_size " << config_.batch_size);
    CUFM_REQUIRE(batch.x1, "trainer: the batch's x1 must not be null");
    CUFM_REQUIRE(model_.num_classes == 0 || batch.labels,
                 "trainer: a conditional model's batch needs its labels");
    CUFM_REQUIRE(model_.context_dim == 0 || batch.context, "trainer: a model with a context needs the batch's");
    cudaStream_t s = stream_.get();
    const size_t rows = static_cast<size_t>(batch.size);
    ensure_staging(s);
    upload(given_x1_, batch.x1, rows * model_.data_dim * sizeof(float), s);
    if (model_.num_classes > 0) upload(given_labels_, batch.labels, rows * sizeof(int32_t), s);
    if (model_.context_dim > 0) {
      upload(given_context_, batch.context, rows * model_.context_dim * sizeof(float), s);
    }
    kernels::FmBatch b = batch_desc();
    b.data = given_x1_.as<float>();
    b.labels = given_labels_.as<int32_t>();
    b.context = given_context_.as<float>();
    b.n_data = static_cast<uint32_t>(batch.size);
    b.rows_in_order = true;
    if (config_.coupling != Coupling::Independent) {
      kernels::fm_couple(b, coupling_desc(), noise_row_.as<uint32_t>(), couple_ws_.get(), couple_ws_.bytes(),
                         s);
      b.noise_row = noise_row_.as<uint32_t>();
    }
    enqueue_loss_grad(b, s);
    enqueue_update(s);
    ++step_;
    return loss();  // waits: the host arrays are free again when this returns
  }

  TrainState state() const override {
    const cuda::DeviceScope on(device_);
    TrainState s;
    s.step = step_;
    s.params = download(params_);
    s.adam_m = download(m_);
    s.adam_v = download(v_);
    if (ema_.get()) s.ema = download(ema_);
    return s;
  }

  std::string describe() const override {
    if (!fused_) return mlp_->describe();
    return std::string("fused training step, ") +
           (fused_step_.precision == Precision::FP32
                ? std::string("fp32 on the CUDA cores")
                : std::string(to_string(fused_step_.precision)) + " on the tensor cores") +
           ": tiles of " + std::to_string(fused_step_.tile) + " rows, " + std::to_string(fused_step_.blocks) +
           " blocks, the gradient's partials added in block order\n";
  }
  std::string mlp() const override { return fused_ ? "cuda fused" : "cuda layered"; }

 private:
  // step_given's and step_batch's staging buffers, allocated by the first of them, all at once: a
  // failed allocation leaves none of them set.
  void ensure_staging(cudaStream_t s) {
    if (given_t_.get()) return;
    const size_t rows = static_cast<size_t>(config_.batch_size), elems = rows * model_.data_dim;
    DeviceBuffer x1(elems * sizeof(float), "the batch", s), eps(elems * sizeof(float), "the batch's noise", s),
        t(rows * sizeof(float), "the batch's times", s), labels, context, context_null;
    if (model_.num_classes > 0) labels = DeviceBuffer(rows * sizeof(int32_t), "the batch's labels", s);
    if (model_.context_dim > 0) {
      context = DeviceBuffer(rows * model_.context_dim * sizeof(float), "the batch's context", s);
      context_null = DeviceBuffer(rows, "the batch's null contexts", s);
    }
    given_x1_ = std::move(x1);
    given_eps_ = std::move(eps);
    given_labels_ = std::move(labels);
    given_context_ = std::move(context);
    given_context_null_ = std::move(context_null);
    given_t_ = std::move(t);
  }
  // The fused step where it applies and options.mlp allows, its tile the largest whose shared
  // memory fits this GPU (a function of the model and the GPU), its blocks a function of the batch.
  void choose_step(const MlpConfig& model, const TrainConfig& config, const CudaTrainerOptions& options) {
    std::string why = cuda::fused_train_refusal(model, options.precision);
    cuda::FusedTrain p;
    if (why.empty()) {
      p = cuda::fused_train_of(model, nullptr, static_cast<int64_t>(layout_.total), [&](int l) {
        return cuda::FusedTrainLayer{layout_.in_pad[l], static_cast<int64_t>(layout_.w_off[l]),
                                     static_cast<int64_t>(layout_.b_off[l])};
      });
      p.precision = options.precision;
      p.tile = cuda::fused_train_tile(p);
      if (p.tile == 0) why = "the smallest tile of this model does not fit the GPU's shared memory";
    }
    if (!cuda::take_fused(options.mlp, why)) return;
    p.batch = config.batch_size;
    p.input_ld = layout_.in_pad[0];
    p.scale = 2.0f / (static_cast<float>(config.batch_size) * static_cast<float>(model.data_dim));
    p.blocks = cuda::fused_train_blocks(p.batch, p.tile);
    fused_step_ = p;
    fused_ = true;
  }

  // One batch's loss into loss_ and gradient into grads_, on `stream`, nothing read back: fm_prepare
  // into the model input, then the fused step or the layered one.
  void enqueue_loss_grad(const kernels::FmBatch& b, cudaStream_t stream) {
    if (!fused_) {
      cuda::enqueue_loss_grad(*mlp_, model_, b, loss_.as<float>(), loss_ws_.get(), loss_ws_.bytes(), stream);
      return;
    }
    kernels::FmInputLayout in;
    in.time_features = model_.time_features;
    in.num_classes = model_.num_classes;
    in.context_dim = model_.context_dim;
    in.ld = layout_.in_pad[0];
    kernels::FmPrepareOutputs prep;
    prep.input = input_.as<float>();
    kernels::fm_prepare(b, in, prep, stream);
    cuda::fused_train(fused_step_, b, grads_.as<float>(), loss_.as<float>(), stream);
  }

  // The device state and its uploads (the constructor's body, so that a failure can first wait for
  // the copies it queued).
  void setup(const MlpConfig& model, const TrainConfig& config, const Dataset& data, const TrainState& state,
             bool ema_on, cudaStream_t s) {
    const size_t np = layout_.total;
    const size_t pbytes = np * sizeof(float);
    data_x_ = DeviceBuffer(static_cast<size_t>(data.n) * data.dim * sizeof(float), "the dataset", s);
    upload(data_x_, data.x.data(), data_x_.bytes(), s);
    if (model.num_classes > 0) {
      CUFM_REQUIRE(data.labels.size() == static_cast<size_t>(data.n),
                   "trainer: the conditional model needs labels");
      data_labels_ = DeviceBuffer(static_cast<size_t>(data.n) * sizeof(int32_t), "the dataset labels", s);
      upload(data_labels_, data.labels.data(), data_labels_.bytes(), s);
    }
    if (model.context_dim > 0 && data.n > 0) {
      data_context_ = DeviceBuffer(data.context.size() * sizeof(float), "the dataset contexts", s);
      upload(data_context_, data.context.data(), data_context_.bytes(), s);
    }
    params_ = DeviceBuffer(pbytes, "the parameters", s);
    grads_ = DeviceBuffer(pbytes, "the gradients", s);
    m_ = DeviceBuffer(pbytes, "Adam's first moments", s);
    v_ = DeviceBuffer(pbytes, "Adam's second moments", s);
    // pad() returns fresh vectors: keep them alive until the copies are done (synchronised below).
    const std::vector<float> p = layout_.pad(state.params), pm = layout_.pad(state.adam_m),
                             pv = layout_.pad(state.adam_v);
    std::vector<float> pe;
    upload(params_, p.data(), pbytes, s);
    upload(m_, pm.data(), pbytes, s);
    upload(v_, pv.data(), pbytes, s);
    if (ema_on) {
      pe = layout_.pad(state.ema);
      ema_ = DeviceBuffer(pbytes, "the EMA weights", s);
      upload(ema_, pe.data(), pbytes, s);
    }
    if (options_.precision == Precision::BF16 && !fused_) {  // the fused step rounds as it stages
      params_bf16_ = DeviceBuffer(np * sizeof(__nv_bfloat16), "the bf16 weights", s);
      cuda::convert_to_bf16(params_.as<float>(), params_bf16_.as<__nv_bfloat16>(), np, s);
    }
    cuda::AdamDeviceState st{};
    st.step = state.step;
    adam_state_ = DeviceBuffer(sizeof(st), "the optimiser state", s);
    upload(adam_state_, &st, sizeof(st), s);
    loss_ = DeviceBuffer(sizeof(float), "the loss", s);
    loss_ws_ = DeviceBuffer(kernels::fm_loss_grad_workspace_bytes(config.batch_size, model.data_dim),
                            "the loss workspace", s);
    adam_ws_ = DeviceBuffer(cuda::adam_workspace_bytes(), "the optimiser workspace", s);
    if (config.coupling != Coupling::Independent) {
      noise_row_ =
          DeviceBuffer(static_cast<size_t>(config.batch_size) * sizeof(uint32_t), "the coupling's pairs", s);
      couple_ws_ =
          DeviceBuffer(kernels::fm_couple_workspace_bytes(config.batch_size, model.data_dim, coupling_desc()),
                       "the coupling's workspace", s);
    }
    if (fused_) {
      // The partials' padding is never written: zeros once, here.
      const size_t rows = static_cast<size_t>(config.batch_size);
      input_ = DeviceBuffer(rows * layout_.in_pad[0] * sizeof(float), "the model input", s);
      partial_ = DeviceBuffer(static_cast<size_t>(fused_step_.blocks) * np * sizeof(float),
                              "the gradient's partial sums", s);
      CUFM_CUDA_CHECK(cudaMemsetAsync(partial_.get(), 0, partial_.bytes(), s));
      loss_partial_ = DeviceBuffer(static_cast<size_t>(fused_step_.blocks) * sizeof(double),
                                   "the loss's partial sums", s);
      fused_step_.params = params_.as<float>();
      fused_step_.input = input_.as<float>();
      fused_step_.partial = partial_.as<float>();
      fused_step_.loss_partial = loss_partial_.as<double>();
    } else {
      mlp_ = std::make_unique<cuda::LtMlp>(model, options_.precision, config.batch_size,
                                           cuda::MlpMode::Training, params_.as<float>(),
                                           params_bf16_.as<__nv_bfloat16>(), grads_.as<float>(), s);
    }
    CUFM_CUDA_CHECK(cudaStreamSynchronize(s));
  }

  std::vector<float> download(const DeviceBuffer& b) const {
    std::vector<float> padded(layout_.total);
    CUFM_CUDA_CHECK(
        cudaMemcpyAsync(padded.data(), b.get(), b.bytes(), cudaMemcpyDeviceToHost, stream_.get()));
    CUFM_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    return layout_.unpad(padded);
  }

  kernels::FmBatch batch_desc() const {
    kernels::FmBatch b;
    b.seed = config_.seed;
    b.step = &adam_state_.as<cuda::AdamDeviceState>()->step;
    b.batch = config_.batch_size;
    b.dim = model_.data_dim;
    b.data = data_x_.as<float>();
    b.labels = data_labels_.as<int32_t>();
    b.context = data_context_.as<float>();
    b.n_data = n_data_;
    b.time_sampling = config_.path.time_sampling;
    b.logit_mean = config_.path.logit_mean;
    b.logit_std = config_.path.logit_std;
    b.sigma_min = config_.path.sigma_min;
    b.label_dropout = config_.label_dropout;
    b.context_dropout = config_.context_dropout;
    return b;
  }

  // One training step, all on `stream`, nothing read back; with a coupling, fm_couple's pairs first.
  void enqueue_step(cudaStream_t stream) {
    kernels::FmBatch b = batch_desc();
    if (config_.coupling != Coupling::Independent) {
      kernels::fm_couple(b, coupling_desc(), noise_row_.as<uint32_t>(), couple_ws_.get(), couple_ws_.bytes(),
                         stream);
      b.noise_row = noise_row_.as<uint32_t>();
    }
    enqueue_loss_grad(b, stream);
    enqueue_update(stream);
  }

  kernels::FmCoupling coupling_desc() const {
    kernels::FmCoupling c;
    c.kind = config_.coupling;
    c.reg = config_.ot_reg;
    c.num_classes = model_.num_classes;
    return c;
  }

  // Clipping, Adam/AdamW and EMA from the gradients; the device's step counter advances.
  void enqueue_update(cudaStream_t stream) {
    auto* st = adam_state_.as<cuda::AdamDeviceState>();
    cuda::adam_prepare(config_.optim, grads_.as<float>(), layout_.total, st, adam_ws_.get(), stream);
    cuda::adam_update(st, grads_.as<float>(), layout_.total, params_.as<float>(), m_.as<float>(),
                      v_.as<float>(), ema_.as<float>(), params_bf16_.as<__nv_bfloat16>(), stream);
  }

  void capture() {
    graph_ = cuda::CudaGraph::capture(stream_.get(), [this](cudaStream_t s) { enqueue_step(s); });
  }

  MlpConfig model_;
  TrainConfig config_;
  CudaTrainerOptions options_;
  cuda::PaddedLayout layout_;
  uint64_t step_;
  uint32_t n_data_ = 0;
  int device_ = cuda::current_device();  // the GPU current at construction: every call runs there
  cuda::Stream stream_;
  DeviceBuffer given_x1_, given_eps_, given_t_, given_labels_, given_context_,
      given_context_null_;  // step_given's and step_batch's staging
  DeviceBuffer data_x_, data_labels_, data_context_, params_, grads_, m_, v_, ema_, params_bf16_, adam_state_,
      loss_, loss_ws_, adam_ws_, noise_row_, couple_ws_;
  // The fused step (when fused_) and its buffers: the model input, the blocks' partial sums of the
  // gradient and of the loss.
  bool fused_ = false;
  cuda::FusedTrain fused_step_;
  DeviceBuffer input_, partial_, loss_partial_;
  std::unique_ptr<cuda::LtMlp> mlp_;  // the layered step
  cuda::CudaGraph graph_;             // the whole step (StepLaunch::Graph)
};

}  // namespace

std::unique_ptr<TrainBackend> make_cuda_trainer_with(const MlpConfig& model, const TrainConfig& config,
                                                     const Dataset& data, TrainState state,
                                                     const CudaTrainerOptions& options) {
  return std::make_unique<CudaTrainer>(model, config, data, std::move(state), options);
}

std::unique_ptr<TrainBackend> make_cuda_trainer(const MlpConfig& model, const TrainConfig& config,
                                                const Dataset& data, TrainState state, Precision precision) {
  CudaTrainerOptions options;
  options.precision = precision;
  return make_cuda_trainer_with(model, config, data, std::move(state), options);
}

}  // namespace cufm::detail
