#include "bench/bench_common.hpp"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

#include "cufm/error.hpp"
#include "host/cpu/cpu_ops.hpp"

namespace cufm::bench {

// ---- command line ----------------------------------------------------------------------------
namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

int64_t parse_int(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  CUFM_REQUIRE(end && *end == '\0' && !v.empty(), flag << " expects an integer, got '" << v << "'");
  return x;
}

double parse_double(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  CUFM_REQUIRE(end && *end == '\0' && !v.empty(), flag << " expects a number, got '" << v << "'");
  return x;
}

}  // namespace

int bench_main(int argc, char** argv, const char* name, const std::string& usage,
               const std::function<int(Report&)>& body) {
  bound_cpu_thread_spinning(argc, argv);
  try {
    Report rep(name, parse_options(argc, argv, usage));
    const int status = body(rep);
    if (status == 0) rep.finish();
    return status;
  } catch (const std::exception& e) {
    std::cerr << name << ": " << e.what() << "\n";
    return 1;
  }
}

Options parse_options(int argc, char** argv, const std::string& usage) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    bool has_value = false;
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    auto next = [&]() -> std::string {
      if (has_value) return value;
      CUFM_REQUIRE(i + 1 < argc, arg << " needs a value (see --help)");
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::cout << usage;
      std::exit(0);
    } else if (arg == "--smoke") {
      o.smoke = true;
    } else if (arg == "--full") {
      o.full = true;
    } else if (arg == "--threads") {
      o.threads = static_cast<int>(parse_int(arg, next()));
      CUFM_REQUIRE(o.threads >= 0, "--threads must be >= 0 (0: all cores), got " << o.threads);
    } else if (arg == "--workloads") {
      o.workloads = split_list(next());
    } else if (arg == "--backends") {
      o.backends = split_list(next());
    } else if (arg == "--steps" || arg == "--repeats") {
      o.steps = static_cast<int>(parse_int(arg, next()));
      CUFM_REQUIRE(o.steps >= 1, arg << " must be >= 1, got " << o.steps);
    } else if (arg == "--warmup") {
      o.warmup = static_cast<int>(parse_int(arg, next()));
      CUFM_REQUIRE(o.warmup >= 0, "--warmup must be >= 0, got " << o.warmup);
    } else if (arg == "--quality-steps") {
      o.quality_steps = parse_int(arg, next());
      CUFM_REQUIRE(o.quality_steps >= 0, "--quality-steps must be >= 0 (0: skip), got " << o.quality_steps);
    } else if (arg == "--budget") {
      o.budget_s = parse_double(arg, next());
      CUFM_REQUIRE(o.budget_s > 0.0, "--budget must be > 0 seconds, got " << o.budget_s);
    } else if (arg == "--out") {
      o.out_md = next();
    } else if (arg == "--json") {
      o.out_json = next();
    } else {
      CUFM_FAIL("unknown argument '" << argv[i] << "' (see --help)");
    }
  }
  return o;
}

bool selected(const std::vector<std::string>& list, const std::string& name) {
  return list.empty() || std::find(list.begin(), list.end(), name) != list.end();
}

// ---- backends --------------------------------------------------------------------------------
std::vector<Backend> backends(const Options& opt) {
  std::vector<Backend> all;
  all.push_back(Backend{"cpu", Device::CPU, Precision::FP32, true, ""});
  const std::string no_bf16 = cpu_bf16_unavailable_reason();
  all.push_back(Backend{"cpu-bf16", Device::CPU, Precision::BF16, no_bf16.empty(), no_bf16});
  std::string cuda_reason;
  if (!cuda_built()) {
    cuda_reason = "CUDA backend not built (configure with -DCUFM_ENABLE_CUDA=ON)";
  } else if (cuda_devices().empty()) {
    cuda_reason = "no GPU visible to the CUDA runtime";
  }
  for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
    all.push_back(
        Backend{std::string("cuda-") + to_string(p), Device::CUDA, p, cuda_reason.empty(), cuda_reason});
  }
  std::vector<Backend> out;
  for (const Backend& b : all) {
    if (selected(opt.backends, b.name)) out.push_back(b);
  }
  for (const std::string& name : opt.backends) {
    const bool known = std::any_of(all.begin(), all.end(), [&](const Backend& b) { return b.name == name; });
    CUFM_REQUIRE(known, "--backends: unknown backend '"
                            << name << "': expected cpu, cpu-bf16, cuda-fp32, cuda-tf32 or cuda-bf16");
  }
  // A backend named explicitly must run: a GPU check that measured nothing is an error, not a pass.
  for (const Backend& b : out) {
    CUFM_REQUIRE(b.available || opt.backends.empty(),
                 "--backends " << b.name << ": not available here: " << b.reason);
  }
  return out;
}

// ---- workloads -------------------------------------------------------------------------------
namespace {

MlpConfig mlp(int dim, int width, int hidden_layers, int num_classes) {
  MlpConfig m;
  m.data_dim = dim;
  m.hidden.assign(static_cast<size_t>(hidden_layers), width);
  m.activation = Activation::SiLU;
  m.time_features = 0;
  m.num_classes = num_classes;
  return m;
}

}  // namespace

std::vector<TrainWorkload> train_workloads(const Options& opt) {
  std::vector<TrainWorkload> all;
  // CPU steps per row are fixed so that a full CPU run stays near 10 minutes on 2 cores:
  // ~0.15 s per R1/R4 step, ~1-2 s per B = 2^18 or R3 step.
  all.push_back({"R1", "", mlp(2, 512, 4, 0), 4096, 20, "checkerboard"});
  for (int width : {64, 128}) {
    for (int log_b : {14, 18}) {
      all.push_back({"R2", "w" + std::to_string(width) + "-b2^" + std::to_string(log_b), mlp(2, width, 5, 0),
                     1 << log_b, log_b == 14 ? 20 : 5, "checkerboard"});
    }
  }
  all.push_back({"R3", "", mlp(64, 1024, 4, 0), 8192, 5, "gmm64"});
  all.push_back({"R4", "", mlp(2, 512, 4, 8), 4096, 20, "checkerboard"});
  std::vector<TrainWorkload> out;
  for (TrainWorkload& w : all) {
    if (!selected(opt.workloads, w.id)) continue;
    if (opt.smoke) w.batch = std::min(w.batch, 256);  // same models, tiny batches
    out.push_back(w);
  }
  for (const std::string& id : opt.workloads) {
    CUFM_REQUIRE(id == "R1" || id == "R2" || id == "R3" || id == "R4",
                 "--workloads: unknown workload '" << id << "': expected R1, R2, R3 or R4");
  }
  return out;
}

std::string describe(const MlpConfig& m) {
  std::ostringstream os;
  os << "D=" << m.data_dim << " in=" << m.input_dim();
  int width = m.hidden.empty() ? 0 : m.hidden[0];
  os << " " << m.hidden.size() << "x" << width << " " << to_string(m.activation);
  if (m.num_classes > 0) os << " " << m.num_classes << " classes";
  return os.str();
}

Dataset make_data(const std::string& kind, int dim, int64_t n, uint64_t seed) {
  if (kind == "checkerboard") {
    CUFM_REQUIRE(dim == 2, "the checkerboard is 2D, asked for dim " << dim);
    return make_toy("checkerboard", n, seed);
  }
  CUFM_REQUIRE(kind == "gmm64", "unknown bench data '" << kind << "'");
  // 8 centres with N(0, 2^2) coordinates (fixed by the seed), points = centre + N(0, 0.5^2 I).
  constexpr int kModes = 8;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> centres(static_cast<size_t>(kModes) * dim);
  for (float& c : centres) c = 2.0f * normal(rng);
  Dataset d;
  d.name = "gmm" + std::to_string(dim);
  d.n = n;
  d.dim = dim;
  d.num_classes = kModes;
  d.x.resize(static_cast<size_t>(n) * dim);
  d.labels.resize(static_cast<size_t>(n));
  std::uniform_int_distribution<int> mode(0, kModes - 1);
  for (int64_t i = 0; i < n; ++i) {
    const int k = mode(rng);
    d.labels[static_cast<size_t>(i)] = k;
    for (int j = 0; j < dim; ++j) {
      d.x[static_cast<size_t>(i) * dim + j] = centres[static_cast<size_t>(k) * dim + j] + 0.5f * normal(rng);
    }
  }
  return d;
}

double train_flop(const MlpConfig& m, int64_t batch) {
  return 6.0 * static_cast<double>(batch) * static_cast<double>(ParamLayout(m).total());
}

// ---- timing ----------------------------------------------------------------------------------
Stats summarize(std::vector<double> s) {
  Stats st;
  st.repeats = static_cast<int>(s.size());
  if (s.empty()) return st;
  std::sort(s.begin(), s.end());
  const size_t h = s.size() / 2;
  st.median = s.size() % 2 ? s[h] : 0.5 * (s[h - 1] + s[h]);
  st.min = s.front();
  st.max = s.back();
  return st;
}

double now_s() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

// ---- ceilings --------------------------------------------------------------------------------
// The CPU GEMM cuFM runs at `precision` (FP32: the sgemm provider; BF16: gemm_bf16) on a row-major
// x W^T of m x n x k, median of `repeats` calls after 3 warm-up calls.
Ceiling cpu_gemm_ceiling(Precision precision, int m, int n, int k, int threads, int repeats) {
  const bool bf16 = precision == Precision::BF16;
  Ceiling c;
  c.backend = bf16 ? "cpu-bf16" : "cpu";
  c.m = m;
  c.n = n;
  c.k = k;
  std::ostringstream what;
  if (bf16) {
    what << "oneDNN bf16 matmul " << m << "x" << n << "x" << k << " (" << resolved_threads(threads)
         << " threads, fp32 accumulation, in cuFM's fixed 256x256 tiles; the GEMM cuFM runs)";
  } else {
    what << cpu::gemm_provider_for(m, n, k) << " sgemm " << m << "x" << n << "x" << k << " ("
         << resolved_threads(threads) << " threads; the GEMM cuFM runs)";
  }
  c.what = what.str();
  cpu::set_threads(threads);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> a(static_cast<size_t>(m) * k), b(static_cast<size_t>(n) * k),
      out(static_cast<size_t>(m) * n);
  for (float& v : a) v = u(rng);
  for (float& v : b) v = u(rng);
  std::vector<uint16_t> a16(bf16 ? a.size() : 0), b16(bf16 ? b.size() : 0);
  if (bf16) {
    cpu::round_to_bf16(a.data(), static_cast<int64_t>(a.size()), a16.data());
    cpu::round_to_bf16(b.data(), static_cast<int64_t>(b.size()), b16.data());
  }
  auto gemm = [&] {
    if (bf16) {
      cpu::gemm_bf16(false, true, m, n, k, a16.data(), k, b16.data(), k, false, out.data(), n);
    } else {
      cpu::sgemm(false, true, m, n, k, 1.0f, a.data(), k, b.data(), k, 0.0f, out.data(), n);
    }
  };
  for (int i = 0; i < 3; ++i) gemm();  // warm-up: thread pool, page faults, caches
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const double t0 = now_s();
    gemm();
    times.push_back(now_s() - t0);
  }
  c.time = summarize(times);
  c.tflops = 2.0 * m * n * static_cast<double>(k) / c.time.median * 1e-12;
  c.ok = std::isfinite(out[0]) && c.time.median > 0.0;
  if (!c.ok) c.reason = "the GEMM produced a non-finite value";
  return c;
}

#if !defined(CUFM_WITH_CUDA)
Ceiling gpu_gemm_ceiling(Precision p, int m, int n, int k, int) {
  Ceiling c;
  c.backend = std::string("cuda-") + to_string(p);
  c.m = m;
  c.n = n;
  c.k = k;
  c.what = "cuBLAS GEMM";
  c.reason = "CUDA backend not built";
  return c;
}
#endif

// ---- report ----------------------------------------------------------------------------------
std::string fmt(double v, int precision) {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", precision, v);
  return buf;
}

std::string fmt_si(double v) {
  if (!std::isfinite(v)) return "n/a";
  const char* suffix[] = {"", " k", " M", " G", " T"};
  int i = 0;
  while (std::fabs(v) >= 1000.0 && i < 4) {
    v /= 1000.0;
    ++i;
  }
  return fmt(v, 3) + suffix[i];
}

std::string Table::markdown() const {
  std::ostringstream os;
  os << "### " << title << "\n\n|";
  for (const std::string& h : header) os << " " << h << " |";
  os << "\n|";
  for (size_t i = 0; i < header.size(); ++i) os << (i == 0 ? " --- |" : " ---: |");
  os << "\n";
  for (const auto& r : rows) {
    os << "|";
    for (const std::string& cell : r) os << " " << cell << " |";
    os << "\n";
  }
  if (!notes.empty()) os << "\n";
  for (const std::string& n : notes) os << "- " << n << "\n";
  return os.str();
}

int resolved_threads(int threads) {
  return threads > 0 ? threads : omp_get_num_procs();
}

nlohmann::json machine_info(int threads) {
  nlohmann::json m;
  std::string model = "unknown";
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) model = line.substr(colon + 2);
      break;
    }
  }
  m["cpu_model"] = model;
  m["logical_cpus"] = static_cast<int>(std::thread::hardware_concurrency());
  m["threads"] = resolved_threads(threads);
  m["cufm_version"] = version();
  std::string build = build_summary();
  std::replace(build.begin(), build.end(), '\n', ';');
  m["build"] = build;
  nlohmann::json gpus = nlohmann::json::array();
  for (const DeviceInfo& d : cuda_devices()) {
    gpus.push_back({{"index", d.index},
                    {"name", d.name},
                    {"sm", std::to_string(d.sm_major) + std::to_string(d.sm_minor)},
                    {"memory_gib", static_cast<double>(d.total_memory) / (1024.0 * 1024.0 * 1024.0)}});
  }
  m["gpus"] = gpus;
  return m;
}

Report::Report(std::string tool_name, const Options& options) : tool(std::move(tool_name)), opt(options) {
  json["tool"] = tool;
  json["source"] = "cufm";
  json["smoke"] = opt.smoke;
  json["machine"] = machine_info(opt.threads);
  const nlohmann::json& m = json["machine"];
  preamble.push_back("Build: " + m["build"].get<std::string>());
  preamble.push_back("CPU: " + m["cpu_model"].get<std::string>() + ", " +
                     std::to_string(m["logical_cpus"].get<int>()) + " logical CPUs, " +
                     std::to_string(m["threads"].get<int>()) + " threads used");
  for (const auto& g : m["gpus"])
    preamble.push_back("GPU " + std::to_string(g["index"].get<int>()) + ": " + g["name"].get<std::string>() +
                       " (sm_" + g["sm"].get<std::string>() + ")");
  if (m["gpus"].empty()) preamble.push_back("GPU: none");
  if (opt.smoke) preamble.push_back("SMOKE RUN: tiny sizes and repeat counts, the timings mean nothing");
}

void Report::finish() const {
  std::ostringstream md;
  md << "## " << tool << "\n\n";
  for (const std::string& p : preamble) md << "- " << p << "\n";
  md << "\n";
  for (const Table& t : tables) md << t.markdown() << "\n";
  std::cout << md.str() << std::flush;
  if (!opt.out_md.empty()) {
    std::ofstream f(opt.out_md);
    CUFM_REQUIRE(f, "cannot open --out file '" << opt.out_md << "' for writing");
    f << md.str();
  }
  if (!opt.out_json.empty()) {
    std::ofstream f(opt.out_json);
    CUFM_REQUIRE(f, "cannot open --json file '" << opt.out_json << "' for writing");
    f << json.dump(2) << "\n";
  }
}

}  // namespace cufm::bench

namespace cufm::bench {

std::map<std::string, double> measure_ceilings(const std::vector<Backend>& bs, Report& rep) {
  const int repeats = rep.opt.smoke ? 3 : 20;
  std::vector<Ceiling> all;
  std::map<std::string, double> out;
  for (const Backend& b : bs) {
    if (!b.available) continue;
    if (b.device == Device::CPU) {
      all.push_back(cpu_gemm_ceiling(b.precision, 4096, 512, 512, rep.opt.threads, repeats));
      if (all.back().ok) out[b.name] = all.back().tflops;
    } else {
      all.push_back(gpu_gemm_ceiling(b.precision, 4096, 512, 512, repeats * 5));
      if (all.back().ok) out[b.name] = all.back().tflops;
      const int big = rep.opt.smoke ? 1024 : 8192;
      all.push_back(gpu_gemm_ceiling(b.precision, big, big, big, repeats));
    }
  }
  Table t;
  t.title = "GEMM ceilings (measured in this run)";
  t.header = {"Backend", "GEMM", "M x N x K", "Repeats", "Median ms", "TFLOP/s"};
  nlohmann::json js = nlohmann::json::array();
  for (const Ceiling& c : all) {
    const std::string shape = std::to_string(c.m) + " x " + std::to_string(c.n) + " x " + std::to_string(c.k);
    if (c.ok) {
      t.rows.push_back({c.backend, c.what, shape, std::to_string(c.time.repeats), fmt(c.time.median * 1e3, 4),
                        fmt(c.tflops, 4)});
    } else {
      t.rows.push_back({c.backend, c.what, shape, "-", "-", "failed: " + c.reason});
    }
    js.push_back({{"backend", c.backend},
                  {"what", c.what},
                  {"m", c.m},
                  {"n", c.n},
                  {"k", c.k},
                  {"ok", c.ok},
                  {"reason", c.reason},
                  {"repeats", c.time.repeats},
                  {"median_s", c.time.median},
                  {"tflops", c.tflops}});
  }
  t.notes.push_back(
      "Row-major C[M,N] = A[M,K] B[N,K]^T, the shape of a width-512 layer's forward at batch 4096; "
      "the workloads' \"% of ceiling\" is against the 4096 x 512 x 512 GEMM of the same backend.");
  rep.json["ceilings"] = js;
  rep.tables.push_back(t);
  return out;
}

void note_skipped(const std::vector<Backend>& bs, Report& rep, Table& table) {
  if (!rep.json.contains("skipped")) rep.json["skipped"] = nlohmann::json::array();
  for (const Backend& b : bs) {
    if (b.available) continue;
    table.notes.push_back(b.name + ": skipped, " + b.reason);
    bool listed = false;
    for (const auto& s : rep.json["skipped"]) listed = listed || s["backend"] == b.name;
    if (!listed) rep.json["skipped"].push_back({{"backend", b.name}, {"reason", b.reason}});
  }
}

}  // namespace cufm::bench
