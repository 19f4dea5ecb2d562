// What the benchmark binaries share: the workloads (R1-R4), the backends, the command line, a
// timing harness (warm-up, then the median of individually timed repeats), the GEMM ceilings the
// achieved FLOP/s are set against, and the markdown/JSON report.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cufm/dataset.hpp"
#include "cufm/device.hpp"
#include "cufm/model.hpp"

namespace cufm::bench {

// ---- command line ----------------------------------------------------------------------------
struct Options {
  int threads = 0;                     // CPU backend threads (0: all cores)
  bool smoke = false;                  // tiny sizes, one or two repeats: checks that every row runs
  std::vector<std::string> workloads;  // empty: all
  std::vector<std::string> backends;   // empty: all built (cpu, cuda-fp32, cuda-tf32, cuda-bf16)
  int steps = 0;               // measured training steps / sampling repeats per row (0: per-row default)
  int warmup = -1;             // warm-up steps / runs (-1: per-row default)
  int64_t quality_steps = -1;  // training steps before the quality check (-1: per-device default)
  bool full = false;           // measure the 20,000-step R1 training instead of extrapolating
  double budget_s = 0.0;       // sampling: stop repeating after this many s (0: CPU 60, GPU 10)
  std::string out_md;          // --out FILE
  std::string out_json;        // --json FILE
};

// Parses argv; prints `usage` and exits 0 on --help, throws cufm::Error on a bad argument.
Options parse_options(int argc, char** argv, const std::string& usage);

bool selected(const std::vector<std::string>& list, const std::string& name);

struct Report;
// The benchmark binaries' main(): bounds the CPU threads' spinning (cufm/device.hpp), parses the
// options into a Report named `name` and runs body on it, then writes the report when body returns
// 0; an error becomes one line naming the binary, and exit status 1. body's return value is the exit
// status (77: skipped, nothing written).
int bench_main(int argc, char** argv, const char* name, const std::string& usage,
               const std::function<int(Report&)>& body);

// ---- backends --------------------------------------------------------------------------------
struct Backend {
  std::string name;  // "cpu", "cpu-bf16", "cuda-fp32", "cuda-tf32", "cuda-bf16"
  Device device = Device::CPU;
  Precision precision = Precision::FP32;
  bool available = false;
  std::string reason;  // why not available
};

// Every backend this binary knows, with whether it can run here (and why not).
std::vector<Backend> backends(const Options& opt);

// ---- workloads -------------------------------------------------------------------------------
struct TrainWorkload {
  std::string id;       // "R1", "R2", ...
  std::string variant;  // "w64-b16384" etc.: unique with id; "" for single-row workloads
  MlpConfig model;
  int batch = 0;
  int cpu_steps = 0;  // default measured steps on the CPU (fixed per row)
  std::string data;   // "checkerboard" or "gmm64"
};

std::vector<TrainWorkload> train_workloads(const Options& opt);
std::string describe(const MlpConfig& m);

// The training data of a workload: the toy checkerboard (labelled by square, 8 classes) or, for
// D = 64, an 8-component Gaussian mixture (the same definition as bench/torch_baseline.py).
Dataset make_data(const std::string& kind, int dim, int64_t n, uint64_t seed);

// 6 * B * P: forward (2BP) + backward (4BP) multiply-adds of all layers.
double train_flop(const MlpConfig& m, int64_t batch);

// ---- timing ----------------------------------------------------------------------------------
struct Stats {
  int repeats = 0;
  double median = 0.0, min = 0.0, max = 0.0;  // seconds
};
Stats summarize(std::vector<double> seconds);
double now_s();

// ---- ceilings --------------------------------------------------------------------------------
struct Ceiling {
  std::string backend;  // "cpu", "cuda-fp32", ...
  std::string what;     // "oneDNN sgemm 4096x512x512 (...)"
  int m = 0, n = 0, k = 0;
  Stats time;
  double tflops = 0.0;  // at the median time
  bool ok = false;
  std::string reason;
};

// C[m,n] = A[m,k] * B[n,k]^T (a layer's forward) through the GEMM cuFM runs at `precision` (FP32: the
// sgemm provider; BF16: gemm_bf16), with `threads` threads.
Ceiling cpu_gemm_ceiling(Precision precision, int m, int n, int k, int threads, int repeats);
// cuBLAS GEMM in the given precision, timed with CUDA events; ok = false without a GPU.
Ceiling gpu_gemm_ceiling(Precision p, int m, int n, int k, int repeats);

// ---- report ----------------------------------------------------------------------------------
// A markdown table built row by row; the same rows also go to the JSON.
struct Table {
  std::string title;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> notes;
  std::string markdown() const;
};

std::string fmt(double v, int precision = 3);  // fixed-point with `precision` significant-ish digits
std::string fmt_si(double v);                  // 1.23e6 -> "1.23 M"

struct Report {
  std::string tool;  // "cufm_bench_train", ...
  Options opt;
  nlohmann::json json;
  std::vector<Table> tables;
  std::vector<std::string> preamble;

  explicit Report(std::string tool_name, const Options& options);
  // Prints the markdown to stdout and writes --out / --json.
  void finish() const;
};

// Measures the ceilings of every available backend (CPU: sgemm 4096x512x512; GPU: cuBLAS at
// 4096x512x512 and 8192^3 in the backend's precision), adds their table and JSON, and returns
// backend name -> TFLOP/s of the 4096x512x512 GEMM, the ceiling the workloads' FLOP/s are set against.
std::map<std::string, double> measure_ceilings(const std::vector<Backend>& bs, Report& rep);
// Notes (and JSON "skipped" entries) for the backends that cannot run here.
void note_skipped(const std::vector<Backend>& bs, Report& rep, Table& table);

// The machine and build, for the report header and the JSON "machine" object.
nlohmann::json machine_info(int threads);
int resolved_threads(int threads);

}  // namespace cufm::bench
