// Judging a trained model: log_prob (exact log-likelihoods, keyword defaults LogProbConfig's) and
// the distances between sample sets (sliced_wasserstein2, energy_distance).
#include "bind.hpp"

namespace cufm::python {

namespace {

nb::dict log_prob_dict(const cufm::Model& model, FloatIn x, const std::string& solver, int steps, float atol,
                       float rtol, const std::string& divergence, int probes, uint64_t seed,
                       std::optional<std::vector<int32_t>> labels, std::optional<FloatIn> context,
                       std::optional<float> guidance, const std::string& device, int threads) {
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
  d["mlp"] = r.mlp;
  return d;
}

}  // namespace

void bind_likelihood(nb::module_& m) {
  const cufm::LogProbConfig d;
  m.def("log_prob", &log_prob_dict, "model"_a, "x"_a, "solver"_a = cufm::to_string(d.solver),
        "steps"_a = d.steps, "atol"_a = d.atol, "rtol"_a = d.rtol,
        "divergence"_a = cufm::to_string(d.divergence), "probes"_a = d.probes, "seed"_a = d.seed,
        "labels"_a = nb::none(), "context"_a = nb::none(), "guidance"_a = nb::none(),
        "device"_a = cufm::to_string(d.device), "threads"_a = d.threads,
        doc("Log-likelihoods log p_1(x) at the points x [N, D]: integrates them back to t = 0 with the "
            "divergence in the ODE state. Returns {'log_prob' [N], 'noise' [N, D] (the points at t = 0), "
            "'div_integral' [N], 'divergence', 'evaluations', ...}. divergence: " +
            cufm::enum_help<cufm::Divergence>() +
            "; hutchinson takes `probes` probes per point, keyed by `seed`. context (a model with a "
            "context): [K] "
            "for every point or [N, K]; None: the null context."));

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

}  // namespace cufm::python
