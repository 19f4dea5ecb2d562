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
#if defined(CUFM_WITH_CUDA)
#include <cuda_runtime.h>

#include "cufm/kernels.hpp"
#endif

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using FloatIn = nb::ndarray<const float, nb::numpy, nb::c_contig, nb::device::cpu>;
using LabelsIn = nb::ndarray<const int32_t, nb::numpy, nb::c_contig, nb::device::cpu, nb::ndim<1>>;
using FloatOut = nb::ndarray<nb::numpy, float>;
// Any framework's array (numpy, or a PyTorch tensor through DLPack) on the CPU or a CUDA device:
// the kernels' entry points take these and write their outputs in place.
using Floats = nb::ndarray<float, nb::c_contig>;
using ConstFloats = nb::ndarray<const float, nb::c_contig>;
using ConstLabels = nb::ndarray<const int32_t, nb::c_contig, nb::ndim<1>>;
using Labels = nb::ndarray<int32_t, nb::c_contig, nb::ndim<1>>;

template <typename A>
bool on_cuda(const A& a) {
  return a.device_type() == nb::device::cuda::value;
}

template <typename A>
void require_cpu(const A& a, const char* what) {
  if (a.device_type() != nb::device::cpu::value) {
    throw cufm::Error(std::string(what) + ": expected an array in host memory (the CPU)");
  }
}

// Every array a call gets must live where the first does; returns whether that is a CUDA device.
template <typename A>
void require_same_device(const A& a, bool cuda, int device_id, const char* what) {
  if (on_cuda(a) != cuda || (cuda && a.device_id() != device_id)) {
    throw cufm::Error(std::string(what) + ": on another device than x1 (every array of the call must be on " +
                      (cuda ? "cuda:" + std::to_string(device_id) : std::string("the CPU")) + ")");
  }
}

void require_shape(size_t ndim, const size_t* shape, std::vector<int64_t> want, const char* what) {
  bool ok = ndim == want.size();
  for (size_t k = 0; ok && k < ndim; ++k) ok = static_cast<int64_t>(shape[k]) == want[k];
  if (!ok) {
    std::string w, g;
    for (int64_t v : want) w += (w.empty() ? "" : ", ") + std::to_string(v);
    for (size_t k = 0; k < ndim; ++k) g += (g.empty() ? "" : ", ") + std::to_string(shape[k]);
    throw cufm::Error(std::string(what) + ": expected shape [" + w + "], got [" + g + "]");
  }
}
template <typename A>
void require_shape(const A& a, std::vector<int64_t> want, const char* what) {
  std::vector<size_t> shape(a.ndim());
  for (size_t k = 0; k < a.ndim(); ++k) shape[k] = a.shape(k);
  require_shape(a.ndim(), shape.data(), std::move(want), what);
}

cufm::TimeSampling parse_time_sampling(const std::string& s) {
  if (s == "uniform") return cufm::TimeSampling::Uniform;
  if (s == "logit-normal") return cufm::TimeSampling::LogitNormal;
  throw cufm::Error("time_sampling must be 'uniform' or 'logit-normal', got '" + s + "'");
}

cufm::StepDraws step_draws(uint64_t seed, uint64_t step, int num_classes, float label_dropout,
                           float sigma_min, const std::string& time_sampling, float logit_mean,
                           float logit_std, float context_dropout = 0.0f) {
  cufm::StepDraws d;
  d.seed = seed;
  d.step = step;
  d.num_classes = num_classes;
  d.label_dropout = label_dropout;
  d.context_dropout = context_dropout;
  d.path.sigma_min = sigma_min;
  d.path.time_sampling = parse_time_sampling(time_sampling);
  d.path.logit_mean = logit_mean;
  d.path.logit_std = logit_std;
  return d;
}

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

// A context argument as flat floats: [K] (one row) or [N, K]; the library checks the sizes.
std::vector<float> context_arg(const std::optional<FloatIn>& c, const char* who) {
  if (!c) return {};
  if (c->ndim() != 1 && c->ndim() != 2) {
    throw cufm::Error(std::string(who) + ": context must be a float32 array [K] or [N, K]");
  }
  return std::vector<float>(c->data(), c->data() + c->size());
}

// A per-row context [n, K] for a model with a context of K (nullptr for None).
const float* context_rows(const std::optional<FloatIn>& c, int64_t n, int K, const char* who) {
  if (!c) return nullptr;
  if (K == 0)
    throw cufm::Error(std::string(who) + ": a context given, but the model has none (context_dim = 0)");
  if (c->ndim() != 2 || static_cast<int64_t>(c->shape(0)) != n || static_cast<int>(c->shape(1)) != K) {
    throw cufm::Error(std::string(who) + ": context must be a float32 array of shape [" + std::to_string(n) +
                      ", " + std::to_string(K) + "]");
  }
  return c->data();
}

cufm::RunOptions run_options(const std::string& device, const std::string& precision, int threads) {
  cufm::RunOptions r;
  r.device = cufm::parse_device(device);
  r.precision = cufm::parse_precision(precision);
  r.threads = threads;
  return r;
}

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
  if (!r.log_prob.empty()) d["log_prob"] = to_numpy(r.log_prob, {r.log_prob.size()});
  return d;
}

cufm::SampleConfig sample_config(const cufm::Model& model, int64_t count, const std::string& solver,
                                 int steps, float atol, float rtol,
                                 const std::optional<std::vector<int32_t>>& labels,
                                 const std::optional<FloatIn>& context, std::optional<float> guidance,
                                 uint64_t seed, float t0, float t1, bool keep_trajectory,
                                 const std::string& device, const std::string& precision, int threads,
                                 bool with_log_prob, const std::string& divergence, int probes) {
  cufm::SampleConfig c;
  c.count = count;
  c.solver = cufm::parse_solver(solver);
  c.steps = steps;
  c.atol = atol;
  c.rtol = rtol;
  if (labels) c.labels = *labels;
  c.context = context_arg(context, "sample");
  c.guidance = guidance;
  c.seed = seed;
  c.t0 = t0;
  c.t1 = t1;
  c.keep_trajectory = keep_trajectory;
  c.device = cufm::parse_device(device);
  c.precision = cufm::parse_precision(precision);
  c.threads = threads;
  c.with_log_prob = with_log_prob;
  c.divergence = cufm::parse_divergence(divergence);
  c.probes = probes;
  c.validate(model.config());
  return c;
}

nb::dict run_sample(cufm::Sampler& sampler, const cufm::Model& model, int64_t count,
                    const std::string& solver, int steps, float atol, float rtol,
                    const std::optional<std::vector<int32_t>>& labels, const std::optional<FloatIn>& context,
                    std::optional<float> guidance, uint64_t seed, float t0, float t1, bool keep_trajectory,
                    const std::string& device, const std::string& precision, int threads, bool with_log_prob,
                    const std::string& divergence, int probes) {
  const cufm::SampleConfig c =
      sample_config(model, count, solver, steps, atol, rtol, labels, context, guidance, seed, t0, t1,
                    keep_trajectory, device, precision, threads, with_log_prob, divergence, probes);
  cufm::SampleResult r;
  {
    nb::gil_scoped_release release;
    r = sampler.sample(model, c);
  }
  return sample_dict(r);
}

nb::dict run_integrate(cufm::Sampler& sampler, const cufm::Model& model, const FloatIn& x0,
                       const std::string& solver, int steps, float atol, float rtol,
                       const std::optional<std::vector<int32_t>>& labels,
                       const std::optional<FloatIn>& context, std::optional<float> guidance, float t0,
                       float t1, bool keep_trajectory, const std::string& device,
                       const std::string& precision, int threads, bool with_log_prob,
                       const std::string& divergence, int probes) {
  const int64_t n = rows_of(x0, model.config().data_dim, "integrate: x0");
  const cufm::SampleConfig c =
      sample_config(model, n, solver, steps, atol, rtol, labels, context, guidance, 0, t0, t1,
                    keep_trajectory, device, precision, threads, with_log_prob, divergence, probes);
  const std::vector<float> start(x0.data(), x0.data() + n * model.config().data_dim);
  cufm::SampleResult r;
  {
    nb::gil_scoped_release release;
    r = sampler.integrate(model, start, c);
  }
  return sample_dict(r);
}

#if defined(CUFM_WITH_CUDA)
// The kernels' batch for the caller's rows in order (x1 is the batch), with the draws' settings.
cufm::kernels::FmBatch in_order_batch(const ConstFloats& x1,
                                      const nb::ndarray<const int64_t, nb::c_contig>& step,
                                      const cufm::StepDraws& d, const int32_t* labels) {
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

}  // namespace

NB_MODULE(_cufm, m) {
  m.doc() = "cuFM: flow-matching training and sampling on the GPU or the CPU (the C++ API's bindings)";
  nb::exception<cufm::Error>(m, "Error", PyExc_ValueError);

  m.def("version", &cufm::version, "cuFM's version.");
  m.def("build_summary", &cufm::build_summary, "The build's backends and options.");
  m.def("cuda_built", &cufm::cuda_built, "True when this build has the CUDA backend.");
  m.def("cpu_bf16_unavailable_reason", &cufm::cpu_bf16_unavailable_reason,
        "Empty when precision='bf16' runs on the CPU backend here, else why not.");
  m.def("cpu_thread_wait_policy", &cufm::cpu_thread_wait_policy,
        "How the CPU backend's threads wait, as the environment set it (e.g. 'GOMP_SPINCOUNT=1000').");

  nb::class_<cufm::MlpConfig>(m, "MlpConfig",
                              "The velocity model: an MLP over [x_t, time features, context, one-hot].")
      .def(
          "__init__",
          [](cufm::MlpConfig* c, int data_dim, std::vector<int> hidden, const std::string& activation,
             int time_features, int num_classes, int context_dim) {
            new (c) cufm::MlpConfig();
            c->data_dim = data_dim;
            c->hidden = std::move(hidden);
            c->activation = cufm::parse_activation(activation);
            c->time_features = time_features;
            c->num_classes = num_classes;
            c->context_dim = context_dim;
            c->validate();
          },
          "data_dim"_a = 2, "hidden"_a = std::vector<int>{512, 512, 512, 512}, "activation"_a = "silu",
          "time_features"_a = 0, "num_classes"_a = 0, "context_dim"_a = 0,
          "The C++ defaults; activation 'silu', 'relu' or 'gelu' (tanh approximation). Raises cufm.Error "
          "naming "
          "a bad field.")
      .def_rw("data_dim", &cufm::MlpConfig::data_dim, "D, the dimension of a data point.")
      .def_rw("hidden", &cufm::MlpConfig::hidden, "The hidden layers' widths.")
      .def_prop_rw(
          "activation", [](const cufm::MlpConfig& c) { return std::string(cufm::to_string(c.activation)); },
          [](cufm::MlpConfig& c, const std::string& a) { c.activation = cufm::parse_activation(a); })
      .def_rw("time_features", &cufm::MlpConfig::time_features, "0: raw t; K > 0 (even): K sinusoids of t.")
      .def_rw("num_classes", &cufm::MlpConfig::num_classes,
              "0: unconditional; else the classes (plus a null one).")
      .def_rw("context_dim", &cufm::MlpConfig::context_dim,
              "K > 0: conditioned on a context vector of K floats (the input gets K values and a null "
              "indicator).")
      .def("input_dim", &cufm::MlpConfig::input_dim,
           "The first layer's width: D + time features + (context_dim + 1 with a context) + (num_classes + 1 "
           "when conditional).")
      .def(
          "__eq__", [](const cufm::MlpConfig& a, const cufm::MlpConfig& b) { return a == b; },
          "Equal in every field.")
      .def("__repr__", [](const cufm::MlpConfig& c) { return "MlpConfig(" + cufm::to_json(c) + ")"; });

  nb::class_<cufm::TrainConfig>(m, "TrainConfig", "The training recipe (what a checkpoint records).")
      .def(
          "__init__",
          [](cufm::TrainConfig* c, int batch_size, uint64_t seed, float lr, const std::string& optimizer,
             float weight_decay, float grad_clip, float ema_decay, float label_dropout, float sigma_min,
             const std::string& time_sampling, float logit_mean, float logit_std,
             const std::string& lr_schedule, uint64_t warmup_steps, uint64_t decay_steps, float min_lr,
             float context_dropout, const std::string& coupling, float ot_reg) {
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
            c->context_dropout = context_dropout;
            c->coupling = cufm::parse_coupling(coupling);
            c->ot_reg = ot_reg;
            c->path.sigma_min = sigma_min;
            c->path.time_sampling = parse_time_sampling(time_sampling);
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
          "lr_schedule"_a = "constant", "warmup_steps"_a = 0, "decay_steps"_a = 0, "min_lr"_a = 0.0f,
          "context_dropout"_a = 0.0f, "coupling"_a = "independent", "ot_reg"_a = 0.05f,
          "The C++ defaults. optimizer 'adam' or 'adamw'; time_sampling 'uniform' or 'logit-normal'; "
          "coupling 'independent', 'exact' (minibatch optimal transport) or 'sinkhorn' (with ot_reg); "
          "lr_schedule 'constant', 'cosine' or 'linear' (a warm-up over warmup_steps, a decay to min_lr over "
          "decay_steps). Raises cufm.Error naming a bad field.")
      .def_rw("batch_size", &cufm::TrainConfig::batch_size, "Rows per training step.")
      .def_rw("seed", &cufm::TrainConfig::seed, "The Philox key of every draw of the run.")
      .def_rw("label_dropout", &cufm::TrainConfig::label_dropout,
              "Per-row probability of the null class (conditional models).")
      .def_rw("context_dropout", &cufm::TrainConfig::context_dropout,
              "Per-row probability of the null context (models with a context; > 0 for guidance).")
      .def_prop_rw(
          "coupling", [](const cufm::TrainConfig& c) { return std::string(cufm::to_string(c.coupling)); },
          [](cufm::TrainConfig& c, const std::string& s) { c.coupling = cufm::parse_coupling(s); },
          "The noise-data pairing: 'independent', 'exact' or 'sinkhorn'.")
      .def_rw("ot_reg", &cufm::TrainConfig::ot_reg,
              "Sinkhorn's regularisation, relative to the mean pair cost.")
      .def("__repr__", [](const cufm::TrainConfig& c) { return "TrainConfig(" + cufm::to_json(c) + ")"; });

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
          "labels",
          [](const cufm::Dataset& d) {
            std::vector<int32_t> l = d.labels;
            auto* owned = new std::vector<int32_t>(std::move(l));
            nb::capsule free_it(owned,
                                [](void* p) noexcept { delete static_cast<std::vector<int32_t>*>(p); });
            size_t shape[1] = {owned->size()};
            return nb::ndarray<nb::numpy, int32_t>(owned->data(), 1, shape, free_it);
          },
          nb::rv_policy::move, "A copy of the labels [n] (empty when unlabelled).");
  m.def("make_toy", &cufm::make_toy, "name"_a, "n"_a, "seed"_a = 0,
        "A 2-D toy dataset: checkerboard, 8gaussians, moons, spirals or rings (labelled by mode).");
  m.def(
      "load_npy_dataset", &cufm::load_npy_dataset, "data_path"_a, "labels_path"_a = "", "num_classes"_a = 0,
      "context_path"_a = "",
      "A Dataset from a float32/float64 .npy [N, D] (and an integer .npy of labels [N], and a float .npy of "
      "contexts [N, K]); checked before anything is allocated.");

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
          "precision"_a = "fp32", "threads"_a = 0,
          "A trainer from the model's weights, on a Dataset (or none: then step(x1) only). device 'auto' "
          "(the "
          "GPU when present), 'cuda' or 'cpu'; precision 'fp32', 'tf32' (GPU) or 'bf16' (GPU, or a CPU for which cpu_bf16_unavailable_reason() is empty); "
          "threads: "
          "CPU threads (0: all cores).")
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
         float rtol, std::optional<std::vector<int32_t>> labels, std::optional<FloatIn> context,
         std::optional<float> guidance, uint64_t seed, float t0, float t1, bool keep_trajectory,
         const std::string& device, const std::string& precision, int threads, bool with_log_prob,
         const std::string& divergence, int probes) {
        cufm::Sampler sampler;
        return run_sample(sampler, model, count, solver, steps, atol, rtol, labels, context, guidance, seed,
                          t0, t1, keep_trajectory, device, precision, threads, with_log_prob, divergence,
                          probes);
      },
      "model"_a, "count"_a = 1000, "solver"_a = "midpoint", "steps"_a = 20, "atol"_a = 1e-5f,
      "rtol"_a = 1e-5f, "labels"_a = nb::none(), "context"_a = nb::none(), "guidance"_a = nb::none(),
      "seed"_a = 0, "t0"_a = 0.0f, "t1"_a = 1.0f, "keep_trajectory"_a = false, "device"_a = "auto",
      "precision"_a = "fp32", "threads"_a = 0, "with_log_prob"_a = false, "divergence"_a = "auto",
      "probes"_a = 1,
      "Integrates from the seed's noise; returns {'x', 'evaluations', ...} (with a trajectory: 'times', "
      "'trajectory'; with_log_prob: 'log_prob' [count], each sample's log-density, the divergence 'auto' "
      "(exact "
      "up to D = 32), 'exact' or 'hutchinson' with `probes` probes).");
  m.def(
      "integrate",
      [](const cufm::Model& model, FloatIn x0, const std::string& solver, int steps, float atol, float rtol,
         std::optional<std::vector<int32_t>> labels, std::optional<FloatIn> context,
         std::optional<float> guidance, float t0, float t1, bool keep_trajectory, const std::string& device,
         const std::string& precision, int threads, bool with_log_prob, const std::string& divergence,
         int probes) {
        cufm::Sampler sampler;
        return run_integrate(sampler, model, x0, solver, steps, atol, rtol, labels, context, guidance, t0, t1,
                             keep_trajectory, device, precision, threads, with_log_prob, divergence, probes);
      },
      "model"_a, "x0"_a, "solver"_a = "midpoint", "steps"_a = 20, "atol"_a = 1e-5f, "rtol"_a = 1e-5f,
      "labels"_a = nb::none(), "context"_a = nb::none(), "guidance"_a = nb::none(), "t0"_a = 0.0f,
      "t1"_a = 1.0f, "keep_trajectory"_a = false, "device"_a = "auto", "precision"_a = "fp32",
      "threads"_a = 0, "with_log_prob"_a = false, "divergence"_a = "auto", "probes"_a = 1,
      "Integrates the model's field from the caller's points x0 [N, D] over [t0, t1] (t1 < t0: backwards); "
      "with_log_prob (t0 = 0, the points read as N(0, I) draws): also 'log_prob', log p_t1 at the results.");
  nb::class_<cufm::Sampler>(
      m, "Sampler",
      "Keeps a GPU run's set-up (weights, cuBLASLt plans, buffers, solver graphs) between "
      "calls of the same shape; sample()/integrate() give the module functions' bits.")
      .def(nb::init<>())
      .def(
          "sample",
          [](cufm::Sampler& sampler, const cufm::Model& model, int64_t count, const std::string& solver,
             int steps, float atol, float rtol, std::optional<std::vector<int32_t>> labels,
             std::optional<FloatIn> context, std::optional<float> guidance, uint64_t seed, float t0, float t1,
             bool keep_trajectory, const std::string& device, const std::string& precision, int threads,
             bool with_log_prob, const std::string& divergence, int probes) {
            return run_sample(sampler, model, count, solver, steps, atol, rtol, labels, context, guidance,
                              seed, t0, t1, keep_trajectory, device, precision, threads, with_log_prob,
                              divergence, probes);
          },
          "model"_a, "count"_a = 1000, "solver"_a = "midpoint", "steps"_a = 20, "atol"_a = 1e-5f,
          "rtol"_a = 1e-5f, "labels"_a = nb::none(), "context"_a = nb::none(), "guidance"_a = nb::none(),
          "seed"_a = 0, "t0"_a = 0.0f, "t1"_a = 1.0f, "keep_trajectory"_a = false, "device"_a = "auto",
          "precision"_a = "fp32", "threads"_a = 0, "with_log_prob"_a = false, "divergence"_a = "auto",
          "probes"_a = 1, "cufm.sample, keeping this sampler's set-up for the next call.")
      .def(
          "integrate",
          [](cufm::Sampler& sampler, const cufm::Model& model, FloatIn x0, const std::string& solver,
             int steps, float atol, float rtol, std::optional<std::vector<int32_t>> labels,
             std::optional<FloatIn> context, std::optional<float> guidance, float t0, float t1,
             bool keep_trajectory, const std::string& device, const std::string& precision, int threads,
             bool with_log_prob, const std::string& divergence, int probes) {
            return run_integrate(sampler, model, x0, solver, steps, atol, rtol, labels, context, guidance, t0,
                                 t1, keep_trajectory, device, precision, threads, with_log_prob, divergence,
                                 probes);
          },
          "model"_a, "x0"_a, "solver"_a = "midpoint", "steps"_a = 20, "atol"_a = 1e-5f, "rtol"_a = 1e-5f,
          "labels"_a = nb::none(), "context"_a = nb::none(), "guidance"_a = nb::none(), "t0"_a = 0.0f,
          "t1"_a = 1.0f, "keep_trajectory"_a = false, "device"_a = "auto", "precision"_a = "fp32",
          "threads"_a = 0, "with_log_prob"_a = false, "divergence"_a = "auto", "probes"_a = 1,
          "cufm.integrate, keeping this sampler's set-up for the next call.")
      .def("release", &cufm::Sampler::release, "Frees what the sampler keeps (its GPU memory too).");
  m.def(
      "log_prob",
      [](const cufm::Model& model, FloatIn x, const std::string& solver, int steps, float atol, float rtol,
         const std::string& divergence, int probes, uint64_t seed, std::optional<std::vector<int32_t>> labels,
         std::optional<FloatIn> context, std::optional<float> guidance, const std::string& device,
         int threads) {
        const int64_t n = rows_of(x, model.config().data_dim, "log_prob: x");
        cufm::LogProbConfig c;
        c.solver = cufm::parse_solver(solver);
        c.steps = steps;
        c.atol = atol;
        c.rtol = rtol;
        c.divergence = cufm::parse_divergence(divergence);
        c.probes = probes;
        c.seed = seed;
        if (labels) c.labels = *labels;
        c.context = context_arg(context, "log_prob");
        c.guidance = guidance;
        c.device = cufm::parse_device(device);
        c.threads = threads;
        const std::vector<float> points(x.data(), x.data() + n * model.config().data_dim);
        cufm::LogProbResult r;
        {
          nb::gil_scoped_release release;
          r = cufm::log_prob(model, points, c);
        }
        nb::dict d;
        d["log_prob"] = to_numpy(r.log_prob, {r.log_prob.size()});
        d["noise"] = to_numpy(r.noise, {static_cast<size_t>(r.count), static_cast<size_t>(r.dim)});
        d["div_integral"] = to_numpy(r.div_integral, {r.div_integral.size()});
        d["divergence"] = std::string(cufm::to_string(r.divergence));
        d["evaluations"] = r.evaluations;
        d["accepted_steps"] = r.accepted_steps;
        d["rejected_steps"] = r.rejected_steps;
        d["device"] = std::string(cufm::to_string(r.device));
        return d;
      },
      "model"_a, "x"_a, "solver"_a = "dopri5", "steps"_a = 20, "atol"_a = 1e-5f, "rtol"_a = 1e-5f,
      "divergence"_a = "auto", "probes"_a = 1, "seed"_a = 0, "labels"_a = nb::none(),
      "context"_a = nb::none(), "guidance"_a = nb::none(), "device"_a = "auto", "threads"_a = 0,
      "Log-likelihoods log p_1(x) at the points x [N, D]: integrates them back to t = 0 with the divergence "
      "in "
      "the ODE state. Returns {'log_prob' [N], 'noise' [N, D] (the points at t = 0), 'div_integral' [N], "
      "'divergence', 'evaluations', ...}. divergence: 'auto' (exact up to D = 32), 'exact' or 'hutchinson' "
      "(`probes` Rademacher probes per point, keyed by `seed`). context (a model with a context): [K] for "
      "every point or [N, K]; None: the null context.");

  nb::class_<cufm::VelocityField>(m, "VelocityField", "v(x, t, class, context) on a batch, guided or not.")
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
          "model"_a, "guidance"_a = nb::none(), "device"_a = "auto", "precision"_a = "fp32", "threads"_a = 0,
          "Copies the model's weights (to the GPU on 'cuda'). guidance w: v = v(null) + w (v(c) - v(null)), "
          "every call then needs labels or a context.")
      .def(
          "__call__",
          [](cufm::VelocityField& f, float t, ConstFloats x, std::optional<ConstLabels> labels,
             nb::object out, uintptr_t stream, std::optional<ConstFloats> context) -> nb::object {
            const int dim = f.config().data_dim;
            if (x.ndim() != 2 || static_cast<int>(x.shape(1)) != dim) {
              throw cufm::Error(
                  "VelocityField: x: expected a float32 array of shape [N, " + std::to_string(dim) +
                  "], got " + std::to_string(x.ndim()) + " dimension(s)" +
                  (x.ndim() == 2 ? " with " + std::to_string(x.shape(1)) + " columns" : std::string()));
            }
            const int64_t n = static_cast<int64_t>(x.shape(0));
            const bool cuda = on_cuda(x);
            const int dev = cuda ? x.device_id() : 0;
            if (labels) {
              require_same_device(*labels, cuda, dev, "VelocityField: labels");
              require_shape(*labels, {n}, "VelocityField: labels");
            }
            const int K = f.config().context_dim;
            if (context) {
              if (K == 0) throw cufm::Error("VelocityField: a context given, but the model has none");
              require_same_device(*context, cuda, dev, "VelocityField: context");
              require_shape(*context, {n, K}, "VelocityField: context");
            }
            const float* c = context ? context->data() : nullptr;
            if (cuda) {
              if (out.is_none()) {
                throw cufm::Error(
                    "VelocityField: a CUDA x needs out, a CUDA array [N, D] (cufm.torch.velocity "
                    "allocates it)");
              }
              Floats o = nb::cast<Floats>(out, false);  // written in place: never a converted copy
              require_same_device(o, true, dev, "VelocityField: out");
              require_shape(o, {n, dim}, "VelocityField: out");
              nb::gil_scoped_release release;
              f.evaluate_device(t, x.data(), labels ? labels->data() : nullptr, c, n, o.data(),
                                reinterpret_cast<void*>(stream));
              return out;
            }
            if (!out.is_none()) {
              Floats o = nb::cast<Floats>(out, false);  // written in place: never a converted copy
              require_same_device(o, false, 0, "VelocityField: out");
              require_shape(o, {n, dim}, "VelocityField: out");
              nb::gil_scoped_release release;
              f.evaluate(t, x.data(), labels ? labels->data() : nullptr, c, n, o.data());
              return out;
            }
            std::vector<float> v(static_cast<size_t>(n) * dim);
            {
              nb::gil_scoped_release release;
              f.evaluate(t, x.data(), labels ? labels->data() : nullptr, c, n, v.data());
            }
            return nb::cast(to_numpy(std::move(v), {static_cast<size_t>(n), static_cast<size_t>(dim)}),
                            nb::rv_policy::move);
          },
          "t"_a, "x"_a, "labels"_a = nb::none(), "out"_a = nb::none(), "stream"_a = 0,
          "context"_a = nb::none(),
          "v(x, t, labels, context) [N, D] at the points x [N, D] (context [N, K] on x's device; None: the "
          "null "
          "context). Host x (numpy, or a CPU tensor): returns a new "
          "numpy "
          "array, or writes into out. A CUDA x (a GPU field only): used in place, v written into out (a CUDA "
          "array [N, D]) on `stream` (a cudaStream_t as an int; 0: the legacy default stream) without "
          "waiting; "
          "returns out.")
      .def_prop_ro(
          "device", [](const cufm::VelocityField& f) { return std::string(cufm::to_string(f.device())); },
          "'cpu' or 'cuda'.")
      .def("set_weights", &cufm::VelocityField::set_weights, "model"_a,
           "Replaces the weights with another model's of the same configuration.");

  m.def(
      "loss_and_grad",
      [](const cufm::Model& model, FloatIn x1, FloatIn t, FloatIn eps, std::optional<LabelsIn> labels,
         float sigma_min, const std::string& device, const std::string& precision, int threads,
         std::optional<FloatIn> context) {
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
      "precision"_a = "fp32", "threads"_a = 0, "context"_a = nb::none(),
      "(loss, flat gradient) of the flow-matching MSE on the caller's batch and draws, updating nothing.");

  // ---- the flow-matching loss for a model of the caller's own (cufm.torch) -----------------------
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
      "labels_out"_a.noconvert() = nb::none(), "eps"_a.noconvert() = nb::none(), nb::kw_only(), "seed"_a = 0,
      "step"_a = 0, "num_classes"_a = 0, "label_dropout"_a = 0.0f, "sigma_min"_a = 0.0f,
      "time_sampling"_a = "uniform", "logit_mean"_a = 0.0f, "logit_std"_a = 1.0f, "context_dropout"_a = 0.0f,
      "context_dropped"_a.noconvert() = nb::none(),
      "Host arrays. Draws training step `step`'s t and eps for the caller's batch x1 [B, D] (row i is x1's "
      "row "
      "i) and writes x_t [B, D] and t [B] in place; a conditional batch (num_classes > 0) gives labels [B] "
      "(None: all null) and gets them after dropout in labels_out; eps [B, D], when given, gets the noise; "
      "context_dropped (uint8 [B]), when given, gets 1 for the rows whose context the step drops "
      "(context_dropout). "
      "The draws "
      "Trainer.step(x1) trains on.");
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
      "x1"_a, "v"_a, "grad"_a.noconvert() = nb::none(), nb::kw_only(), "seed"_a = 0, "step"_a = 0,
      "sigma_min"_a = 0.0f, "time_sampling"_a = "uniform", "logit_mean"_a = 0.0f, "logit_std"_a = 1.0f,
      "threads"_a = 0,
      "Host arrays. The MSE of the model's output v [B, D] against step `step`'s target u = x1 - (1 - "
      "sigma_min) eps (eps drawn again, as prepare_flow drew it); writes dL/dv = 2 (v - u) / (B D) into grad "
      "when given. Returns the loss.");
  m.def(
      "fm_prepare",
      [](ConstFloats x1, Floats input, Floats t, nb::ndarray<const int64_t, nb::c_contig> step,
         uintptr_t stream, std::optional<ConstLabels> labels, std::optional<Labels> labels_out, uint64_t seed,
         int num_classes, float label_dropout, float sigma_min, const std::string& time_sampling,
         float logit_mean, float logit_std, std::optional<ConstFloats> context, float context_dropout,
         std::optional<ConstLabels> noise_row) {
#if defined(CUFM_WITH_CUDA)
        if (!on_cuda(x1))
          throw cufm::Error("fm_prepare: x1 must be a CUDA array (prepare_flow takes host arrays)");
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
        require_shape(
            input, {B, ld},
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
        throw cufm::Error(
            "fm_prepare: this build of cuFM has no CUDA backend (prepare_flow takes host arrays)");
#endif
      },
      "x1"_a, "input"_a.noconvert(), "t"_a.noconvert(), "step"_a, "stream"_a, "labels"_a = nb::none(),
      "labels_out"_a.noconvert() = nb::none(), nb::kw_only(), "seed"_a = 0, "num_classes"_a = 0,
      "label_dropout"_a = 0.0f, "sigma_min"_a = 0.0f, "time_sampling"_a = "uniform", "logit_mean"_a = 0.0f,
      "logit_std"_a = 1.0f, "context"_a = nb::none(), "context_dropout"_a = 0.0f, "noise_row"_a = nb::none(),
      "CUDA arrays, enqueued on `stream` (a cudaStream_t as an int) without waiting: prepare_flow's draws by "
      "the fm_prepare kernel. Writes input [B, D + 1] = [x_t | t] (then, with a context [B, K], its K values "
      "and a null indicator, 1 where context_dropout drops the row's, which is then zeros; then num_classes "
      "+ "
      "1 one-hot columns when conditional) and t [B]; step is an int64 [1] device array read on the device; "
      "noise_row [B] (int32, fm_couple's pairs): row i takes row noise_row[i]'s noise.");
  m.def(
      "fm_couple_workspace_bytes",
      [](int batch, int dim, const std::string& kind, int num_classes) {
#if defined(CUFM_WITH_CUDA)
        cufm::kernels::FmCoupling c;
        c.kind = cufm::parse_coupling(kind);
        c.num_classes = num_classes;
        return cufm::kernels::fm_couple_workspace_bytes(batch, dim, c);
#else
        (void)batch, (void)dim, (void)kind, (void)num_classes;
        throw cufm::Error("fm_couple_workspace_bytes: this build of cuFM has no CUDA backend");
        return size_t{0};
#endif
      },
      "batch"_a, "dim"_a, "kind"_a = "exact", "num_classes"_a = 0,
      "Bytes of device workspace fm_couple needs for a batch.");
  m.def(
      "fm_couple",
      [](ConstFloats x1, Labels noise_row, nb::ndarray<uint8_t, nb::c_contig> workspace,
         nb::ndarray<const int64_t, nb::c_contig> step, uintptr_t stream, std::optional<ConstLabels> labels,
         const std::string& kind, float reg, uint64_t seed, int num_classes, float label_dropout,
         float sigma_min, const std::string& time_sampling, float logit_mean, float logit_std) {
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
      },
      "x1"_a, "noise_row"_a.noconvert(), "workspace"_a.noconvert(), "step"_a, "stream"_a,
      "labels"_a = nb::none(), nb::kw_only(), "kind"_a = "exact", "reg"_a = 0.05f, "seed"_a = 0,
      "num_classes"_a = 0, "label_dropout"_a = 0.0f, "sigma_min"_a = 0.0f, "time_sampling"_a = "uniform",
      "logit_mean"_a = 0.0f, "logit_std"_a = 1.0f,
      "CUDA arrays, enqueued on `stream` without waiting: the step's minibatch OT pairs of x1 [B, D] (row i "
      "is x1's row i) with its Philox noise, by the fm_couple kernels, into noise_row [B] (int32): pass it "
      "to fm_prepare and fm_loss_grad. Conditional batches (num_classes > 0) pair within each label after "
      "dropout. workspace: fm_couple_workspace_bytes bytes.");
  m.def(
      "fm_loss_grad_workspace_bytes",
      [](int batch, int dim) {
#if defined(CUFM_WITH_CUDA)
        return cufm::kernels::fm_loss_grad_workspace_bytes(batch, dim);
#else
        (void)batch, (void)dim;
        throw cufm::Error("fm_loss_grad_workspace_bytes: this build of cuFM has no CUDA backend");
        return size_t{0};
#endif
      },
      "batch"_a, "dim"_a, "Bytes of zeroed device workspace fm_loss_grad needs for a batch.");
  m.def(
      "fm_loss_grad",
      [](ConstFloats x1, ConstFloats v, Floats grad, Floats loss,
         nb::ndarray<uint8_t, nb::c_contig> workspace, nb::ndarray<const int64_t, nb::c_contig> step,
         uintptr_t stream, uint64_t seed, float sigma_min, const std::string& time_sampling, float logit_mean,
         float logit_std, std::optional<ConstLabels> noise_row) {
#if defined(CUFM_WITH_CUDA)
        if (!on_cuda(x1))
          throw cufm::Error("fm_loss_grad: x1 must be a CUDA array (flow_mse takes host arrays)");
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
        const cufm::StepDraws d =
            step_draws(seed, 0, 0, 0.0f, sigma_min, time_sampling, logit_mean, logit_std);
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
        throw cufm::Error(
            "fm_loss_grad: this build of cuFM has no CUDA backend (flow_mse takes host arrays)");
#endif
      },
      "x1"_a, "v"_a, "grad"_a.noconvert(), "loss"_a.noconvert(), "workspace"_a.noconvert(), "step"_a,
      "stream"_a, nb::kw_only(), "seed"_a = 0, "sigma_min"_a = 0.0f, "time_sampling"_a = "uniform",
      "logit_mean"_a = 0.0f, "logit_std"_a = 1.0f, "noise_row"_a = nb::none(),
      "CUDA arrays, enqueued on `stream` without waiting: flow_mse by the fused fm_loss_grad kernel (with "
      "fm_couple's noise_row [B], the paired noise). Writes "
      "dL/dv into grad [B, D] and the loss into loss [1]; workspace: fm_loss_grad_workspace_bytes zeroed "
      "bytes "
      "(left zeroed), one per concurrent call.");

  m.def(
      "load_checkpoint",
      [](const std::string& path, bool ema) {
        const cufm::Checkpoint c = cufm::load_checkpoint(path);
        return std::make_tuple(c.to_model(ema ? cufm::Weights::Ema : cufm::Weights::Trained), c.train,
                               c.state.step);
      },
      "path"_a, "ema"_a = false, "(model, train config, step) from a safetensors checkpoint.");

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
        auto* owned = new std::vector<uint32_t>();
        {
          nb::gil_scoped_release release;
          *owned = cufm::couple(c, B, static_cast<int>(x1.shape(1)), x1.data(), eps.data(),
                                groups ? groups->data() : nullptr, threads);
        }
        nb::capsule free_it(owned, [](void* p) noexcept { delete static_cast<std::vector<uint32_t>*>(p); });
        size_t shape[1] = {owned->size()};
        return nb::ndarray<nb::numpy, uint32_t>(owned->data(), 1, shape, free_it);
      },
      "x1"_a, "eps"_a, "groups"_a = nb::none(), "kind"_a = "exact", "reg"_a = 0.05f, "seed"_a = 0,
      "step"_a = 0, "threads"_a = 0,
      "Minibatch optimal-transport pairs: noise_row [B] (uint32) such that data row i of x1 [B, D] takes "
      "noise row noise_row[i] of eps [B, D], rows pairing only within equal groups [B] (int32; None: one "
      "group). kind 'exact' (a permutation) or 'sinkhorn' (drawn from the entropic plan with reg, seeded by "
      "seed and step); 'independent' gives 0..B-1.");
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
      "a"_a, "b"_a, "projections"_a = 256, "seed"_a = 0,
      "Sliced 2-Wasserstein distance between point sets a [N, D] and b [M, D] over random directions.");
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
      "a"_a, "b"_a, "max_points"_a = 4000, "seed"_a = 0,
      "Energy distance between point sets a [N, D] and b [M, D] (each subsampled to max_points).");
}
