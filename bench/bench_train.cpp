// cufm_bench_train: training ms/step, samples/s and achieved TFLOP/s (6·B·P per step) of the
// workloads R1-R4 on every backend built, against the GEMM ceiling measured in the same run; then
// R1's time to 20,000 steps and the quality of R1 samples after --quality-steps steps.
//
// CPU rows: warm-up steps, then a fixed number of individually timed steps; the median is reported.
// GPU rows: Trainer::run(k) + loss() (which waits for the device) timed over chunks of k = 10 steps
// after warm-up; the median chunk time / k is reported (the wait costs ~10 us per chunk).
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "bench/bench_common.hpp"
#include "cufm/error.hpp"
#include "cufm/metrics.hpp"
#include "cufm/sampler.hpp"
#include "cufm/trainer.hpp"

namespace cufm::bench {
namespace {

const char* kUsage =
    "cufm_bench_train: training throughput of the workloads R1-R4 and R1's sample quality.\n"
    "  --threads N          CPU threads (0: all cores)\n"
    "  --workloads R1,R2    subset of R1,R2,R3,R4 (default: all)\n"
    "  --backends LIST      subset of cpu,cpu-bf16,cuda-fp32,cuda-tf32,cuda-bf16 (default: all built)\n"
    "  --steps N            measured steps per row (default: CPU per row 5-20, GPU 300)\n"
    "  --warmup N           warm-up steps per row (default: CPU 2, GPU 20)\n"
    "  --quality-steps N    R1 steps before the quality check (default: CPU 200, GPU 20000; 0: skip)\n"
    "  --full               train 20,000 R1 steps on every backend (measures the 20k time)\n"
    "  --smoke              tiny batches and step counts: checks every row runs (timings meaningless)\n"
    "  --out FILE           also write the markdown to FILE\n"
    "  --json FILE          write the results as JSON\n";

constexpr int kGpuChunk = 10;
constexpr int64_t kSampleCount = 50000;

struct TrainRow {
  Stats per_step;
  float loss = 0.0f;
  std::string mlp;  // Trainer::mlp(): which path ran
};

// CUFM_GPU_MLP for one row (nullptr: unset, the automatic choice), then as it was.
class GpuMlpSetting {
 public:
  explicit GpuMlpSetting(const char* value) {
    const char* old = std::getenv("CUFM_GPU_MLP");
    if (old) old_ = old;
    had_ = old != nullptr;
    if (value) {
      setenv("CUFM_GPU_MLP", value, 1);
    } else {
      unsetenv("CUFM_GPU_MLP");
    }
  }
  ~GpuMlpSetting() {
    if (had_) {
      setenv("CUFM_GPU_MLP", old_.c_str(), 1);
    } else {
      unsetenv("CUFM_GPU_MLP");
    }
  }
  GpuMlpSetting(const GpuMlpSetting&) = delete;
  GpuMlpSetting& operator=(const GpuMlpSetting&) = delete;

 private:
  std::string old_;
  bool had_ = false;
};

TrainConfig train_config(int batch) {
  TrainConfig tc;
  tc.batch_size = batch;
  tc.seed = 0;
  tc.optim.kind = Optimizer::Adam;
  tc.optim.lr = 1e-3f;
  return tc;
}

RunOptions run_options(const Backend& b, int threads) {
  RunOptions run;
  run.device = b.device;
  run.precision = b.precision;
  run.threads = threads;
  return run;
}

TrainRow measure_training(const TrainWorkload& w, const Backend& b, const Dataset& data, const Options& opt) {
  const bool gpu = b.device == Device::CUDA;
  const int warmup = opt.warmup >= 0 ? opt.warmup : (opt.smoke ? 1 : (gpu ? 20 : 2));
  const int steps = opt.steps > 0 ? opt.steps : (opt.smoke ? 2 : (gpu ? 300 : w.cpu_steps));
  Trainer trainer(Model(w.model, 0), data, train_config(w.batch), run_options(b, opt.threads));
  if (warmup > 0) {
    trainer.run(static_cast<uint64_t>(warmup));
    trainer.loss();
  }
  std::vector<double> per_step;
  if (!gpu) {
    for (int i = 0; i < steps; ++i) {
      const double t0 = now_s();
      trainer.step();
      per_step.push_back(now_s() - t0);
    }
  } else {
    const int chunk = opt.smoke ? 1 : kGpuChunk;
    for (int done = 0; done < steps; done += chunk) {
      const int k = std::min(chunk, steps - done);
      const double t0 = now_s();
      trainer.run(static_cast<uint64_t>(k));
      trainer.loss();
      per_step.push_back((now_s() - t0) / k);
    }
  }
  TrainRow r;
  r.per_step = summarize(per_step);
  r.loss = trainer.loss();
  r.mlp = trainer.mlp();
  CUFM_REQUIRE(std::isfinite(r.loss),
               "training " << w.id << " on " << b.name << " diverged (loss " << r.loss << ")");
  return r;
}

const Dataset& data_for(const TrainWorkload& w, const Options& opt, std::map<std::string, Dataset>& cache) {
  const std::string key = w.data + std::to_string(w.model.data_dim);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  // A large fixed set, so the index draw behaves like PyTorch's on-the-fly sampling.
  const int64_t n = opt.smoke ? 4096 : (w.model.data_dim > 2 ? (int64_t{1} << 18) : (int64_t{1} << 20));
  return cache.emplace(key, make_data(w.data, w.model.data_dim, n, 0)).first->second;
}

void run_training(const std::vector<Backend>& bs, const std::map<std::string, double>& ceilings, Report& rep,
                  std::map<std::string, double>& r1_ms) {
  const Options& opt = rep.opt;
  Table t;
  t.title = "Training (ms/step: median of individually timed steps after warm-up)";
  t.header = {"Workload",  "Model",   "Params",          "Batch",
              "Backend",   "MLP",     "Steps (warm-up)", "ms/step median [min, max]",
              "samples/s", "TFLOP/s", "% of ceiling",    "vs CPU",
              "Final loss"};
  nlohmann::json rows = nlohmann::json::array();
  std::map<std::string, Dataset> data_cache;
  for (const TrainWorkload& w : train_workloads(opt)) {
    const std::string name = w.variant.empty() ? w.id : w.id + " " + w.variant;
    const size_t params = ParamLayout(w.model).total();
    const double flop = train_flop(w.model, w.batch);
    double cpu_ms = NAN;
    for (const Backend& b : bs) {
      if (!b.available) continue;
      // On the GPU: the automatic choice, then, where that was the fused step, the layered one in
      // the same run.
      std::string auto_mlp;
      for (const char* setting : {static_cast<const char*>(nullptr), "layered"}) {
        if (setting && !(b.device == Device::CUDA && auto_mlp == "cuda fused")) continue;
        const GpuMlpSetting mlp_setting(setting);
        nlohmann::json j = {{"workload", w.id},
                            {"variant", w.variant},
                            {"model", describe(w.model)},
                            {"dim", w.model.data_dim},
                            {"width", w.model.hidden[0]},
                            {"hidden_layers", w.model.hidden.size()},
                            {"num_classes", w.model.num_classes},
                            {"params", params},
                            {"batch", w.batch},
                            {"backend", b.name},
                            {"mode", "native"},
                            {"flop_per_step", flop}};
        std::cerr << "[train] " << name << " on " << b.name << " ..." << std::flush;
        try {
          const Dataset& data = data_for(w, opt, data_cache);
          const TrainRow r = measure_training(w, b, data, opt);
          if (!setting) auto_mlp = r.mlp;
          const double ms = r.per_step.median * 1e3;
          const double tflops = flop / r.per_step.median * 1e-12;
          const auto ceil = ceilings.find(b.name);
          const double frac = ceil != ceilings.end() ? tflops / ceil->second : NAN;
          if (b.name == "cpu") cpu_ms = ms;
          if (w.id == "R1" && !setting) r1_ms[b.name] = ms;
          const double vs_cpu = cpu_ms / ms;
          std::cerr << " " << fmt(ms, 4) << " ms/step\n";
          const int warm =
              opt.warmup >= 0 ? opt.warmup : (opt.smoke ? 1 : (b.device == Device::CUDA ? 20 : 2));
          t.rows.push_back(
              {name, describe(w.model), fmt_si(static_cast<double>(params)), std::to_string(w.batch), b.name,
               r.mlp, std::to_string(r.per_step.repeats) + " (" + std::to_string(warm) + ")",
               fmt(ms, 4) + " [" + fmt(r.per_step.min * 1e3, 4) + ", " + fmt(r.per_step.max * 1e3, 4) + "]",
               fmt_si(w.batch / r.per_step.median), fmt(tflops, 3), fmt(frac * 100.0, 3) + "%",
               b.name == "cpu" ? "1" : (std::isfinite(vs_cpu) ? fmt(vs_cpu, 3) + "x" : "-"), fmt(r.loss, 4)});
          j.update({{"status", "ok"},
                    {"mlp", r.mlp},
                    {"steps", r.per_step.repeats},
                    {"warmup", warm},
                    {"ms_per_step", ms},
                    {"ms_per_step_min", r.per_step.min * 1e3},
                    {"ms_per_step_max", r.per_step.max * 1e3},
                    {"samples_per_s", w.batch / r.per_step.median},
                    {"tflops", tflops},
                    {"ceiling_fraction", std::isfinite(frac) ? nlohmann::json(frac) : nlohmann::json()},
                    {"speedup_vs_cpu", std::isfinite(vs_cpu) ? nlohmann::json(vs_cpu) : nlohmann::json()},
                    {"final_loss", r.loss}});
        } catch (const std::exception& e) {
          std::cerr << " failed\n";
          t.rows.push_back({name, describe(w.model), fmt_si(static_cast<double>(params)),
                            std::to_string(w.batch), b.name, setting ? setting : "-", "-",
                            std::string("failed: ") + e.what(), "-", "-", "-", "-", "-"});
          j.update({{"status", "failed"}, {"reason", e.what()}});
        }
        rows.push_back(j);
      }
    }
  }
  t.notes.push_back(
      "TFLOP/s counts 6·B·P FLOP per step (forward 2·B·P, backward 4·B·P; P = parameters); "
      "\"vs CPU\" is the CPU backend's ms/step over this row's, in this run.");
  t.notes.push_back(
      "R2: 5 hidden layers of width w, batch b; R3: D=64 Gaussian mixture (8 modes); R4: R1's model "
      "with 8 classes (+ null class one-hot input), label dropout 0.1.");
  t.notes.push_back(
      "GPU rows: wall time of Trainer::run(10) + loss() (a device sync) per chunk of 10 steps, "
      "median over chunks, divided by 10.");
  t.notes.push_back(
      "MLP: how the step ran the model (Trainer::mlp()): \"cuda fused\" is one kernel for the forward, "
      "the loss and the backward of each tile of rows (fp32, widths up to 128); where it ran, the "
      "\"cuda layered\" row below it is the same workload with CUFM_GPU_MLP=layered, in this run.");
  note_skipped(bs, rep, t);
  rep.json["train"] = rows;
  rep.tables.push_back(t);
}

void run_quality(const std::vector<Backend>& bs, const std::map<std::string, double>& r1_ms, Report& rep) {
  const Options& opt = rep.opt;
  const TrainWorkload r1 = train_workloads(Options{})[0];
  const int64_t count = opt.smoke ? 1000 : kSampleCount;
  const Dataset data = make_data("checkerboard", 2, opt.smoke ? 4096 : (int64_t{1} << 20), 0);
  const Dataset ref = make_data("checkerboard", 2, count, 12345);
  const Dataset ref2 = make_data("checkerboard", 2, count, 54321);
  const double floor_sw2 = sliced_wasserstein2(ref2.x.data(), count, ref.x.data(), count, 2);
  const double floor_ed = energy_distance(ref2.x.data(), count, ref.x.data(), count, 2);

  Table t;
  t.title = "R1: time to 20,000 steps and sample quality after N steps";
  t.header = {"Backend",          "N steps trained", "Train time (s)", "Final loss",
              "20,000 steps (s)", "Sampling (s)",    "Sliced W2",      "Energy distance"};
  nlohmann::json rows = nlohmann::json::array();
  for (const Backend& b : bs) {
    if (!b.available) continue;
    const bool gpu = b.device == Device::CUDA;
    const int64_t n = opt.quality_steps >= 0 ? opt.quality_steps
                                             : (opt.full ? 20000 : (opt.smoke ? 2 : (gpu ? 20000 : 200)));
    nlohmann::json j = {{"workload", "R1"}, {"backend", b.name}, {"mode", "native"}, {"train_steps", n}};
    std::string t20k = "n/a";
    const auto ms = r1_ms.find(b.name);
    if (n == 20000) {
      j["time_20k_kind"] = "measured";
    } else if (ms != r1_ms.end()) {
      t20k = fmt(ms->second * 20.0, 4) + " (extrapolated from ms/step)";
      j["time_20k_s"] = ms->second * 20.0;
      j["time_20k_kind"] = "extrapolated";
    }
    if (n == 0) {
      t.rows.push_back({b.name, "0 (--quality-steps 0)", "-", "-", t20k, "-", "-", "-"});
      j["status"] = "skipped";
      rows.push_back(j);
      continue;
    }
    std::cerr << "[quality] R1 on " << b.name << ": " << n << " steps ..." << std::flush;
    try {
      Trainer trainer(Model(r1.model, 0), data, train_config(r1.batch), run_options(b, opt.threads));
      const double t0 = now_s();
      trainer.run(static_cast<uint64_t>(n));
      const float loss = trainer.loss();
      const double train_s = now_s() - t0;
      if (n == 20000) {
        t20k = fmt(train_s, 4) + " (measured)";
        j["time_20k_s"] = train_s;
      }
      SampleConfig sc;
      sc.count = count;
      sc.solver = Solver::Midpoint;
      sc.steps = 20;
      sc.seed = 7;
      sc.device = b.device;
      sc.precision = b.precision;
      sc.threads = opt.threads;
      const double s0 = now_s();
      const SampleResult res = sample(trainer.model(), sc);
      const double sample_s = now_s() - s0;
      const double sw2 = sliced_wasserstein2(res.x.data(), count, ref.x.data(), count, 2);
      const double ed = energy_distance(res.x.data(), count, ref.x.data(), count, 2);
      std::cerr << " SW2 " << fmt(sw2, 3) << "\n";
      t.rows.push_back({b.name, std::to_string(n), fmt(train_s, 4), fmt(loss, 4), t20k, fmt(sample_s, 4),
                        fmt(sw2, 4), fmt(ed, 4)});
      j.update({{"status", "ok"},
                {"train_s", train_s},
                {"final_loss", loss},
                {"sample_count", count},
                {"sample_s", sample_s},
                {"sliced_w2", sw2},
                {"energy_distance", ed}});
    } catch (const std::exception& e) {
      std::cerr << " failed\n";
      t.rows.push_back(
          {b.name, std::to_string(n), std::string("failed: ") + e.what(), "-", t20k, "-", "-", "-"});
      j.update({{"status", "failed"}, {"reason", e.what()}});
    }
    rows.push_back(j);
  }
  t.notes.push_back(
      "Quality: R1 trained N steps from the seed-0 initialisation, then " + std::to_string(count) +
      " points sampled with midpoint, 20 steps; sliced W2 (256 projections) and energy distance "
      "(4000-point subsets) to " +
      std::to_string(count) + " fresh checkerboard points.");
  t.notes.push_back("Floor (two independent draws of the data): sliced W2 " + fmt(floor_sw2, 4) +
                    ", energy distance " + fmt(floor_ed, 4) +
                    ". N is small on the CPU by default: a 20k-step "
                    "CPU run takes about an hour; pass --quality-steps 20000 (or --full) to do it.");
  rep.json["quality"] = rows;
  rep.json["quality_floor"] = {{"sliced_w2", floor_sw2}, {"energy_distance", floor_ed}, {"count", count}};
  rep.tables.push_back(t);
}

}  // namespace
}  // namespace cufm::bench

int main(int argc, char** argv) {
  using namespace cufm::bench;
  return bench_main(argc, argv, "cufm_bench_train", kUsage, [](Report& rep) {
    const Options& opt = rep.opt;
    const std::vector<Backend> bs = backends(opt);
    const std::map<std::string, double> ceilings = measure_ceilings(bs, rep);
    std::map<std::string, double> r1_ms;
    run_training(bs, ceilings, rep, r1_ms);
    if (selected(opt.workloads, "R1"))
      run_quality(bs, r1_ms, rep);  // with --quality-steps 0: the 20k time only
    return 0;
  });
}
