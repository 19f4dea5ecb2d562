// cufm::loss_and_grad on the GPU: the caller's batch and draws staged on the device, then the
// training step's own loss and gradient (cuda::enqueue_loss_grad with FmBatch::given_t/given_eps),
// read back. The weights are padded and uploaded as the trainer does; nothing is kept.
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "cufm/error.hpp"
#include "host/cuda/cuda_backend.hpp"
#include "host/cuda/device_buffer.hpp"
#include "host/cuda/fm_grad.hpp"
#include "host/cuda/lt_mlp.hpp"
#include "kernels/convert.hpp"
#include "kernels/cuda_check.hpp"

namespace cufm::detail {

using cuda::DeviceBuffer;

namespace {

// The body of cuda_loss_and_grad. The queued copies read the caller's host arrays (held until the
// call returns: a failure first waits for the stream, below) and this function's own vectors
// (zeros, all_null): those are pageable memory, which cudaMemcpyAsync has copied by the time it
// returns; pinned memory here would need a wait before they go out of scope.
LossGrad loss_and_grad_on(const Model& model, const FlowBatch& batch, float sigma_min, Precision precision,
                          cudaStream_t s) {
  const MlpConfig& m = model.config();
  const int D = m.data_dim;
  const int64_t B = batch.size;
  const cuda::PaddedLayout layout(m);
  const size_t np = layout.total;
  DeviceBuffer params(np * sizeof(float), "the parameters", s), grads(np * sizeof(float), "the gradients", s);
  DeviceBuffer params_bf16;
  const std::vector<float> padded = layout.pad(model.params());
  CUFM_CUDA_CHECK(
      cudaMemcpyAsync(params.get(), padded.data(), np * sizeof(float), cudaMemcpyHostToDevice, s));
  if (precision == Precision::BF16) {
    params_bf16 = DeviceBuffer(np * sizeof(__nv_bfloat16), "the bf16 weights", s);
    cuda::convert_to_bf16(params.as<float>(), params_bf16.as<__nv_bfloat16>(), np, s);
  }
  const size_t elems = static_cast<size_t>(B) * D;
  DeviceBuffer x1(elems * sizeof(float), "the batch", s), eps(elems * sizeof(float), "the noise", s),
      t(B * sizeof(float), "the times", s), loss(sizeof(float), "the loss", s);
  CUFM_CUDA_CHECK(cudaMemcpyAsync(x1.get(), batch.x1, elems * sizeof(float), cudaMemcpyHostToDevice, s));
  CUFM_CUDA_CHECK(cudaMemcpyAsync(eps.get(), batch.eps, elems * sizeof(float), cudaMemcpyHostToDevice, s));
  CUFM_CUDA_CHECK(cudaMemcpyAsync(t.get(), batch.t, B * sizeof(float), cudaMemcpyHostToDevice, s));
  DeviceBuffer labels;
  std::vector<int32_t> null_labels;
  if (m.num_classes > 0) {
    const int32_t* src = batch.labels;
    if (!src) {
      null_labels.assign(static_cast<size_t>(B), m.null_class());
      src = null_labels.data();
    }
    labels = DeviceBuffer(B * sizeof(int32_t), "the labels", s);
    CUFM_CUDA_CHECK(cudaMemcpyAsync(labels.get(), src, B * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  }
  // A model with a context: the rows' contexts, or zeros flagged null where the batch gives none.
  DeviceBuffer context, context_null;
  std::vector<float> zeros;
  std::vector<uint8_t> all_null;
  if (m.context_dim > 0) {
    const size_t ce = static_cast<size_t>(B) * m.context_dim;
    const float* src = batch.context;
    const uint8_t* null_src = batch.context_null;
    if (!src) {
      zeros.assign(ce, 0.0f);
      all_null.assign(static_cast<size_t>(B), 1);
      src = zeros.data();
      null_src = all_null.data();
    }
    context = DeviceBuffer(ce * sizeof(float), "the context", s);
    context_null = DeviceBuffer(static_cast<size_t>(B), "the null contexts", s);
    CUFM_CUDA_CHECK(cudaMemcpyAsync(context.get(), src, ce * sizeof(float), cudaMemcpyHostToDevice, s));
    if (null_src) {
      CUFM_CUDA_CHECK(
          cudaMemcpyAsync(context_null.get(), null_src, static_cast<size_t>(B), cudaMemcpyHostToDevice, s));
    } else {
      CUFM_CUDA_CHECK(cudaMemsetAsync(context_null.get(), 0, static_cast<size_t>(B), s));
    }
  }
  const size_t ws_bytes = kernels::fm_loss_grad_workspace_bytes(static_cast<int>(B), D);
  DeviceBuffer loss_ws(ws_bytes, "the loss workspace", s);
  cuda::LtMlp mlp(m, precision, B, cuda::MlpMode::Training, params.as<float>(),
                  params_bf16.as<__nv_bfloat16>(), grads.as<float>(), s);
  kernels::FmBatch b;
  b.batch = static_cast<int>(B);
  b.dim = D;
  b.data = x1.as<float>();
  b.labels = labels.as<int32_t>();
  b.context = context.as<float>();
  b.given_context_null = context_null.as<uint8_t>();
  b.n_data = static_cast<uint32_t>(B);
  b.sigma_min = sigma_min;
  b.given_t = t.as<float>();
  b.given_eps = eps.as<float>();
  cuda::enqueue_loss_grad(mlp, m, b, loss.as<float>(), loss_ws.get(), ws_bytes, s);
  LossGrad r;
  std::vector<float> g(np);
  CUFM_CUDA_CHECK(cudaMemcpyAsync(g.data(), grads.get(), np * sizeof(float), cudaMemcpyDeviceToHost, s));
  CUFM_CUDA_CHECK(cudaMemcpyAsync(&r.loss, loss.get(), sizeof(float), cudaMemcpyDeviceToHost, s));
  CUFM_CUDA_CHECK(cudaStreamSynchronize(s));
  r.grad = layout.unpad(g);
  return r;
}

}  // namespace

LossGrad cuda_loss_and_grad(const Model& model, const FlowBatch& batch, float sigma_min,
                            Precision precision) {
  const cuda::Stream stream;
  try {
    return loss_and_grad_on(model, batch, sigma_min, precision, stream.get());
  } catch (...) {
    (void)cudaStreamSynchronize(stream.get());
    (void)cudaGetLastError();
    throw;
  }
}

}  // namespace cufm::detail
