#include "host/cuda/fm_grad.hpp"

namespace cufm::cuda {

void enqueue_loss_grad(LtMlp& mlp, const MlpConfig& model, const kernels::FmBatch& batch, float* loss,
                       void* loss_ws, size_t loss_ws_bytes, cudaStream_t stream) {
  const bool bf16 = mlp.act_type() == DType::BF16;
  kernels::FmInputLayout in;
  in.time_features = model.time_features;
  in.num_classes = model.num_classes;
  in.context_dim = model.context_dim;
  in.ld = mlp.input_ld();
  kernels::FmPrepareOutputs prep;
  if (bf16) {
    prep.input_bf16 = static_cast<__nv_bfloat16*>(mlp.input());
  } else {
    prep.input = static_cast<float*>(mlp.input());
  }
  kernels::fm_prepare(batch, in, prep, stream);
  mlp.forward(stream);
  kernels::FmLossOutputs lo;
  if (bf16) {
    lo.grad_bf16 = static_cast<__nv_bfloat16*>(mlp.dout());
  } else {
    lo.grad = static_cast<float*>(mlp.dout());
  }
  lo.ld = mlp.output_ld();
  lo.loss = loss;
  kernels::fm_loss_grad(batch, mlp.output(), mlp.output_ld(), lo, loss_ws, loss_ws_bytes, stream);
  mlp.backward(stream);
}

}  // namespace cufm::cuda
