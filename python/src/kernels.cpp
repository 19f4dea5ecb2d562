// The CUDA-level API (cufm/kernels.hpp) on any framework's CUDA arrays (a PyTorch tensor through
// DLPack): fm_prepare, fm_couple and fm_loss_grad, enqueued on the caller's stream, and their
// workspaces' sizes. The host twins are loss.cpp's prepare_flow, couple and flow_mse, whose
// keyword defaults (StepDraws', CouplingConfig's) these share. A build without the CUDA backend
// binds them too, with the same signatures, and they raise cufm.Error saying so.
#include "bind.hpp"
#if defined(CUFM_WITH_CUDA)
#include <cuda_runtime.h>

#include "cufm/kernels.hpp"
#endif

namespace cufm::python {

namespace {

#if defined(CUFM_WITH_CUDA)
// The kernels' batch for the caller's rows in order (x1 is the batch), with the draws' settings.
cufm::kernels::FmBatch in_order_batch(const ConstFloats& x1, const Steps& step, const cufm::StepDraws& d,
                                      const int32_t* labels) {
  cufm::kernels::FmBatch b;
  b.seed = d.seed;
  b.step = reinterpret_cast<const uint64_t*>(step.data());
  b.batch = static_cast<int>(x1.shape(0));
  b.dim = static_cast<int>(x1.shape(1));
  b.data = x1.data();
  b.labels = labels;
  b.n_data = static_cast<uint32_t>(x1.shape(0));
  b.time_sampling = d.path.time_sampling;
  b.logit_mean = d.path.logit_mean;
  b.logit_std = d.path.logit_std;
  b.sigma_min = d.path.sigma_min;
  b.label_dropout = d.label_dropout;
  b.rows_in_order = true;
  return b;
}

// The kernels launch on the current device: the arrays must live there.
void require_current_device(int dev, const char* who) {
  int current = 0;
  if (cudaGetDevice(&current) != cudaSuccess) throw cufm::Error("cudaGetDevice failed");
  if (current != dev) {
    throw cufm::Error(std::string(who) + ": the arrays are on cuda:" + std::to_string(dev) +
                      ", the current device is cuda:" + std::to_string(current));
  }
}
#endif

void fm_prepare(ConstFloats x1, Floats input, Floats t, Steps step, uintptr_t stream,
                std::optional<ConstLabels> labels, std::optional<Labels> labels_out, uint64_t seed,
                int num_classes, float label_dropout, float sigma_min, const std::string& time_sampling,
                float logit_mean, float logit_std, std::optional<ConstFloats> context, float context_dropout,
                std::optional<ConstLabels> noise_row) {
#if defined(CUFM_WITH_CUDA)
  if (!on_cuda(x1)) throw cufm::Error("fm_prepare: x1 must be a CUDA array (prepare_flow takes host arrays)");
  const int dev = x1.device_id();
  require_same_device(input, true, dev, "fm_prepare: input");
  require_same_device(t, true, dev, "fm_prepare: t");
  require_same_device(step, true, dev, "fm_prepare: step");
  if (x1.ndim() != 2) throw cufm::Error("fm_prepare: x1 must be a 2-D float32 array [B, D]");
  const int64_t B = static_cast<int64_t>(x1.shape(0));
  const int D = static_cast<int>(x1.shape(1));
  if (B > INT32_MAX) throw cufm::Error("fm_prepare: more than 2^31 - 1 rows");
  if (!context && context_dropout != 0.0f)
    throw cufm::Error("fm_prepare: context_dropout given without a context");
  int K = 0;
  if (context) {
    require_same_device(*context, true, dev, "fm_prepare: context");
    if (context->ndim() != 2 || static_cast<int64_t>(context->shape(0)) != B || context->shape(1) < 1)
      throw cufm::Error("fm_prepare: context must be a CUDA float32 array [B, K]");
    K = static_cast<int>(context->shape(1));
  }
  const int ld = D + 1 + (K > 0 ? K + 1 : 0) + (num_classes > 0 ? num_classes + 1 : 0);
  require_shape(input, {B, ld},
                "fm_prepare: input ([B, D + 1], plus K + 1 context columns, plus num_classes + 1 one-hot "
                "columns)");
  require_shape(t, {B}, "fm_prepare: t");
  require_shape(step, {1}, "fm_prepare: step (an int64 [1] array on the device)");
  if (num_classes > 0 && (!labels || !labels_out))
    throw cufm::Error("fm_prepare: num_classes > 0 needs labels and labels_out");
  if (num_classes == 0 && (labels || labels_out))
    throw cufm::Error("fm_prepare: labels given, but num_classes is 0");
  if (labels) {
    require_same_device(*labels, true, dev, "fm_prepare: labels");
    require_same_device(*labels_out, true, dev, "fm_prepare: labels_out");
    require_shape(*labels, {B}, "fm_prepare: labels");
    require_shape(*labels_out, {B}, "fm_prepare: labels_out");
  }
  const cufm::StepDraws d = step_draws(seed, 0, num_classes, label_dropout, sigma_min, time_sampling,
                                       logit_mean, logit_std, context_dropout);
  cufm::kernels::FmBatch b = in_order_batch(x1, step, d, labels ? labels->data() : nullptr);
  b.context = context ? context->data() : nullptr;
  b.context_dropout = context_dropout;
  if (noise_row) {
    require_same_device(*noise_row, true, dev, "fm_prepare: noise_row");
    require_shape(*noise_row, {B}, "fm_prepare: noise_row");
    b.noise_row = reinterpret_cast<const uint32_t*>(noise_row->data());
  }
  cufm::kernels::FmPrepareOutputs out;
  out.input = input.data();
  out.t = t.data();
  out.label = labels_out ? labels_out->data() : nullptr;
  require_current_device(dev, "fm_prepare");
  cufm::kernels::FmInputLayout layout;
  layout.context_dim = K;
  layout.num_classes = num_classes;
  layout.ld = ld;
  cufm::kernels::fm_prepare(b, layout, out, reinterpret_cast<cudaStream_t>(stream));
#else
  (void)x1, (void)input, (void)t, (void)step, (void)stream, (void)labels, (void)labels_out, (void)seed;
  (void)context, (void)context_dropout, (void)noise_row;
  (void)num_classes, (void)label_dropout, (void)sigma_min, (void)time_sampling, (void)logit_mean;
  (void)logit_std;
  throw cufm::Error("fm_prepare: this build of cuFM has no CUDA backend (prepare_flow takes host arrays)");
#endif
}

size_t fm_couple_workspace_bytes(int batch, int dim, const std::string& kind, int num_classes) {
#if defined(CUFM_WITH_CUDA)
  cufm::kernels::FmCoupling c;
  c.kind = cufm::parse_coupling(kind);
  c.num_classes = num_classes;
  return cufm::kernels::fm_couple_workspace_bytes(batch, dim, c);
#else
  (void)batch, (void)dim, (void)kind, (void)num_classes;
  throw cufm::Error("fm_couple_workspace_bytes: this build of cuFM has no CUDA backend");
#endif
}

void fm_couple(ConstFloats x1, Labels noise_row, Bytes workspace, Steps step, uintptr_t stream,
               std::optional<ConstLabels> labels, const std::string& kind, float reg, uint64_t seed,
               int num_classes, float label_dropout, float sigma_min, const std::string& time_sampling,
               float logit_mean, float logit_std) {
#if defined(CUFM_WITH_CUDA)
  if (!on_cuda(x1)) throw cufm::Error("fm_couple: x1 must be a CUDA array (couple takes host arrays)");
  const int dev = x1.device_id();
  require_same_device(noise_row, true, dev, "fm_couple: noise_row");
  require_same_device(workspace, true, dev, "fm_couple: workspace");
  require_same_device(step, true, dev, "fm_couple: step");
  if (x1.ndim() != 2) throw cufm::Error("fm_couple: x1 must be a 2-D float32 array [B, D]");
  const int64_t B = static_cast<int64_t>(x1.shape(0));
  const int D = static_cast<int>(x1.shape(1));
  if (B > INT32_MAX) throw cufm::Error("fm_couple: more than 2^31 - 1 rows");
  require_shape(noise_row, {B}, "fm_couple: noise_row");
  require_shape(step, {1}, "fm_couple: step (an int64 [1] array on the device)");
  if (num_classes > 0 && !labels) throw cufm::Error("fm_couple: num_classes > 0 needs labels");
  if (num_classes == 0 && labels) throw cufm::Error("fm_couple: labels given, but num_classes is 0");
  if (labels) {
    require_same_device(*labels, true, dev, "fm_couple: labels");
    require_shape(*labels, {B}, "fm_couple: labels");
  }
  cufm::kernels::FmCoupling c;
  c.kind = cufm::parse_coupling(kind);
  c.reg = reg;
  c.num_classes = num_classes;
  const size_t need = cufm::kernels::fm_couple_workspace_bytes(static_cast<int>(B), D, c);
  if (workspace.ndim() != 1 || workspace.shape(0) < need)
    throw cufm::Error("fm_couple: the workspace needs " + std::to_string(need) + " bytes");
  const cufm::StepDraws d =
      step_draws(seed, 0, num_classes, label_dropout, sigma_min, time_sampling, logit_mean, logit_std);
  const cufm::kernels::FmBatch b = in_order_batch(x1, step, d, labels ? labels->data() : nullptr);
  require_current_device(dev, "fm_couple");
  cufm::kernels::fm_couple(b, c, reinterpret_cast<uint32_t*>(noise_row.data()), workspace.data(),
                           workspace.shape(0), reinterpret_cast<cudaStream_t>(stream));
#else
  (void)x1, (void)noise_row, (void)workspace, (void)step, (void)stream, (void)labels, (void)kind;
  (void)reg, (void)seed, (void)num_classes, (void)label_dropout, (void)sigma_min, (void)time_sampling;
  (void)logit_mean, (void)logit_std;
  throw cufm::Error("fm_couple: this build of cuFM has no CUDA backend (couple takes host arrays)");
#endif
}

size_t fm_loss_grad_workspace_bytes(int batch, int dim) {
#if defined(CUFM_WITH_CUDA)
  return cufm::kernels::fm_loss_grad_workspace_bytes(batch, dim);
#else
  (void)batch, (void)dim;
  throw cufm::Error("fm_loss_grad_workspace_bytes: this build of cuFM has no CUDA backend");
#endif
}

void fm_loss_grad(ConstFloats x1, ConstFloats v, Floats grad, Floats loss, Bytes workspace, Steps step,
                  uintptr_t stream, uint64_t seed, float sigma_min, const std::string& time_sampling,
                  float logit_mean, float logit_std, std::optional<ConstLabels> noise_row) {
#if defined(CUFM_WITH_CUDA)
  if (!on_cuda(x1)) throw cufm::Error("fm_loss_grad: x1 must be a CUDA array (flow_mse takes host arrays)");
  const int dev = x1.device_id();
  require_same_device(v, true, dev, "fm_loss_grad: v");
  require_same_device(grad, true, dev, "fm_loss_grad: grad");
  require_same_device(loss, true, dev, "fm_loss_grad: loss");
  require_same_device(workspace, true, dev, "fm_loss_grad: workspace");
  require_same_device(step, true, dev, "fm_loss_grad: step");
  if (x1.ndim() != 2) throw cufm::Error("fm_loss_grad: x1 must be a 2-D float32 array [B, D]");
  const int64_t B = static_cast<int64_t>(x1.shape(0));
  const int D = static_cast<int>(x1.shape(1));
  if (B > INT32_MAX) throw cufm::Error("fm_loss_grad: more than 2^31 - 1 rows");
  require_shape(v, {B, D}, "fm_loss_grad: v");
  require_shape(grad, {B, D}, "fm_loss_grad: grad");
  require_shape(loss, {1}, "fm_loss_grad: loss");
  require_shape(step, {1}, "fm_loss_grad: step (an int64 [1] array on the device)");
  const size_t need = cufm::kernels::fm_loss_grad_workspace_bytes(static_cast<int>(B), D);
  if (workspace.ndim() != 1 || workspace.shape(0) < need)
    throw cufm::Error("fm_loss_grad: the workspace needs " + std::to_string(need) + " bytes");
  const cufm::StepDraws d = step_draws(seed, 0, 0, 0.0f, sigma_min, time_sampling, logit_mean, logit_std);
  cufm::kernels::FmBatch b = in_order_batch(x1, step, d, nullptr);
  if (noise_row) {
    require_same_device(*noise_row, true, dev, "fm_loss_grad: noise_row");
    require_shape(*noise_row, {B}, "fm_loss_grad: noise_row");
    b.noise_row = reinterpret_cast<const uint32_t*>(noise_row->data());
  }
  cufm::kernels::FmLossOutputs out;
  out.grad = grad.data();
  out.ld = D;
  out.loss = loss.data();
  require_current_device(dev, "fm_loss_grad");
  cufm::kernels::fm_loss_grad(b, v.data(), D, out, workspace.data(), workspace.shape(0),
                              reinterpret_cast<cudaStream_t>(stream));
#else
  (void)x1, (void)v, (void)grad, (void)loss, (void)workspace, (void)step, (void)stream, (void)seed;
  (void)sigma_min, (void)time_sampling, (void)logit_mean, (void)logit_std, (void)noise_row;
  throw cufm::Error("fm_loss_grad: this build of cuFM has no CUDA backend (flow_mse takes host arrays)");
#endif
}

}  // namespace

void bind_kernels(nb::module_& m) {
  const cufm::StepDraws d;
  // fm_couple's kind and reg: couple()'s (the kernels pair by exact or Sinkhorn OT; no independent mode).
  const char* const kind = cufm::to_string(cufm::Coupling::Exact);
  const float reg = cufm::CouplingConfig().reg;
  m.def(
      "fm_prepare", &fm_prepare, "x1"_a, "input"_a.noconvert(), "t"_a.noconvert(), "step"_a, "stream"_a,
      "labels"_a = nb::none(), "labels_out"_a.noconvert() = nb::none(), nb::kw_only(), "seed"_a = d.seed,
      "num_classes"_a = d.num_classes, "label_dropout"_a = d.label_dropout, "sigma_min"_a = d.path.sigma_min,
      "time_sampling"_a = cufm::to_string(d.path.time_sampling), "logit_mean"_a = d.path.logit_mean,
      "logit_std"_a = d.path.logit_std, "context"_a = nb::none(), "context_dropout"_a = d.context_dropout,
      "noise_row"_a = nb::none(),
      "CUDA arrays, enqueued on `stream` (a cudaStream_t as an int) without waiting: prepare_flow's draws by "
      "the fm_prepare kernel. Writes input [B, D + 1] = [x_t | t] (then, with a context [B, K], its K "
      "values and a null indicator, 1 where context_dropout drops the row's, which is then zeros; then "
      "num_classes + 1 one-hot columns when conditional) and t [B]; step is an int64 [1] device array read "
      "on the device; noise_row [B] (int32, fm_couple's pairs): row i takes row noise_row[i]'s noise.");
  m.def("fm_couple_workspace_bytes", &fm_couple_workspace_bytes, "batch"_a, "dim"_a, "kind"_a = kind,
        "num_classes"_a = d.num_classes, "Bytes of device workspace fm_couple needs for a batch.");
  m.def(
      "fm_couple", &fm_couple, "x1"_a, "noise_row"_a.noconvert(), "workspace"_a.noconvert(), "step"_a,
      "stream"_a, "labels"_a = nb::none(), nb::kw_only(), "kind"_a = kind, "reg"_a = reg, "seed"_a = d.seed,
      "num_classes"_a = d.num_classes, "label_dropout"_a = d.label_dropout, "sigma_min"_a = d.path.sigma_min,
      "time_sampling"_a = cufm::to_string(d.path.time_sampling), "logit_mean"_a = d.path.logit_mean,
      "logit_std"_a = d.path.logit_std,
      "CUDA arrays, enqueued on `stream` without waiting: the step's minibatch OT pairs of x1 [B, D] (row i "
      "is x1's row i) with its Philox noise, by the fm_couple kernels, into noise_row [B] (int32): pass it "
      "to fm_prepare and fm_loss_grad. Conditional batches (num_classes > 0) pair within each label after "
      "dropout. workspace: fm_couple_workspace_bytes bytes.");
  m.def("fm_loss_grad_workspace_bytes", &fm_loss_grad_workspace_bytes, "batch"_a, "dim"_a,
        "Bytes of zeroed device workspace fm_loss_grad needs for a batch.");
  m.def("fm_loss_grad", &fm_loss_grad, "x1"_a, "v"_a, "grad"_a.noconvert(), "loss"_a.noconvert(),
        "workspace"_a.noconvert(), "step"_a, "stream"_a, nb::kw_only(), "seed"_a = d.seed,
        "sigma_min"_a = d.path.sigma_min, "time_sampling"_a = cufm::to_string(d.path.time_sampling),
        "logit_mean"_a = d.path.logit_mean, "logit_std"_a = d.path.logit_std, "noise_row"_a = nb::none(),
        "CUDA arrays, enqueued on `stream` without waiting: flow_mse by the fused fm_loss_grad kernel (with "
        "fm_couple's noise_row [B], the paired noise). Writes dL/dv into grad [B, D] and the loss into loss "
        "[1]; workspace: fm_loss_grad_workspace_bytes zeroed bytes (left zeroed), one per concurrent call.");
}

}  // namespace cufm::python
