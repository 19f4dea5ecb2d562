// Sampling: sample() from noise and integrate() from the caller's points (module functions, and a
// Sampler's methods that keep a GPU run's set-up), and VelocityField, the model's v(x, t) to
// evaluate on a batch. Keyword defaults: SampleConfig's and FieldOptions'.
#include "bind.hpp"

namespace cufm::python {

namespace {

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
  d["mlp"] = r.mlp;
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
                    std::optional<std::vector<int32_t>> labels, std::optional<FloatIn> context,
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

nb::dict run_integrate(cufm::Sampler& sampler, const cufm::Model& model, FloatIn x0,
                       const std::string& solver, int steps, float atol, float rtol,
                       std::optional<std::vector<int32_t>> labels, std::optional<FloatIn> context,
                       std::optional<float> guidance, float t0, float t1, bool keep_trajectory,
                       const std::string& device, const std::string& precision, int threads,
                       bool with_log_prob, const std::string& divergence, int probes) {
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

// F(sampler, args...) with a fresh Sampler: the module functions sample() and integrate(), which
// take the Sampler methods' arguments (the same function) and keep nothing between calls.
template <auto F>
struct WithFreshSampler;
template <class... Args, nb::dict (*F)(cufm::Sampler&, Args...)>
struct WithFreshSampler<F> {
  static nb::dict call(Args... args) {
    cufm::Sampler sampler;
    return F(sampler, std::forward<Args>(args)...);
  }
};

// sample() and integrate(): module functions (fn: WithFreshSampler) or Sampler methods (fn: the
// run_* function itself, the Sampler its self), with SampleConfig's defaults.
template <class Target, class Fn>
void def_sample(Target& target, Fn fn, const char* doc) {
  const cufm::SampleConfig d;
  target.def("sample", fn, "model"_a, "count"_a = d.count, "solver"_a = cufm::to_string(d.solver),
             "steps"_a = d.steps, "atol"_a = d.atol, "rtol"_a = d.rtol, "labels"_a = nb::none(),
             "context"_a = nb::none(), "guidance"_a = nb::none(), "seed"_a = d.seed, "t0"_a = d.t0,
             "t1"_a = d.t1, "keep_trajectory"_a = d.keep_trajectory, "device"_a = cufm::to_string(d.device),
             "precision"_a = cufm::to_string(d.precision), "threads"_a = d.threads,
             "with_log_prob"_a = d.with_log_prob, "divergence"_a = cufm::to_string(d.divergence),
             "probes"_a = d.probes, doc);
}
template <class Target, class Fn>
void def_integrate(Target& target, Fn fn, const char* doc) {
  const cufm::SampleConfig d;
  target.def("integrate", fn, "model"_a, "x0"_a, "solver"_a = cufm::to_string(d.solver), "steps"_a = d.steps,
             "atol"_a = d.atol, "rtol"_a = d.rtol, "labels"_a = nb::none(), "context"_a = nb::none(),
             "guidance"_a = nb::none(), "t0"_a = d.t0, "t1"_a = d.t1, "keep_trajectory"_a = d.keep_trajectory,
             "device"_a = cufm::to_string(d.device), "precision"_a = cufm::to_string(d.precision),
             "threads"_a = d.threads, "with_log_prob"_a = d.with_log_prob,
             "divergence"_a = cufm::to_string(d.divergence), "probes"_a = d.probes, doc);
}

void bind_velocity_field(nb::module_& m) {
  const cufm::FieldOptions d;
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
          "model"_a, "guidance"_a = nb::none(), "device"_a = cufm::to_string(d.device),
          "precision"_a = cufm::to_string(d.precision), "threads"_a = d.threads,
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
            const int32_t* l = labels ? labels->data() : nullptr;
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
              f.evaluate_device(t, x.data(), l, c, n, o.data(), reinterpret_cast<void*>(stream));
              return out;
            }
            if (!out.is_none()) {
              Floats o = nb::cast<Floats>(out, false);  // written in place: never a converted copy
              require_same_device(o, false, 0, "VelocityField: out");
              require_shape(o, {n, dim}, "VelocityField: out");
              nb::gil_scoped_release release;
              f.evaluate(t, x.data(), l, c, n, o.data());
              return out;
            }
            std::vector<float> v(static_cast<size_t>(n) * dim);
            {
              nb::gil_scoped_release release;
              f.evaluate(t, x.data(), l, c, n, v.data());
            }
            return nb::cast(to_numpy(std::move(v), {static_cast<size_t>(n), static_cast<size_t>(dim)}),
                            nb::rv_policy::move);
          },
          "t"_a, "x"_a, "labels"_a = nb::none(), "out"_a = nb::none(), "stream"_a = 0,
          "context"_a = nb::none(),
          "v(x, t, labels, context) [N, D] at the points x [N, D] (context [N, K] on x's device; None: the "
          "null context). Host x (numpy, or a CPU tensor): returns a new numpy array, or writes into out. A "
          "CUDA x (a GPU field only): used in place, v written into out (a CUDA array [N, D]) on `stream` (a "
          "cudaStream_t as an int; 0: the legacy default stream) without waiting; returns out.")
      .def_prop_ro(
          "device", [](const cufm::VelocityField& f) { return std::string(cufm::to_string(f.device())); },
          "'cpu' or 'cuda'.")
      .def("set_weights", &cufm::VelocityField::set_weights, "model"_a,
           "Replaces the weights with another model's of the same configuration.");
}

}  // namespace

void bind_sampling(nb::module_& m) {
  def_sample(m, &WithFreshSampler<run_sample>::call,
             doc("Integrates from the seed's noise; returns {'x', 'evaluations', ...} (with a trajectory: "
                 "'times', 'trajectory'; with_log_prob: 'log_prob' [count], each sample's log-density, with "
                 "the divergence " +
                 cufm::enum_help<cufm::Divergence>() + ", `probes` of them per sample)."));
  def_integrate(m, &WithFreshSampler<run_integrate>::call,
                "Integrates the model's field from the caller's points x0 [N, D] over [t0, t1] (t1 < t0: "
                "backwards); with_log_prob (t0 = 0, the points read as N(0, I) draws): also 'log_prob', "
                "log p_t1 at the results.");
  nb::class_<cufm::Sampler> sampler(
      m, "Sampler",
      "Keeps a GPU run's set-up (weights, cuBLASLt plans, buffers, solver graphs) "
      "between calls of the same shape; sample()/integrate() give the module "
      "functions' bits.");
  sampler.def(nb::init<>());
  def_sample(sampler, &run_sample, "cufm.sample, keeping this sampler's set-up for the next call.");
  def_integrate(sampler, &run_integrate, "cufm.integrate, keeping this sampler's set-up for the next call.");
  sampler.def("release", &cufm::Sampler::release, "Frees what the sampler keeps (its GPU memory too).");
  bind_velocity_field(m);
}

}  // namespace cufm::python
