// cufm_bench_sample: sampling time of R1 (50,000 points, midpoint, 20 steps) and R4 (50,000
// points, 8 classes, guidance 3, RK4, 32 steps) on every backend built, with the model FLOP/s
// (2·P per point per model evaluation) against the GEMM ceiling measured in the same run.
//
// Sampling time does not depend on the weights, so the models are the seed-0 initialisations.
// The timed calls go through one kept cufm::Sampler, as an application sampling repeatedly would
// (and as the PyTorch baseline keeps its model on the device): each call uploads the weights,
// draws the noise, integrates and copies the 400 KB of samples back. Warm-up: one call at the full
// count (on the CPU with one solver step: a full R4 call takes minutes there). Then full calls
// until --repeats (CPU 3, GPU 10) are done or --budget seconds (CPU 60, GPU 10) are spent, at least
// one call; the median wall time is reported. On the GPU, a column also gives the median of three
// one-shot sample() calls, which pay the setup (allocation, cuBLASLt plans, graph capture) each
// time; on the CPU a Sampler holds nothing, so the two are the same.
//
// Log-likelihoods (cufm::log_prob, fp32 backends only: log-densities run fp32 on both devices),
// exact divergence, midpoint 20 steps, from t = 1 back to 0: R5's shape (D 10, context 20, 5 x 256
// SiLU, a context row per point), and R7's model (where the fused kernel takes the flow on the GPU).
// Points per call: 10^5 on the GPU, 2,000 on the CPU (points/s compares them); the median of the
// timed calls after one warm-up call.
#include <cmath>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "bench/bench_common.hpp"
#include "cufm/error.hpp"
#include "cufm/likelihood.hpp"
#include "cufm/sampler.hpp"

namespace cufm::bench {
namespace {

const char* kUsage =
    "cufm_bench_sample: sampling time of R1 (midpoint 20 steps) and R4 (guided RK4 32 steps), 50,000 "
    "points, and R7 (R2's 2-128x5-2 model, midpoint 20 steps, 10^6 points); log-likelihoods (exact,\n"
    "midpoint 20 steps) of R5's shape and R7's model.\n"
    "  --threads N          CPU threads (0: all cores)\n"
    "  --workloads R1,R4,R5,R7 subset (default: all)\n"
    "  --backends LIST      subset of cpu,cpu-bf16,cuda-fp32,cuda-tf32,cuda-bf16 (default: all built)\n"
    "  --repeats N          timed calls per row (default: CPU 3, GPU 10; log-likelihoods 3)\n"
    "  --budget S           stop repeating a row after S seconds (default: CPU 60, GPU 10)\n"
    "  --warmup N           warm-up calls (default 1)\n"
    "  --smoke              200 points, one repeat: checks every row runs (timings meaningless)\n"
    "  --out FILE / --json FILE\n";

struct SampleWorkload {
  std::string id;
  MlpConfig model;
  Solver solver;
  int steps;
  std::optional<float> guidance;
  int64_t count;  // points per call
};

std::vector<SampleWorkload> sample_workloads(const Options& opt) {
  MlpConfig r1;
  r1.data_dim = 2;
  r1.hidden = {512, 512, 512, 512};
  r1.activation = Activation::SiLU;
  r1.time_features = 0;
  MlpConfig r4 = r1;
  r4.num_classes = 8;
  MlpConfig r7 = r1;  // R2's w128 model: where the fused sampler applies
  r7.hidden.assign(5, 128);
  const int64_t count = opt.smoke ? 200 : 50000;
  std::vector<SampleWorkload> out;
  if (selected(opt.workloads, "R1")) out.push_back({"R1", r1, Solver::Midpoint, 20, std::nullopt, count});
  if (selected(opt.workloads, "R4")) out.push_back({"R4", r4, Solver::RK4, 32, 3.0f, count});
  if (selected(opt.workloads, "R7")) {
    out.push_back({"R7", r7, Solver::Midpoint, 20, std::nullopt, opt.smoke ? 200 : 1000000});
  }
  for (const std::string& id : opt.workloads) {
    CUFM_REQUIRE(id == "R1" || id == "R4" || id == "R5" || id == "R7",
                 "--workloads: cufm_bench_sample runs R1, R4, R5 and R7, got '" << id << "'");
  }
  return out;
}

SampleConfig sample_config(const SampleWorkload& w, const Backend& b, int64_t count, int threads) {
  SampleConfig sc;
  sc.count = count;
  sc.solver = w.solver;
  sc.steps = w.steps;
  sc.seed = 0;
  sc.guidance = w.guidance;
  if (w.model.num_classes > 0) {
    sc.labels.resize(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i)
      sc.labels[static_cast<size_t>(i)] = static_cast<int32_t>(i % w.model.num_classes);
  }
  sc.device = b.device;
  sc.precision = b.precision;
  sc.threads = threads;
  return sc;
}

void run_sampling(const std::vector<Backend>& bs, const std::map<std::string, double>& ceilings,
                  Report& rep) {
  const Options& opt = rep.opt;
  Table t;
  t.title = "Sampling (seconds: median of timed calls after warm-up)";
  t.header = {"Workload", "Points", "Solver",  "Model evals",  "Backend",    "MLP", "Repeats", "s median [min, max]",
              "samples/s", "TFLOP/s", "% of ceiling", "one-shot s", "vs CPU"};
  nlohmann::json rows = nlohmann::json::array();
  for (const SampleWorkload& w : sample_workloads(opt)) {
    const int64_t count = w.count;
    const Model model(w.model, 0);
    const size_t params = model.num_params();
    // Model forwards per point: stages x steps, twice with guidance (conditional and null).
    const int64_t evals = int64_t{solver_evaluations_per_step(w.solver)} * w.steps * (w.guidance ? 2 : 1);
    const double flop =
        2.0 * static_cast<double>(params) * static_cast<double>(count) * static_cast<double>(evals);
    std::string solver = std::string(to_string(w.solver)) + " " + std::to_string(w.steps) + " steps";
    if (w.guidance) solver += ", guidance " + fmt(*w.guidance, 3);
    double cpu_s = NAN;
    for (const Backend& b : bs) {
      if (!b.available) continue;
      const bool gpu = b.device == Device::CUDA;
      nlohmann::json j = {{"workload", w.id},
                          {"backend", b.name},
                          {"mode", "native"},
                          {"count", count},
                          {"solver", to_string(w.solver)},
                          {"steps", w.steps},
                          {"guidance", w.guidance ? nlohmann::json(*w.guidance) : nlohmann::json()},
                          {"params", params},
                          {"model_evals", evals},
                          {"flop", flop}};
      std::cerr << "[sample] " << w.id << " on " << b.name << " ..." << std::flush;
      try {
        const int warmup = opt.warmup >= 0 ? opt.warmup : 1;
        const int repeats = opt.steps > 0 ? opt.steps : (opt.smoke ? 1 : (gpu ? 10 : 3));
        Sampler sampler;
        SampleConfig warm = sample_config(w, b, count, opt.threads);
        if (!gpu) warm.steps = 1;
        for (int i = 0; i < warmup; ++i) sampler.sample(model, warm);
        const SampleConfig sc = sample_config(w, b, count, opt.threads);
        std::vector<double> times;
        double spent = 0.0;
        bool finite = true;
        std::string mlp;
        const double budget = opt.budget_s > 0.0 ? opt.budget_s : (gpu ? 10.0 : 60.0);
        for (int i = 0; i < repeats && (i == 0 || spent < budget); ++i) {
          const double t0 = now_s();
          const SampleResult res = sampler.sample(model, sc);
          times.push_back(now_s() - t0);
          spent += times.back();
          for (float x : res.x) finite = finite && std::isfinite(x);
          mlp = res.mlp;
        }
        CUFM_REQUIRE(finite, "sampling " << w.id << " on " << b.name << " produced non-finite points");
        const Stats st = summarize(times);
        double one_shot = NAN;
        if (gpu) {
          sampler.release();
          std::vector<double> once;
          for (int i = 0; i < (opt.smoke ? 1 : 3); ++i) {
            const double t0 = now_s();
            (void)sample(model, sc);
            once.push_back(now_s() - t0);
          }
          one_shot = summarize(once).median;
        }
        const double tflops = flop / st.median * 1e-12;
        const auto ceil = ceilings.find(b.name);
        const double frac = ceil != ceilings.end() ? tflops / ceil->second : NAN;
        if (b.name == "cpu") cpu_s = st.median;
        const double vs_cpu = cpu_s / st.median;
        std::cerr << " " << fmt(st.median, 4) << " s\n";
        t.rows.push_back({w.id, std::to_string(count), solver, std::to_string(evals), b.name, mlp,
                          std::to_string(st.repeats),
                          fmt(st.median, 4) + " [" + fmt(st.min, 4) + ", " + fmt(st.max, 4) + "]",
                          fmt_si(count / st.median), fmt(tflops, 3), fmt(frac * 100.0, 3) + "%",
                          gpu ? fmt(one_shot, 4) : "(same)", b.name == "cpu" ? "1" : (std::isfinite(vs_cpu) ? fmt(vs_cpu, 3) + "x" : "-")});
        j.update({{"status", "ok"},
                  {"mlp", mlp},
                  {"repeats", st.repeats},
                  {"warmup", warmup},
                  {"seconds", st.median},
                  {"seconds_min", st.min},
                  {"seconds_max", st.max},
                  {"seconds_one_shot", std::isfinite(one_shot) ? nlohmann::json(one_shot) : nlohmann::json()},
                  {"samples_per_s", count / st.median},
                  {"tflops", tflops},
                  {"ceiling_fraction", std::isfinite(frac) ? nlohmann::json(frac) : nlohmann::json()},
                  {"speedup_vs_cpu", std::isfinite(vs_cpu) ? nlohmann::json(vs_cpu) : nlohmann::json()}});
      } catch (const std::exception& e) {
        std::cerr << " failed\n";
        t.rows.push_back({w.id, std::to_string(count), solver, std::to_string(evals), b.name, "-", "-",
                          std::string("failed: ") + e.what(), "-", "-", "-", "-", "-"});
        j.update({{"status", "failed"}, {"reason", e.what()}});
      }
      rows.push_back(j);
    }
  }
  t.notes.push_back(
      "Model evals: forward passes per point (solver stages x steps, x2 with guidance: conditional "
      "and null class); TFLOP/s counts 2·P FLOP per point per forward.");
  t.notes.push_back(
      "Rows repeat until --repeats calls are done or --budget seconds are spent (at least one "
      "call); the Repeats column says how many ran.");
  t.notes.push_back(
      "Timed calls reuse one cufm::Sampler (weights uploaded each call). One-shot s: the median of "
      "three sample() calls, each setting up anew (GPU only; the CPU has no setup to keep).");
  note_skipped(bs, rep, t);
  rep.json["sample"] = rows;
  rep.tables.push_back(t);
}

void run_log_prob(const std::vector<Backend>& bs, Report& rep) {
  const Options& opt = rep.opt;
  MlpConfig r5;
  r5.data_dim = 10;
  r5.context_dim = 20;
  r5.hidden.assign(5, 256);
  r5.activation = Activation::SiLU;
  r5.time_features = 0;
  MlpConfig r7 = r5;
  r7.data_dim = 2;
  r7.context_dim = 0;
  r7.hidden.assign(5, 128);
  std::vector<std::pair<std::string, MlpConfig>> workloads;
  if (selected(opt.workloads, "R5")) workloads.push_back({"R5", r5});
  if (selected(opt.workloads, "R7")) workloads.push_back({"R7", r7});
  Table t;
  t.title = "Log-likelihoods (exact divergence, midpoint 20 steps; points/s: median of timed calls)";
  t.header = {"Workload", "Points", "Backend", "MLP", "Repeats", "s median [min, max]", "points/s", "vs CPU"};
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& [id, m] : workloads) {
    const Model model(m, 0);
    double cpu_rate = NAN;
    for (const Backend& b : bs) {
      if (!b.available || b.precision != Precision::FP32) continue;
      const bool gpu = b.device == Device::CUDA;
      const int64_t count = opt.smoke ? 200 : (gpu ? 100000 : 2000);
      std::vector<float> x(static_cast<size_t>(count) * m.data_dim);
      sampler_noise(3, 0, count, m.data_dim, x.data());
      LogProbConfig lc;
      lc.solver = Solver::Midpoint;
      lc.steps = 20;
      lc.divergence = Divergence::Exact;
      lc.device = b.device;
      lc.threads = opt.threads;
      if (m.context_dim > 0) {
        lc.context.resize(static_cast<size_t>(count) * m.context_dim);
        for (size_t j = 0; j < lc.context.size(); ++j) lc.context[j] = std::sin(0.1f * static_cast<float>(j));
      }
      nlohmann::json j = {{"workload", id},       {"backend", b.name}, {"count", count},
                          {"solver", "midpoint"}, {"steps", 20},       {"divergence", "exact"}};
      std::cerr << "[log_prob] " << id << " on " << b.name << " ..." << std::flush;
      try {
        for (int i = 0; i < (opt.warmup >= 0 ? opt.warmup : 1); ++i) (void)log_prob(model, x, lc);
        const int repeats = opt.steps > 0 ? opt.steps : (opt.smoke ? 1 : 3);
        const double budget = opt.budget_s > 0.0 ? opt.budget_s : (gpu ? 10.0 : 60.0);
        std::vector<double> times;
        double spent = 0.0;
        std::string mlp;
        bool finite = true;
        for (int i = 0; i < repeats && (i == 0 || spent < budget); ++i) {
          const double t0 = now_s();
          const LogProbResult r = log_prob(model, x, lc);
          times.push_back(now_s() - t0);
          spent += times.back();
          mlp = r.mlp;
          for (float v : r.log_prob) finite = finite && std::isfinite(v);
        }
        CUFM_REQUIRE(finite, "log_prob " << id << " on " << b.name << " produced non-finite log-densities");
        const Stats st = summarize(times);
        const double rate = static_cast<double>(count) / st.median;
        if (b.name == "cpu") cpu_rate = rate;
        std::cerr << " " << fmt(st.median, 4) << " s\n";
        t.rows.push_back(
            {id, std::to_string(count), b.name, mlp, std::to_string(st.repeats),
             fmt(st.median, 4) + " [" + fmt(st.min, 4) + ", " + fmt(st.max, 4) + "]", fmt_si(rate),
             b.name == "cpu" ? "1" : (std::isfinite(cpu_rate) ? fmt(rate / cpu_rate, 3) + "x" : "-")});
        j.update({{"status", "ok"},
                  {"mlp", mlp},
                  {"repeats", st.repeats},
                  {"seconds", st.median},
                  {"seconds_min", st.min},
                  {"seconds_max", st.max},
                  {"points_per_s", rate}});
      } catch (const std::exception& e) {
        std::cerr << " failed\n";
        t.rows.push_back(
            {id, std::to_string(count), b.name, "-", "-", std::string("failed: ") + e.what(), "-", "-"});
        j.update({{"status", "failed"}, {"reason", e.what()}});
      }
      rows.push_back(j);
    }
  }
  t.notes.push_back(
      "Each call integrates the points and their divergence from t = 1 to 0 (40 evaluations of the "
      "velocity and its D tangents); vs CPU compares points/s.");
  note_skipped(bs, rep, t);
  rep.json["log_prob"] = rows;
  rep.tables.push_back(t);
}

}  // namespace
}  // namespace cufm::bench

int main(int argc, char** argv) {
  using namespace cufm::bench;
  return bench_main(argc, argv, "cufm_bench_sample", kUsage, [](Report& rep) {
    const Options& opt = rep.opt;
    const std::vector<Backend> bs = backends(opt);
    const std::map<std::string, double> ceilings = measure_ceilings(bs, rep);
    run_sampling(bs, ceilings, rep);
    run_log_prob(bs, rep);
    return 0;
  });
}
