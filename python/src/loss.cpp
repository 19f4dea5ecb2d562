// The flow-matching loss on the host: loss_and_grad (cuFM's own model, the caller's draws), and the
// pieces of a training step for a model of the caller's own (cufm.torch): prepare_flow's draws,
// flow_mse's loss and gradient, couple's minibatch optimal-transport pairs. kernels.cpp binds their
// CUDA twins. Keyword defaults: StepDraws', RunOptions' and CouplingConfig's.
#include "bind.hpp"

namespace cufm::python {

void bind_loss(nb::module_& m) {
  const cufm::RunOptions run;
  const cufm::StepDraws draws;
  m.def(
      "loss_and_grad",
      [](const cufm::Model& model, FloatIn x1, FloatIn t, FloatIn eps, std::optional<LabelsIn> labels,
         float sigma_min, const std::string& device, const std::string& precision, int threads,
         std::optional<FloatIn> context,
         std::optional<nb::ndarray<const bool, nb::numpy, nb::c_contig, nb::device::cpu, nb::ndim<1>>>
             context_null) {
        const int dim = model.config().data_dim;
        const int64_t n = rows_of(x1, dim, "loss_and_grad: x1");
        if (rows_of(eps, dim, "loss_and_grad: eps") != n)
          throw cufm::Error("loss_and_grad: eps has other rows");
        if (t.ndim() != 1 || static_cast<int64_t>(t.shape(0)) != n) {
          throw cufm::Error("loss_and_grad: t must be a float32 array of shape [N]");
        }
        cufm::FlowBatch b;
        b.size = n;
        b.x1 = x1.data();
        b.t = t.data();
        b.eps = eps.data();
        b.labels = labels_of(labels, n, "loss_and_grad");
        b.context = context_rows(context, n, model.config().context_dim, "loss_and_grad");
        std::vector<uint8_t> null_rows;  // the C++ API's per-row null context, from a bool mask
        if (context_null) {
          if (!context) throw cufm::Error("loss_and_grad: context_null given without a context");
          if (static_cast<int64_t>(context_null->shape(0)) != n) {
            throw cufm::Error("loss_and_grad: context_null must be a bool array of shape [N]");
          }
          null_rows.assign(context_null->data(), context_null->data() + n);
          b.context_null = null_rows.data();
        }
        cufm::PathConfig path;
        path.sigma_min = sigma_min;
        cufm::LossGrad r;
        {
          nb::gil_scoped_release release;
          r = cufm::loss_and_grad(model, b, path, run_options(device, precision, threads));
        }
        const size_t np = r.grad.size();
        return std::make_tuple(r.loss, to_numpy(std::move(r.grad), {np}));
      },
      "model"_a, "x1"_a, "t"_a, "eps"_a, "labels"_a = nb::none(), "sigma_min"_a = draws.path.sigma_min,
      "device"_a = cufm::to_string(run.device), "precision"_a = cufm::to_string(run.precision),
      "threads"_a = run.threads, "context"_a = nb::none(), "context_null"_a = nb::none(),
      "(loss, flat gradient) of the flow-matching MSE on the caller's batch and draws, updating nothing. "
      "context_null: a bool [N] mask of the rows that take the null context (as context dropout gives).");

  m.def(
      "prepare_flow",
      [](ConstFloats x1, Floats x_t, Floats t, std::optional<ConstLabels> labels,
         std::optional<Labels> labels_out, std::optional<Floats> eps, uint64_t seed, uint64_t step,
         int num_classes, float label_dropout, float sigma_min, const std::string& time_sampling,
         float logit_mean, float logit_std, float context_dropout,
         std::optional<nb::ndarray<uint8_t, nb::c_contig, nb::ndim<1>>> context_dropped) {
        const cufm::StepDraws d = step_draws(seed, step, num_classes, label_dropout, sigma_min, time_sampling,
                                             logit_mean, logit_std, context_dropout);
        require_cpu(x1, "prepare_flow: x1");
        require_cpu(x_t, "prepare_flow: x_t");
        require_cpu(t, "prepare_flow: t");
        if (x1.ndim() != 2) throw cufm::Error("prepare_flow: x1 must be a 2-D float32 array [B, D]");
        const int64_t B = static_cast<int64_t>(x1.shape(0));
        const int D = static_cast<int>(x1.shape(1));
        require_shape(x_t, {B, D}, "prepare_flow: x_t");
        require_shape(t, {B}, "prepare_flow: t");
        if (labels)
          require_cpu(*labels, "prepare_flow: labels"), require_shape(*labels, {B}, "prepare_flow: labels");
        if (labels_out) {
          require_cpu(*labels_out, "prepare_flow: labels_out");
          require_shape(*labels_out, {B}, "prepare_flow: labels_out");
        }
        if (eps) require_cpu(*eps, "prepare_flow: eps"), require_shape(*eps, {B, D}, "prepare_flow: eps");
        if (context_dropped) {
          require_cpu(*context_dropped, "prepare_flow: context_dropped");
          require_shape(*context_dropped, {B}, "prepare_flow: context_dropped");
        }
        nb::gil_scoped_release release;
        cufm::prepare_flow(d, B, D, x1.data(), labels ? labels->data() : nullptr, x_t.data(), t.data(),
                           labels_out ? labels_out->data() : nullptr, eps ? eps->data() : nullptr,
                           context_dropped ? context_dropped->data() : nullptr);
      },
      "x1"_a, "x_t"_a.noconvert(), "t"_a.noconvert(), "labels"_a = nb::none(),
      "labels_out"_a.noconvert() = nb::none(), "eps"_a.noconvert() = nb::none(), nb::kw_only(),
      "seed"_a = draws.seed, "step"_a = draws.step, "num_classes"_a = draws.num_classes,
      "label_dropout"_a = draws.label_dropout, "sigma_min"_a = draws.path.sigma_min,
      "time_sampling"_a = cufm::to_string(draws.path.time_sampling), "logit_mean"_a = draws.path.logit_mean,
      "logit_std"_a = draws.path.logit_std, "context_dropout"_a = draws.context_dropout,
      "context_dropped"_a.noconvert() = nb::none(),
      "Host arrays. Draws training step `step`'s t and eps for the caller's batch x1 [B, D] (row i is x1's "
      "row i) and writes x_t [B, D] and t [B] in place; a conditional batch (num_classes > 0) gives labels "
      "[B] (None: all null) and gets them after dropout in labels_out; eps [B, D], when given, gets the "
      "noise; context_dropped (uint8 [B]), when given, gets 1 for the rows whose context the step drops "
      "(context_dropout). The draws Trainer.step(x1) trains on.");

  m.def(
      "flow_mse",
      [](ConstFloats x1, ConstFloats v, std::optional<Floats> grad, uint64_t seed, uint64_t step,
         float sigma_min, const std::string& time_sampling, float logit_mean, float logit_std, int threads) {
        const cufm::StepDraws d =
            step_draws(seed, step, 0, 0.0f, sigma_min, time_sampling, logit_mean, logit_std);
        require_cpu(x1, "flow_mse: x1");
        require_cpu(v, "flow_mse: v");
        if (x1.ndim() != 2) throw cufm::Error("flow_mse: x1 must be a 2-D float32 array [B, D]");
        const int64_t B = static_cast<int64_t>(x1.shape(0));
        const int D = static_cast<int>(x1.shape(1));
        require_shape(v, {B, D}, "flow_mse: v");
        if (grad) require_cpu(*grad, "flow_mse: grad"), require_shape(*grad, {B, D}, "flow_mse: grad");
        nb::gil_scoped_release release;
        return cufm::flow_mse(d, B, D, x1.data(), v.data(), grad ? grad->data() : nullptr, threads);
      },
      "x1"_a, "v"_a, "grad"_a.noconvert() = nb::none(), nb::kw_only(), "seed"_a = draws.seed,
      "step"_a = draws.step, "sigma_min"_a = draws.path.sigma_min,
      "time_sampling"_a = cufm::to_string(draws.path.time_sampling), "logit_mean"_a = draws.path.logit_mean,
      "logit_std"_a = draws.path.logit_std, "threads"_a = run.threads,
      "Host arrays. The MSE of the model's output v [B, D] against step `step`'s target u = x1 - (1 - "
      "sigma_min) eps (eps drawn again, as prepare_flow drew it); writes dL/dv = 2 (v - u) / (B D) into grad "
      "when given. Returns the loss.");

  // couple's kind defaults to exact, not CouplingConfig's independent: a call asks for the pairs.
  const cufm::CouplingConfig coupling;
  m.def(
      "couple",
      [](FloatIn x1, FloatIn eps, std::optional<LabelsIn> groups, const std::string& kind, float reg,
         uint64_t seed, uint64_t step, int threads) {
        if (x1.ndim() != 2 || eps.ndim() != 2 || x1.shape(0) != eps.shape(0) || x1.shape(1) != eps.shape(1)) {
          throw cufm::Error("couple: x1 and eps must be 2-D arrays of the same shape [B, D]");
        }
        const int64_t B = static_cast<int64_t>(x1.shape(0));
        if (groups && static_cast<int64_t>(groups->shape(0)) != B) {
          throw cufm::Error("couple: groups must hold one int32 per row (" + std::to_string(B) + ")");
        }
        cufm::CouplingConfig c;
        c.kind = cufm::parse_coupling(kind);
        c.reg = reg;
        c.seed = seed;
        c.step = step;
        std::vector<uint32_t> noise_row;
        {
          nb::gil_scoped_release release;
          noise_row = cufm::couple(c, B, static_cast<int>(x1.shape(1)), x1.data(), eps.data(),
                                   groups ? groups->data() : nullptr, threads);
        }
        const size_t n = noise_row.size();
        return to_numpy(std::move(noise_row), {n});
      },
      "x1"_a, "eps"_a, "groups"_a = nb::none(), "kind"_a = cufm::to_string(cufm::Coupling::Exact),
      "reg"_a = coupling.reg, "seed"_a = coupling.seed, "step"_a = coupling.step, "threads"_a = run.threads,
      doc("Minibatch optimal-transport pairs: noise_row [B] (uint32) such that data row i of x1 [B, D] takes "
          "noise row noise_row[i] of eps [B, D], rows pairing only within equal groups [B] (int32; None: one "
          "group). kind: " +
          cufm::enum_help<cufm::Coupling>() +
          "; exact gives a permutation, sinkhorn draws from the entropic plan with reg, seeded by seed and "
          "step, and independent gives 0..B-1."));
}

}  // namespace cufm::python
