// cufm._cufm: the public C++ API (include/cufm/) for Python, through nanobind. Arrays come in as
// numpy float32 C-contiguous arrays (nanobind converts anything else once, or refuses it with a
// TypeError naming the expected type) and go out as numpy arrays that own their memory. The GIL
// is released while training, sampling and evaluating; a fit's progress callback takes it back.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cufm/cufm.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using FloatIn = nb::ndarray<const float, nb::numpy, nb::c_contig, nb::device::cpu>;
using LabelsIn = nb::ndarray<const int32_t, nb::numpy, nb::c_contig, nb::device::cpu, nb::ndim<1>>;
using FloatOut = nb::ndarray<nb::numpy, float>;

// A numpy array that owns `v`, shaped `shape`.
FloatOut to_numpy(std::vector<float> v, std::vector<size_t> shape) {
  auto* owned = new std::vector<float>(std::move(v));
  nb::capsule free_it(owned, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  return FloatOut(owned->data(), shape.size(), shape.data(), free_it);
}

// Rows of a [n, dim] array, checked against the model's dim.
int64_t rows_of(const FloatIn& a, int dim, const char* what) {
  if (a.ndim() != 2 || static_cast<int64_t>(a.shape(1)) != dim) {
    throw cufm::Error(std::string(what) + ": expected a float32 array of shape [N, " + std::to_string(dim) +
                      "], got " + std::to_string(a.ndim()) + " dimension(s)" +
                      (a.ndim() == 2 ? " with " + std::to_string(a.shape(1)) + " columns" : std::string()));
  }
  return static_cast<int64_t>(a.shape(0));
}

const int32_t* labels_of(const std::optional<LabelsIn>& labels, int64_t n, const char* what) {
  if (!labels) return nullptr;
  if (static_cast<int64_t>(labels->shape(0)) != n) {
    throw cufm::Error(std::string(what) + ": " + std::to_string(labels->shape(0)) + " labels for " +
                      std::to_string(n) + " rows");
  }
  return labels->data();
}

cufm::RunOptions run_options(const std::string& device, const std::string& precision, int threads) {
  cufm::RunOptions r;
  r.device = cufm::parse_device(device);
  r.precision = cufm::parse_precision(precision);
  r.threads = threads;
  return r;
}

cufm::Dataset dataset_from(const FloatIn& x, const std::optional<LabelsIn>& labels, int num_classes) {
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
  d.validate();
  return d;
}

nb::dict sample_dict(const cufm::SampleResult& r) {
  nb::dict d;
  d["x"] = to_numpy(r.x, {static_cast<size_t>(r.count), static_cast<size_t>(r.dim)});
  if (!r.times.empty()) {
    d["times"] = to_numpy(r.times, {r.times.size()});
    d["trajectory"] =
        to_numpy(r.trajectory, {r.times.size(), static_cast<size_t>(r.count), static_cast<size_t>(r.dim)});
  }
  d["evaluations"] = r.evaluations;
  d["accepted_steps"] = r.accepted_steps;
  d["rejected_steps"] = r.rejected_steps;
  d["device"] = std::string(cufm::to_string(r.device));
  return d;
}

cufm::SampleConfig sample_config(const cufm::Model& model, int64_t count, const std::string& solver,
                                 int steps, float atol, float rtol,
                                 const std::optional<std::vector<int32_t>>& labels,
                                 std::optional<float> guidance, uint64_t seed, float t0, float t1,
                                 bool keep_trajectory, const std::string& device,
                                 const std::string& precision, int threads) {
  cufm::SampleConfig c;
  c.count = count;
  c.solver = cufm::parse_solver(solver);
  c.steps = steps;
  c.atol = atol;
  c.rtol = rtol;
  if (labels) c.labels = *labels;
  c.guidance = guidance;
  c.seed = seed;
  c.t0 = t0;
  c.t1 = t1;
  c.keep_trajectory = keep_trajectory;
  c.device = cufm::parse_device(device);
  c.precision = cufm::parse_precision(precision);
  c.threads = threads;
  c.validate(model.config());
  return c;
}

}  // namespace

NB_MODULE(_cufm, m) {
  m.doc() = "cuFM: flow-matching training and sampling on the GPU or the CPU (the C++ API's bindings)";
  nb::exception<cufm::Error>(m, "Error", PyExc_ValueError);

  m.def("version", &cufm::version, "cuFM's version.");
  m.def("build_summary", &cufm::build_summary, "The build's backends and options.");
  m.def("cuda_built", &cufm::cuda_built, "True when this build has the CUDA backend.");

  nb::class_<cufm::MlpConfig>(m, "MlpConfig",
                              "The velocity model: an MLP over [x_t, time features, one-hot].")
      .def(
          "__init__",
          [](cufm::MlpConfig* c, int data_dim, std::vector<int> hidden, const std::string& activation,
             int time_features, int num_classes) {
            new (c) cufm::MlpConfig();
            c->data_dim = data_dim;
            c->hidden = std::move(hidden);
            c->activation = cufm::parse_activation(activation);
            c->time_features = time_features;
            c->num_classes = num_classes;
            c->validate();
          },
          "data_dim"_a = 2, "hidden"_a = std::vector<int>{512, 512, 512, 512}, "activation"_a = "silu",
          "time_features"_a = 0, "num_classes"_a = 0)
      .def_rw("data_dim", &cufm::MlpConfig::data_dim)
      .def_rw("hidden", &cufm::MlpConfig::hidden)
      .def_prop_rw(
          "activation", [](const cufm::MlpConfig& c) { return std::string(cufm::to_string(c.activation)); },
          [](cufm::MlpConfig& c, const std::string& a) { c.activation = cufm::parse_activation(a); })
      .def_rw("time_features", &cufm::MlpConfig::time_features)
      .def_rw("num_classes", &cufm::MlpConfig::num_classes)
      .def("input_dim", &cufm::MlpConfig::input_dim)
      .def("__eq__", [](const cufm::MlpConfig& a, const cufm::MlpConfig& b) { return a == b; })
      .def("__repr__", [](const cufm::MlpConfig& c) { return "MlpConfig(" + cufm::to_json(c) + ")"; });

  nb::class_<cufm::TrainConfig>(m, "TrainConfig", "The training recipe (what a checkpoint records).")
      .def(
          "__init__",
          [](cufm::TrainConfig* c, int batch_size, uint64_t seed, float lr, const std::string& optimizer,
             float weight_decay, float grad_clip, float ema_decay, float label_dropout, float sigma_min,
             const std::string& time_sampling, float logit_mean, float logit_std,
             const std::string& lr_schedule, uint64_t warmup_steps, uint64_t decay_steps, float min_lr) {
            new (c) cufm::TrainConfig();
            c->batch_size = batch_size;
            c->seed = seed;
            c->optim.lr = lr;
            if (optimizer != "adam" && optimizer != "adamw") {
              throw cufm::Error("optimizer must be 'adam' or 'adamw', got '" + optimizer + "'");
            }
            c->optim.kind = optimizer == "adamw" ? cufm::Optimizer::AdamW : cufm::Optimizer::Adam;
            c->optim.weight_decay = weight_decay;
            c->optim.grad_clip = grad_clip;
            c->optim.ema_decay = ema_decay;
            c->label_dropout = label_dropout;
            c->path.sigma_min = sigma_min;
            if (time_sampling != "uniform" && time_sampling != "logit-normal") {
              throw cufm::Error("time_sampling must be 'uniform' or 'logit-normal', got '" + time_sampling +
                                "'");
            }
            c->path.time_sampling = time_sampling == "logit-normal" ? cufm::TimeSampling::LogitNormal
                                                                    : cufm::TimeSampling::Uniform;
            c->path.logit_mean = logit_mean;
            c->path.logit_std = logit_std;
            c->optim.lr_schedule = cufm::parse_lr_schedule(lr_schedule);
            c->optim.warmup_steps = warmup_steps;
            c->optim.decay_steps = decay_steps;
            c->optim.min_lr = min_lr;
            c->validate();
          },
          "batch_size"_a = 4096, "seed"_a = 0, "lr"_a = 1e-3f, "optimizer"_a = "adam",
          "weight_decay"_a = 0.0f, "grad_clip"_a = 0.0f, "ema_decay"_a = 0.0f, "label_dropout"_a = 0.1f,
          "sigma_min"_a = 0.0f, "time_sampling"_a = "uniform", "logit_mean"_a = 0.0f, "logit_std"_a = 1.0f,
          "lr_schedule"_a = "constant", "warmup_steps"_a = 0, "decay_steps"_a = 0, "min_lr"_a = 0.0f)
      .def_rw("batch_size", &cufm::TrainConfig::batch_size)
      .def_rw("seed", &cufm::TrainConfig::seed)
      .def_rw("label_dropout", &cufm::TrainConfig::label_dropout)
      .def("__repr__", [](const cufm::TrainConfig& c) { return "TrainConfig(" + cufm::to_json(c) + ")"; });

  nb::class_<cufm::Dataset>(m, "Dataset", "Training data: N points of dimension D, optional labels.")
      .def(
          "__init__",
          [](cufm::Dataset* d, FloatIn x, std::optional<LabelsIn> labels, int num_classes) {
            new (d) cufm::Dataset(dataset_from(x, labels, num_classes));
          },
          "x"_a, "labels"_a = nb::none(), "num_classes"_a = 0, "A copy of x [N, D] (and labels [N]).")
      .def_ro("n", &cufm::Dataset::n)
      .def_ro("dim", &cufm::Dataset::dim)
      .def_ro("num_classes", &cufm::Dataset::num_classes)
      .def_prop_ro(
          "x",
          [](const cufm::Dataset& d) {
            return to_numpy(d.x, {static_cast<size_t>(d.n), static_cast<size_t>(d.dim)});
          },
          nb::rv_policy::move)
      .def_prop_ro(
          "labels",
          [](const cufm::Dataset& d) {
            std::vector<int32_t> l = d.labels;
            auto* owned = new std::vector<int32_t>(std::move(l));
            nb::capsule free_it(owned,
                                [](void* p) noexcept { delete static_cast<std::vector<int32_t>*>(p); });
            size_t shape[1] = {owned->size()};
            return nb::ndarray<nb::numpy, int32_t>(owned->data(), 1, shape, free_it);
          },
          nb::rv_policy::move);
  m.def("make_toy", &cufm::make_toy, "name"_a, "n"_a, "seed"_a = 0,
        "A 2-D toy dataset: checkerboard, 8gaussians, moons, spirals or rings (labelled by mode).");
  m.def("load_npy_dataset", &cufm::load_npy_dataset, "data_path"_a, "labels_path"_a = "",
        "num_classes"_a = 0);

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
          "config"_a, "params"_a)
      .def_prop_ro("config", [](const cufm::Model& md) { return md.config(); })
      .def_prop_ro(
          "params", [](const cufm::Model& md) { return to_numpy(md.params(), {md.params().size()}); },
          nb::rv_policy::move)
      .def(
          "forward",
          [](const cufm::Model& md, FloatIn x, FloatIn t, std::optional<LabelsIn> labels) {
            const int64_t n = rows_of(x, md.config().data_dim, "forward: x");
            if (t.ndim() != 1 || static_cast<int64_t>(t.shape(0)) != n) {
              throw cufm::Error("forward: t must be a float32 array of shape [N]");
            }
            std::vector<float> v(static_cast<size_t>(n) * md.config().data_dim);
            const int32_t* l = labels_of(labels, n, "forward");
            {
              nb::gil_scoped_release release;
              md.forward(x.data(), t.data(), l, n, v.data());
            }
            return to_numpy(std::move(v),
                            {static_cast<size_t>(n), static_cast<size_t>(md.config().data_dim)});
          },
          "x"_a, "t"_a, "labels"_a = nb::none(), "v(x, t, label) on the CPU for N rows (per-row times).");

  nb::class_<cufm::Trainer>(m, "Trainer", "Trains a model on a dataset (or on the caller's batches).")
      .def(
          "__init__",
          [](cufm::Trainer* t, const cufm::Model& model, const cufm::Dataset* data,
             const cufm::TrainConfig& config, const std::string& device, const std::string& precision,
             int threads) {
            const cufm::RunOptions run = run_options(device, precision, threads);
            if (data) {
              new (t) cufm::Trainer(model, *data, config, run);
            } else {
              new (t) cufm::Trainer(model, config, run);
            }
          },
          "model"_a, "data"_a = nb::none(), "config"_a = cufm::TrainConfig(), "device"_a = "auto",
          "precision"_a = "fp32", "threads"_a = 0)
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
          [](cufm::Trainer& t, std::optional<FloatIn> x1, std::optional<LabelsIn> labels) {
            if (!x1) {
              nb::gil_scoped_release release;
              return t.step();
            }
            cufm::DataBatch b;
            b.size = rows_of(*x1, t.model_config().data_dim, "step: x1");
            b.x1 = x1->data();
            b.labels = labels_of(labels, b.size, "step");
            nb::gil_scoped_release release;
            return t.step(b);
          },
          "x1"_a = nb::none(), "labels"_a = nb::none(),
          "One step on the trainer's data, or on the caller's batch x1 [batch_size, D]; returns the loss.")
      .def(
          "run",
          [](cufm::Trainer& t, uint64_t n) {
            nb::gil_scoped_release release;
            t.run(n);
          },
          "n"_a)
      .def("loss", &cufm::Trainer::loss, nb::call_guard<nb::gil_scoped_release>())
      .def_prop_ro("step_count", &cufm::Trainer::step_count)
      .def_prop_ro("device", [](const cufm::Trainer& t) { return std::string(cufm::to_string(t.device())); })
      .def("model", &cufm::Trainer::model, "The current weights.")
      .def("ema_model", &cufm::Trainer::ema_model, "The EMA weights (EMA must be on).")
      .def(
          "save",
          [](const cufm::Trainer& t, const std::string& path, const std::string& dataset) {
            cufm::save_checkpoint(path, {t.model_config(), t.config(), t.state(), dataset});
          },
          "path"_a, "dataset"_a = "", "Writes a safetensors checkpoint (to a temporary name, then renamed).");

  m.def(
      "sample",
      [](const cufm::Model& model, int64_t count, const std::string& solver, int steps, float atol,
         float rtol, std::optional<std::vector<int32_t>> labels, std::optional<float> guidance, uint64_t seed,
         float t0, float t1, bool keep_trajectory, const std::string& device, const std::string& precision,
         int threads) {
        const cufm::SampleConfig c = sample_config(model, count, solver, steps, atol, rtol, labels, guidance,
                                                   seed, t0, t1, keep_trajectory, device, precision, threads);
        cufm::SampleResult r;
        {
          nb::gil_scoped_release release;
          r = cufm::sample(model, c);
        }
        return sample_dict(r);
      },
      "model"_a, "count"_a = 1000, "solver"_a = "midpoint", "steps"_a = 20, "atol"_a = 1e-5f,
      "rtol"_a = 1e-5f, "labels"_a = nb::none(), "guidance"_a = nb::none(), "seed"_a = 0, "t0"_a = 0.0f,
      "t1"_a = 1.0f, "keep_trajectory"_a = false, "device"_a = "auto", "precision"_a = "fp32",
      "threads"_a = 0,
      "Integrates from the seed's noise; returns {'x', 'evaluations', ...} (with a trajectory: 'times', "
      "'trajectory').");
  m.def(
      "integrate",
      [](const cufm::Model& model, FloatIn x0, const std::string& solver, int steps, float atol, float rtol,
         std::optional<std::vector<int32_t>> labels, std::optional<float> guidance, float t0, float t1,
         bool keep_trajectory, const std::string& device, const std::string& precision, int threads) {
        const int64_t n = rows_of(x0, model.config().data_dim, "integrate: x0");
        const cufm::SampleConfig c = sample_config(model, n, solver, steps, atol, rtol, labels, guidance, 0,
                                                   t0, t1, keep_trajectory, device, precision, threads);
        const std::vector<float> start(x0.data(), x0.data() + n * model.config().data_dim);
        cufm::SampleResult r;
        {
          nb::gil_scoped_release release;
          r = cufm::integrate(model, start, c);
        }
        return sample_dict(r);
      },
      "model"_a, "x0"_a, "solver"_a = "midpoint", "steps"_a = 20, "atol"_a = 1e-5f, "rtol"_a = 1e-5f,
      "labels"_a = nb::none(), "guidance"_a = nb::none(), "t0"_a = 0.0f, "t1"_a = 1.0f,
      "keep_trajectory"_a = false, "device"_a = "auto", "precision"_a = "fp32", "threads"_a = 0,
      "Integrates the model's field from the caller's points x0 [N, D] over [t0, t1] (t1 < t0: backwards).");

  nb::class_<cufm::VelocityField>(m, "VelocityField", "v(x, t, class) on a batch, guided or not.")
      .def(
          "__init__",
          [](cufm::VelocityField* f, const cufm::Model& model, std::optional<float> guidance,
             const std::string& device, const std::string& precision, int threads) {
            cufm::FieldOptions o;
            o.guidance = guidance;
            o.device = cufm::parse_device(device);
            o.precision = cufm::parse_precision(precision);
            o.threads = threads;
            new (f) cufm::VelocityField(model, o);
          },
          "model"_a, "guidance"_a = nb::none(), "device"_a = "auto", "precision"_a = "fp32", "threads"_a = 0)
      .def(
          "__call__",
          [](cufm::VelocityField& f, float t, FloatIn x, std::optional<LabelsIn> labels) {
            const int dim = f.config().data_dim;
            const int64_t n = rows_of(x, dim, "VelocityField: x");
            std::vector<float> v(static_cast<size_t>(n) * dim);
            const int32_t* l = labels_of(labels, n, "VelocityField");
            {
              nb::gil_scoped_release release;
              f.evaluate(t, x.data(), l, n, v.data());
            }
            return to_numpy(std::move(v), {static_cast<size_t>(n), static_cast<size_t>(dim)});
          },
          "t"_a, "x"_a, "labels"_a = nb::none())
      .def_prop_ro("device",
                   [](const cufm::VelocityField& f) { return std::string(cufm::to_string(f.device())); })
      .def("set_weights", &cufm::VelocityField::set_weights, "model"_a);

  m.def(
      "loss_and_grad",
      [](const cufm::Model& model, FloatIn x1, FloatIn t, FloatIn eps, std::optional<LabelsIn> labels,
         float sigma_min, const std::string& device, const std::string& precision, int threads) {
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
      "model"_a, "x1"_a, "t"_a, "eps"_a, "labels"_a = nb::none(), "sigma_min"_a = 0.0f, "device"_a = "auto",
      "precision"_a = "fp32", "threads"_a = 0,
      "(loss, flat gradient) of the flow-matching MSE on the caller's batch and draws, updating nothing.");

  m.def(
      "load_checkpoint",
      [](const std::string& path, bool ema) {
        const cufm::Checkpoint c = cufm::load_checkpoint(path);
        return std::make_tuple(c.to_model(ema ? cufm::Weights::Ema : cufm::Weights::Trained), c.train,
                               c.state.step);
      },
      "path"_a, "ema"_a = false, "(model, train config, step) from a safetensors checkpoint.");

  m.def(
      "sliced_wasserstein2",
      [](FloatIn a, FloatIn b, int projections, uint64_t seed) {
        if (a.ndim() != 2 || b.ndim() != 2 || a.shape(1) != b.shape(1)) {
          throw cufm::Error("sliced_wasserstein2: two 2-D arrays of the same dimension");
        }
        nb::gil_scoped_release release;
        return cufm::sliced_wasserstein2(a.data(), static_cast<int64_t>(a.shape(0)), b.data(),
                                         static_cast<int64_t>(b.shape(0)), static_cast<int>(a.shape(1)),
                                         projections, seed);
      },
      "a"_a, "b"_a, "projections"_a = 256, "seed"_a = 0);
  m.def(
      "energy_distance",
      [](FloatIn a, FloatIn b, int64_t max_points, uint64_t seed) {
        if (a.ndim() != 2 || b.ndim() != 2 || a.shape(1) != b.shape(1)) {
          throw cufm::Error("energy_distance: two 2-D arrays of the same dimension");
        }
        nb::gil_scoped_release release;
        return cufm::energy_distance(a.data(), static_cast<int64_t>(a.shape(0)), b.data(),
                                     static_cast<int64_t>(b.shape(0)), static_cast<int>(a.shape(1)),
                                     max_points, seed);
      },
      "a"_a, "b"_a, "max_points"_a = 4000, "seed"_a = 0);
}
