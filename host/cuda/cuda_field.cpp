// The GPU field behind cufm::VelocityField: the weights' device copy and a cuBLASLt inference plan
// kept between calls; each call writes the model input with its labels and context
// (cuda::stage_input, the sampler's kernel),
// runs the MLP and collects the velocity (with guidance: hd::guided over the conditional and null
// rows of one pass), chunk by chunk. The plan grows with the largest call, up to about 1 GiB of
// activations per chunk (cuda::inference_chunk_rows).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <vector>

#include "cufm/error.hpp"
#include "host/cuda/cuda_backend.hpp"
#include "host/cuda/device_buffer.hpp"
#include "host/cuda/lt_mlp.hpp"
#include "kernels/convert.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/solver.hpp"

namespace cufm::detail {

using cuda::DeviceBuffer;

class CudaField {
 public:
  CudaField(const Model& model, const FieldOptions& options)
      : config_(model.config()),
        layout_(model.config()),
        precision_(options.precision),
        copies_(options.guidance ? 2 : 1),
        guidance_(options.guidance.value_or(0.0f)),
        max_chunk_(cuda::inference_chunk_rows(layout_, options.precision, copies_, options.max_rows)) {
    const cuda::DeviceScope on(device_);
    CUFM_CUDA_CHECK(cudaEventCreateWithFlags(&last_, cudaEventDisableTiming));
    params_ = DeviceBuffer(layout_.total * sizeof(float), "the parameters", stream_.get());
    if (precision_ == Precision::BF16) {
      params_bf16_ = DeviceBuffer(layout_.total * sizeof(__nv_bfloat16), "the bf16 weights", stream_.get());
    }
    upload(model);
  }
  ~CudaField() {
    const cuda::DeviceScope on(device_, false);
    // Work a caller enqueued on their own stream may still read the buffers.
    if (cudaDeviceSynchronize() != cudaSuccess) {
      (void)cudaGetLastError();
      std::fprintf(stderr, "cufm: warning: a CUDA error was pending when a VelocityField was destroyed\n");
    }
    mlp_.reset();
    for (DeviceBuffer* b : {&params_, &params_bf16_, &x_, &v_, &labels_, &context_}) *b = DeviceBuffer();
    if (last_ && cudaEventDestroy(last_) != cudaSuccess) (void)cudaGetLastError();
    stream_.reset();  // all on this field's device, not the caller's
  }
  CudaField(const CudaField&) = delete;
  CudaField& operator=(const CudaField&) = delete;

  void set_weights(const Model& model) {
    const cuda::DeviceScope on(device_);
    CUFM_CUDA_CHECK(cudaDeviceSynchronize());  // no earlier call on any stream still reads the weights
    upload(model);
  }

  void evaluate(float t, const float* x, const int32_t* labels, const float* context, int64_t n, float* v,
                cudaStream_t stream) {
    const cuda::DeviceScope on(device_);
    ensure_plan(std::min(n, max_chunk_));
    // Calls share the plan's buffers: each waits for the previous one, whatever its stream.
    CUFM_CUDA_CHECK(cudaStreamWaitEvent(stream, last_, 0));
    const int dim = config_.data_dim;
    for (int64_t first = 0; first < n; first += chunk_) {
      const int64_t rows = std::min(chunk_, n - first);
      cuda::StageCombination at_x;
      at_x.x = x + first * dim;
      cuda::ModelInput in;
      in.n = rows;
      in.dim = dim;
      in.time_features = config_.time_features;
      in.num_classes = config_.num_classes;
      in.labels = labels ? labels + first : nullptr;  // nullptr: the null class (conditional)
      in.context_dim = config_.context_dim;
      in.context = context ? context + first * config_.context_dim : nullptr;  // nullptr: the null context
      in.copies = copies_;
      in.type = mlp_->act_type();
      in.input = mlp_->input();
      in.ld = mlp_->input_ld();
      cuda::stage_input(at_x, t, in, nullptr, stream);
      mlp_->forward(stream);
      cuda::collect_velocity(mlp_->output(), mlp_->output_ld(), rows, dim, copies_, guidance_,
                             v + first * dim, stream);
    }
    CUFM_CUDA_CHECK(cudaEventRecord(last_, stream));
  }

  // The host-pointer call: stages x (and labels) on the field's stream, evaluates, copies v back.
  void evaluate_host(float t, const float* x, const int32_t* labels, const float* context, int64_t n,
                     float* v) {
    const cuda::DeviceScope on(device_);
    cudaStream_t s = stream_.get();
    const size_t bytes = static_cast<size_t>(n) * config_.data_dim * sizeof(float);
    grow(x_, bytes, "the points");
    grow(v_, bytes, "the velocities");
    CUFM_CUDA_CHECK(cudaMemcpyAsync(x_.get(), x, bytes, cudaMemcpyHostToDevice, s));
    if (labels) {
      grow(labels_, static_cast<size_t>(n) * sizeof(int32_t), "the labels");
      CUFM_CUDA_CHECK(cudaMemcpyAsync(labels_.get(), labels, n * sizeof(int32_t), cudaMemcpyHostToDevice, s));
    }
    if (context) {
      const size_t cbytes = static_cast<size_t>(n) * config_.context_dim * sizeof(float);
      grow(context_, cbytes, "the context");
      CUFM_CUDA_CHECK(cudaMemcpyAsync(context_.get(), context, cbytes, cudaMemcpyHostToDevice, s));
    }
    try {
      evaluate(t, x_.as<float>(), labels ? labels_.as<int32_t>() : nullptr,
               context ? context_.as<float>() : nullptr, n, v_.as<float>(), s);
      CUFM_CUDA_CHECK(cudaMemcpyAsync(v, v_.get(), bytes, cudaMemcpyDeviceToHost, s));
      CUFM_CUDA_CHECK(cudaStreamSynchronize(s));
    } catch (...) {
      (void)cudaStreamSynchronize(s);  // the host buffers must not be read after we return
      (void)cudaGetLastError();
      throw;
    }
  }

 private:
  void upload(const Model& model) {
    padded_ = layout_.pad(model.params());
    CUFM_CUDA_CHECK(cudaMemcpyAsync(params_.get(), padded_.data(), params_.bytes(), cudaMemcpyHostToDevice,
                                    stream_.get()));
    if (precision_ == Precision::BF16) {
      cuda::convert_to_bf16(params_.as<float>(), params_bf16_.as<__nv_bfloat16>(), layout_.total,
                            stream_.get());
    }
    CUFM_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));  // every stream sees the weights
  }

  // A plan for at least `rows` points per pass: the next power of two, up to max_chunk_.
  void ensure_plan(int64_t rows) {
    if (mlp_ && chunk_ >= rows) return;
    int64_t want = 1024;
    while (want < rows) want *= 2;
    want = std::min(want, max_chunk_);
    CUFM_CUDA_CHECK(cudaDeviceSynchronize());  // the old plan's buffers may still be in use
    mlp_.reset();
    mlp_ = std::make_unique<cuda::LtMlp>(config_, precision_, copies_ * want, cuda::MlpMode::Inference,
                                         params_.as<float>(), params_bf16_.as<__nv_bfloat16>(), nullptr,
                                         stream_.get());
    CUFM_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    chunk_ = want;
  }

  void grow(DeviceBuffer& b, size_t bytes, const char* what) {
    if (b.bytes() >= bytes) return;
    CUFM_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    b = DeviceBuffer();
    b = DeviceBuffer(bytes, what, stream_.get());
  }

  const MlpConfig config_;
  const cuda::PaddedLayout layout_;
  const Precision precision_;
  const int copies_;
  const float guidance_;
  const int64_t max_chunk_;
  int64_t chunk_ = 0;
  int device_ = cuda::current_device();  // the GPU current at construction: every call runs there
  cuda::Stream stream_;
  cudaEvent_t last_ = nullptr;  // recorded after each call's work, on the caller's stream
  std::vector<float> padded_;
  DeviceBuffer params_, params_bf16_, x_, v_, labels_, context_;
  std::unique_ptr<cuda::LtMlp> mlp_;
};

void CudaFieldDeleter::operator()(CudaField* f) const {
  delete f;
}

CudaFieldPtr make_cuda_field(const Model& model, const FieldOptions& options) {
  return CudaFieldPtr(new CudaField(model, options));
}

void cuda_field_evaluate(CudaField& field, float t, const float* x, const int32_t* labels,
                         const float* context, int64_t n, float* v, void* stream, bool host_pointers) {
  if (host_pointers) {
    field.evaluate_host(t, x, labels, context, n, v);
  } else {
    field.evaluate(t, x, labels, context, n, v, static_cast<cudaStream_t>(stream));
  }
}

void cuda_field_set_weights(CudaField& field, const Model& model) {
  field.set_weights(model);
}

}  // namespace cufm::detail
