// Training: the data (Dataset, the toy sets, .npy files), the Model, the Trainer and the
// checkpoints it writes and load_checkpoint reads.
#include <algorithm>

#include "bind.hpp"

namespace cufm::python {

namespace {

cufm::Dataset dataset_from(const FloatIn& x, const std::optional<LabelsIn>& labels, int num_classes,
                           const std::optional<FloatIn>& context) {
  if (x.ndim() != 2) throw cufm::Error("Dataset: x must be a 2-D float32 array [N, D]");
  cufm::Dataset d;
  d.name = "array";
  d.n = static_cast<int64_t>(x.shape(0));
  d.dim = static_cast<int>(x.shape(1));
  d.x.assign(x.data(), x.data() + d.n * d.dim);
  if (labels) {
    const int32_t* l = labels_of(labels, d.n, "Dataset");
    d.labels.assign(l, l + d.n);
    int most = -1;
    for (int32_t v : d.labels) most = std::max<int>(most, v);
    d.num_classes = num_classes > 0 ? num_classes : most + 1;
  }
  if (context) {
    if (context->ndim() != 2 || static_cast<int64_t>(context->shape(0)) != d.n) {
      throw cufm::Error("Dataset: context must be a 2-D float32 array [N, K] with x's N = " +
                        std::to_string(d.n) + " rows");
    }
    d.context_dim = static_cast<int>(context->shape(1));
    d.context.assign(context->data(), context->data() + context->size());
  }
  d.validate();
  return d;
}

void bind_data(nb::module_& m) {
  nb::class_<cufm::Dataset>(m, "Dataset", "Training data: N points of dimension D, optional labels.")
      .def(
          "__init__",
          [](cufm::Dataset* d, FloatIn x, std::optional<LabelsIn> labels, int num_classes,
             std::optional<FloatIn> context) {
            new (d) cufm::Dataset(dataset_from(x, labels, num_classes, context));
          },
          "x"_a, "labels"_a = nb::none(), "num_classes"_a = 0, "context"_a = nb::none(),
          "A copy of x [N, D] (and labels [N], and each point's context [N, K]).")
      .def_ro("context_dim", &cufm::Dataset::context_dim, "K, the width of each point's context (0: none).")
      .def_prop_ro(
          "context",
          [](const cufm::Dataset& d) {
            return to_numpy(d.context, {static_cast<size_t>(d.context_dim > 0 ? d.n : 0),
                                        static_cast<size_t>(d.context_dim)});
          },
          nb::rv_policy::move, "A copy of the contexts [n, context_dim] (empty without).")
      .def_ro("n", &cufm::Dataset::n, "Points.")
      .def_ro("dim", &cufm::Dataset::dim, "Dimension of a point.")
      .def_ro("num_classes", &cufm::Dataset::num_classes, "Classes of the labels (0: unlabelled).")
      .def_prop_ro(
          "x",
          [](const cufm::Dataset& d) {
            return to_numpy(d.x, {static_cast<size_t>(d.n), static_cast<size_t>(d.dim)});
          },
          nb::rv_policy::move, "A copy of the points [n, dim].")
      .def_prop_ro(
          "labels", [](const cufm::Dataset& d) { return to_numpy(d.labels, {d.labels.size()}); },
          nb::rv_policy::move, "A copy of the labels [n] (empty when unlabelled).");
  m.def("make_toy", &cufm::make_toy, "name"_a, "n"_a, "seed"_a = 0,
        "A 2-D toy dataset: checkerboard, 8gaussians, moons, spirals or rings (labelled by mode).");
  m.def(
      "load_npy_dataset", &cufm::load_npy_dataset, "data_path"_a, "labels_path"_a = "", "num_classes"_a = 0,
      "context_path"_a = "",
      "A Dataset from a float32/float64 .npy [N, D] (and an integer .npy of labels [N], and a float .npy of "
      "contexts [N, K]); checked before anything is allocated.");
}

void bind_model(nb::module_& m) {
  nb::class_<cufm::Model>(m, "Model", "An MLP and its flat float32 parameters (nn.Linear's layout).")
      .def(nb::init<const cufm::MlpConfig&, uint64_t>(), "config"_a, "seed"_a = 0,
           "PyTorch's nn.Linear initialisation, drawn from the seed.")
      .def(
          "__init__",
          [](cufm::Model* model, const cufm::MlpConfig& config, FloatIn params) {
            if (params.ndim() != 1) throw cufm::Error("Model: params must be a 1-D float32 array");
            new (model)
                cufm::Model(config, std::vector<float>(params.data(), params.data() + params.shape(0)));
          },
          "config"_a, "params"_a, "Wraps a copy of flat parameters (the layout's size, W_0, b_0, W_1, ...).")
      .def_prop_ro(
          "config", [](const cufm::Model& md) { return md.config(); }, "The MLP's configuration.")
      .def_prop_ro(
          "params", [](const cufm::Model& md) { return to_numpy(md.params(), {md.params().size()}); },
          nb::rv_policy::move, "A copy of the flat parameters (nn.Linear's layout, layer after layer).")
      .def(
          "forward",
          [](const cufm::Model& md, FloatIn x, FloatIn t, std::optional<LabelsIn> labels,
             std::optional<FloatIn> context) {
            const int64_t n = rows_of(x, md.config().data_dim, "forward: x");
            if (t.ndim() != 1 || static_cast<int64_t>(t.shape(0)) != n) {
              throw cufm::Error("forward: t must be a float32 array of shape [N]");
            }
            std::vector<float> v(static_cast<size_t>(n) * md.config().data_dim);
            const int32_t* l = labels_of(labels, n, "forward");
            const float* c = context_rows(context, n, md.config().context_dim, "forward");
            {
              nb::gil_scoped_release release;
              md.forward(x.data(), t.data(), l, c, n, v.data());
            }
            return to_numpy(std::move(v),
                            {static_cast<size_t>(n), static_cast<size_t>(md.config().data_dim)});
          },
          "x"_a, "t"_a, "labels"_a = nb::none(), "context"_a = nb::none(),
          "v(x, t, label, context) on the CPU for N rows (per-row times; context [N, K], None: the null "
          "one).");
}

void bind_trainer(nb::module_& m) {
  const cufm::RunOptions run;
  nb::class_<cufm::Trainer>(m, "Trainer", "Trains a model on a dataset (or on the caller's batches).")
      .def(
          "__init__",
          [](cufm::Trainer* t, const cufm::Model& model, const cufm::Dataset* data,
             const cufm::TrainConfig& config, const std::string& device, const std::string& precision,
             int threads) {
            const cufm::RunOptions r = run_options(device, precision, threads);
            if (data) {
              new (t) cufm::Trainer(model, *data, config, r);
            } else {
              new (t) cufm::Trainer(model, config, r);
            }
          },
          "model"_a, "data"_a = nb::none(), "config"_a = cufm::TrainConfig(),
          "device"_a = cufm::to_string(run.device), "precision"_a = cufm::to_string(run.precision),
          "threads"_a = run.threads,
          doc("A trainer from the model's weights, on a Dataset (or none: then step(x1) only). device " +
              cufm::enum_help<cufm::Device>() + "; precision " + cufm::enum_help<cufm::Precision>() +
              "; bf16 on the CPU needs cpu_bf16_unavailable_reason() to be empty; threads: CPU threads (0: "
              "all cores)."))
      .def(
          "fit",
          [](cufm::Trainer& t, uint64_t steps, nb::object callback, uint64_t every) {
            std::function<void(const cufm::FitProgress&)> cb;
            if (!callback.is_none()) {
              cb = [callback](const cufm::FitProgress& p) {
                nb::gil_scoped_acquire acquire;
                callback(p.step, p.total, p.loss, p.seconds);
                if (PyErr_CheckSignals() != 0) throw nb::python_error();  // Ctrl-C between chunks
              };
            } else {
              cb = [](const cufm::FitProgress&) {
                nb::gil_scoped_acquire acquire;
                if (PyErr_CheckSignals() != 0) throw nb::python_error();
              };
            }
            nb::gil_scoped_release release;
            t.fit(steps, cb, every);
          },
          "steps"_a, "callback"_a = nb::none(), "every"_a = 100,
          "Runs `steps` more steps; callback(step, total, loss, seconds) every `every` steps. Ctrl-C stops "
          "between chunks with the state intact.")
      .def(
          "step",
          [](cufm::Trainer& t, std::optional<FloatIn> x1, std::optional<LabelsIn> labels,
             std::optional<FloatIn> context) {
            if (!x1) {
              nb::gil_scoped_release release;
              return t.step();
            }
            cufm::DataBatch b;
            b.size = rows_of(*x1, t.model_config().data_dim, "step: x1");
            b.x1 = x1->data();
            b.labels = labels_of(labels, b.size, "step");
            b.context = context_rows(context, b.size, t.model_config().context_dim, "step");
            nb::gil_scoped_release release;
            return t.step(b);
          },
          "x1"_a = nb::none(), "labels"_a = nb::none(), "context"_a = nb::none(),
          "One step on the trainer's data, or on the caller's batch x1 [batch_size, D]; returns the loss.")
      .def(
          "run",
          [](cufm::Trainer& t, uint64_t n) {
            nb::gil_scoped_release release;
            t.run(n);
          },
          "n"_a,
          "Runs n more steps on the trainer's data, without a callback (the GPU: queued, not waited for).")
      .def("loss", &cufm::Trainer::loss, nb::call_guard<nb::gil_scoped_release>(),
           "The last step's loss (waits for the GPU).")
      .def_prop_ro("step_count", &cufm::Trainer::step_count, "Steps done so far.")
      .def_prop_ro(
          "device", [](const cufm::Trainer& t) { return std::string(cufm::to_string(t.device())); },
          "'cpu' or 'cuda'.")
      .def_prop_ro(
          "mlp", &cufm::Trainer::mlp,
          "How the step runs the model: 'cpu', 'cpu fused', 'cuda fused' (one kernel for the forward, "
          "the loss and the backward; models up to 128 wide) or 'cuda layered'.")
      .def("model", &cufm::Trainer::model, "The current weights.")
      .def("ema_model", &cufm::Trainer::ema_model, "The EMA weights (EMA must be on).")
      .def(
          "save",
          [](const cufm::Trainer& t, const std::string& path, const std::string& dataset) {
            cufm::save_checkpoint(path, {t.model_config(), t.config(), t.state(), dataset});
          },
          "path"_a, "dataset"_a = "", "Writes a safetensors checkpoint (to a temporary name, then renamed).");

  m.def(
      "load_checkpoint",
      [](const std::string& path, bool ema) {
        const cufm::Checkpoint c = cufm::load_checkpoint(path);
        return std::make_tuple(c.to_model(ema ? cufm::Weights::Ema : cufm::Weights::Trained), c.train,
                               c.state.step);
      },
      "path"_a, "ema"_a = false, "(model, train config, step) from a safetensors checkpoint.");
}

}  // namespace

void bind_training(nb::module_& m) {
  bind_data(m);
  bind_model(m);
  bind_trainer(m);
}

}  // namespace cufm::python
