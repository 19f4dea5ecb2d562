// The cufm command-line tool: train, sample, eval, info. Every failure is one line on stderr and
// a non-zero exit; outputs are written to temporary names and renamed into place.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>

#include <unistd.h>

#include "cufm/cufm.hpp"
#include "host/cli/plot.hpp"

namespace fs = std::filesystem;

namespace {

constexpr const char* kCheckpointName = "checkpoint.safetensors";

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--";
  const long s = static_cast<long>(seconds + 0.5);
  std::ostringstream os;
  if (s >= 3600) os << s / 3600 << "h";
  if (s >= 60) os << (s / 60) % 60 << "m";
  os << s % 60 << "s";
  return os.str();
}

// A one-line progress bar on stderr: step, loss, samples/s and ETA.
class ProgressBar {
 public:
  ProgressBar(uint64_t first, uint64_t total, int batch, bool tty)
      : first_(first), total_(total), batch_(batch), tty_(tty), start_(std::chrono::steady_clock::now()) {}
  // Timed from the bar's creation: fit() runs once per checkpoint interval and restarts its clock.
  void update(const cufm::FitProgress& p) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double done = static_cast<double>(p.step - first_);
    const double rate = seconds > 0 ? done * batch_ / seconds : 0.0;
    const double eta = done > 0 ? seconds / done * static_cast<double>(total_ - p.step) : -1.0;
    const int width = 30;
    const int filled = total_ ? static_cast<int>(width * static_cast<double>(p.step) / static_cast<double>(total_)) : width;
    std::ostringstream os;
    os << "step " << p.step << "/" << total_ << " [" << std::string(filled, '=')
       << std::string(width - filled, ' ') << "] loss " << p.loss << "  " << static_cast<long>(rate)
       << " samples/s  ETA " << format_duration(eta);
    std::fprintf(stderr, tty_ ? "\r%s\033[K" : "%s\n", os.str().c_str());
    if (tty_ && p.step >= total_) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  uint64_t first_, total_;
  int batch_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
};

std::vector<int> parse_widths(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    int v = 0;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size()) throw cufm::Error("--hidden: '" + item + "' is not an integer width");
    out.push_back(v);
  }
  if (out.empty()) throw cufm::Error("--hidden: give comma-separated widths, e.g. 512,512,512,512");
  return out;
}

bool is_toy(const std::string& name) {
  for (const auto& t : cufm::toy_names()) {
    if (t == name) return true;
  }
  return false;
}

// A dataset from a toy name or a .npy path; its descriptor is stored in checkpoints for --resume.
struct DataSpec {
  std::string source;      // toy name or .npy path
  std::string labels;      // labels .npy (optional)
  int64_t n = 100000;      // toy size
  uint64_t seed = 0;

  std::string describe() const {
    if (is_toy(source)) return "toy:" + source + ":" + std::to_string(n) + ":" + std::to_string(seed);
    return "npy:" + source + (labels.empty() ? "" : ":" + labels);
  }
  static DataSpec parse(const std::string& d) {
    DataSpec s;
    if (d.rfind("toy:", 0) == 0) {
      std::stringstream ss(d.substr(4));
      std::string n, seed;
      std::getline(ss, s.source, ':');
      std::getline(ss, n, ':');
      std::getline(ss, seed, ':');
      s.n = std::stoll(n);
      s.seed = std::stoull(seed);
    } else if (d.rfind("npy:", 0) == 0) {
      const std::string rest = d.substr(4);
      const size_t colon = rest.find(':');
      s.source = rest.substr(0, colon);
      if (colon != std::string::npos) s.labels = rest.substr(colon + 1);
    } else {
      throw cufm::Error("checkpoint names its data as '" + d + "', which cufm cannot rebuild: pass --data");
    }
    return s;
  }
  cufm::Dataset load() const {
    if (is_toy(source)) return cufm::make_toy(source, n, seed);
    if (fs::path(source).extension() == ".npy") return cufm::load_npy_dataset(source, labels);
    std::string names;
    for (const auto& t : cufm::toy_names()) names += (names.empty() ? "" : ", ") + t;
    throw cufm::Error("--data '" + source + "' is neither a toy dataset (" + names + ") nor a .npy file");
  }
};

struct TrainArgs {
  DataSpec data;
  std::string hidden = "512,512,512,512", activation = "silu", optimizer = "adam", time_sampling = "uniform";
  std::string device = "auto", precision = "fp32", out = "cufm-run";
  int time_features = 0, batch = 4096, threads = 0;
  bool conditional = false, resume = false, quiet = false;
  uint64_t steps = 20000, checkpoint_every = 5000, log_every = 100, seed = 0;
  float lr = 1e-3f, weight_decay = 0.0f, grad_clip = 0.0f, ema = 0.0f, label_dropout = 0.1f, sigma_min = 0.0f;
  float logit_mean = 0.0f, logit_std = 1.0f;
};

int run_train(const TrainArgs& a, bool data_given) {
  const fs::path dir(a.out);
  const fs::path ckpt_path = dir / kCheckpointName;
  cufm::MlpConfig model;
  cufm::TrainConfig tc;
  cufm::TrainState state;
  DataSpec spec = a.data;
  if (!a.resume && !data_given) throw cufm::Error("train: --data is required (a toy name or a .npy file)");
  if (a.resume) {
    if (!fs::exists(ckpt_path)) throw cufm::Error("--resume: no checkpoint at " + ckpt_path.string());
    cufm::Checkpoint c = cufm::load_checkpoint(ckpt_path.string());
    model = c.model;
    tc = c.train;
    state = std::move(c.state);
    if (!data_given) spec = DataSpec::parse(c.dataset);
    std::fprintf(stderr, "resuming %s at step %llu\n", ckpt_path.c_str(), static_cast<unsigned long long>(state.step));
  } else {
    model.data_dim = 0;  // from the data
    model.hidden = parse_widths(a.hidden);
    model.activation = cufm::parse_activation(a.activation);
    model.time_features = a.time_features;
    tc.batch_size = a.batch;
    tc.seed = a.seed;
    tc.optim.kind = a.optimizer == "adamw" ? cufm::Optimizer::AdamW : cufm::Optimizer::Adam;
    if (a.optimizer != "adam" && a.optimizer != "adamw") throw cufm::Error("--optimizer must be adam or adamw, got '" + a.optimizer + "'");
    tc.optim.lr = a.lr;
    tc.optim.weight_decay = a.weight_decay;
    tc.optim.grad_clip = a.grad_clip;
    tc.optim.ema_decay = a.ema;
    tc.label_dropout = a.label_dropout;
    tc.path.sigma_min = a.sigma_min;
    if (a.time_sampling == "uniform") {
      tc.path.time_sampling = cufm::TimeSampling::Uniform;
    } else if (a.time_sampling == "logit-normal") {
      tc.path.time_sampling = cufm::TimeSampling::LogitNormal;
    } else {
      throw cufm::Error("--time-sampling must be uniform or logit-normal, got '" + a.time_sampling + "'");
    }
    tc.path.logit_mean = a.logit_mean;
    tc.path.logit_std = a.logit_std;
  }
  tc.device = cufm::parse_device(a.device);
  tc.precision = cufm::parse_precision(a.precision);
  tc.threads = a.threads;

  const cufm::Dataset data = spec.load();
  if (!a.resume) {
    model.data_dim = data.dim;
    model.num_classes = a.conditional ? data.num_classes : 0;
    if (a.conditional && !data.labelled()) throw cufm::Error("--conditional needs labelled data (--labels for .npy)");
  }
  if (a.resume && state.step >= a.steps) {
    std::fprintf(stderr, "checkpoint is at step %llu, already >= --steps %llu: nothing to do\n",
                 static_cast<unsigned long long>(state.step), static_cast<unsigned long long>(a.steps));
    return 0;
  }
  fs::create_directories(dir);
  cufm::Trainer trainer = a.resume ? cufm::Trainer(model, state, data, tc)
                                   : cufm::Trainer(cufm::Model(model, tc.seed), data, tc);
  std::fprintf(stderr, "training %s on %s: MLP %d-", spec.describe().c_str(), cufm::to_string(trainer.device()),
               model.input_dim());
  for (int w : model.hidden) std::fprintf(stderr, "%d-", w);
  std::fprintf(stderr, "%d (%s), batch %d, %llu steps\n", model.data_dim, cufm::to_string(model.activation),
               tc.batch_size, static_cast<unsigned long long>(a.steps));

  auto save = [&]() {
    cufm::Checkpoint c{model, tc, trainer.state(), spec.describe()};
    cufm::save_checkpoint(ckpt_path.string(), c);
  };
  ProgressBar bar(trainer.step_count(), a.steps, tc.batch_size, !a.quiet && isatty(fileno(stderr)));
  const uint64_t every = std::max<uint64_t>(1, a.log_every);
  while (trainer.step_count() < a.steps) {
    const uint64_t to_ckpt = a.checkpoint_every > 0 ? a.checkpoint_every - trainer.step_count() % a.checkpoint_every
                                                    : a.steps;
    const uint64_t chunk = std::min(a.steps - trainer.step_count(), to_ckpt);
    trainer.fit(chunk, [&](const cufm::FitProgress& p) {
      if (!std::isfinite(p.loss)) throw cufm::Error("the loss became non-finite at step " + std::to_string(p.step) + ": lower --lr or set --grad-clip");
      if (!a.quiet) bar.update(p);
    }, every);
    save();
  }
  std::printf("checkpoint: %s (step %llu, loss %.5f)\n", ckpt_path.c_str(),
              static_cast<unsigned long long>(trainer.step_count()), trainer.loss());
  return 0;
}

struct SampleArgs {
  std::string checkpoint, solver = "midpoint", device = "auto", precision = "fp32", out = "samples.npy", png;
  int64_t count = 50000;
  int steps = 20, threads = 0, label = -1;
  float atol = 1e-5f, rtol = 1e-5f;
  std::optional<float> guidance;
  bool ema = false;
  uint64_t seed = 0;
  double range = 4.5;
};

int run_sample(const SampleArgs& a) {
  const cufm::Checkpoint c = cufm::load_checkpoint(a.checkpoint);
  const cufm::Model model = c.to_model(a.ema ? cufm::Weights::Ema : cufm::Weights::Trained);
  cufm::SampleConfig sc;
  sc.count = a.count;
  sc.solver = cufm::parse_solver(a.solver);
  sc.steps = a.steps;
  sc.atol = a.atol;
  sc.rtol = a.rtol;
  if (a.label >= 0) sc.labels = {a.label};
  sc.guidance = a.guidance;
  sc.seed = a.seed;
  sc.device = cufm::parse_device(a.device);
  sc.precision = cufm::parse_precision(a.precision);
  sc.threads = a.threads;
  const auto start = std::chrono::steady_clock::now();
  const cufm::SampleResult r = cufm::sample(model, sc);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  cufm::write_npy(a.out, r.x.data(), {r.count, r.dim});
  std::string png = a.png;
  if (png.empty()) png = fs::path(a.out).replace_extension(".png").string();
  cufm::cli::PlotOptions opt;
  const float half = static_cast<float>(a.range);
  opt.range = cufm::cli::PlotRange{-half, half, -half, half};
  const cufm::cli::PlotStats ps = cufm::cli::write_density_png(png, r.x.data(), r.count, r.dim, opt);
  if (ps.non_finite > 0) {
    std::fprintf(stderr, "warning: %lld samples are not finite\n", static_cast<long long>(ps.non_finite));
  }
  std::printf("%lld samples (%s, %lld evaluations, %.3f s on %s): %s, %s\n", static_cast<long long>(r.count),
              a.solver.c_str(), static_cast<long long>(r.evaluations), secs, cufm::to_string(r.device),
              a.out.c_str(), png.c_str());
  return 0;
}

int run_eval(const std::string& samples_path, const DataSpec& spec, int projections, int64_t max_points, uint64_t seed) {
  const cufm::NpyArray arr = cufm::read_npy(samples_path);
  if (arr.shape.size() != 2) throw cufm::Error(samples_path + ": samples must be a 2-D array [N, D]");
  std::vector<float> s(arr.values.begin(), arr.values.end());
  const cufm::Dataset data = spec.load();
  if (data.dim != arr.shape[1]) {
    throw cufm::Error(samples_path + " has " + std::to_string(arr.shape[1]) + " dims but the data has " + std::to_string(data.dim));
  }
  const double sw2 = cufm::sliced_wasserstein2(s.data(), arr.shape[0], data.x.data(), data.n, data.dim, projections, seed);
  const double ed = cufm::energy_distance(s.data(), arr.shape[0], data.x.data(), data.n, data.dim, max_points, seed);
  std::printf("sliced_w2 %.6f\nenergy_distance %.6f\n", sw2, ed);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"cufm: train and sample flow-matching models on the GPU or the CPU"};
  app.require_subcommand(1);
  app.failure_message([](const CLI::App*, const CLI::Error& e) { return std::string("cufm: error: ") + e.what() + " (see --help)\n"; });

  TrainArgs ta;
  std::string toys;
  for (const auto& t : cufm::toy_names()) toys += (toys.empty() ? "" : ", ") + t;
  auto* train = app.add_subcommand("train", "Train a model and write checkpoints");
  train->add_option("--data", ta.data.source, "Toy dataset (" + toys + ") or a .npy file [N, D]");
  train->add_option("--labels", ta.data.labels, "Integer labels .npy [N] for --data .npy");
  train->add_option("--n-data", ta.data.n, "Points drawn for a toy dataset")->capture_default_str();
  train->add_option("--data-seed", ta.data.seed, "Seed of the toy dataset")->capture_default_str();
  train->add_option("--hidden", ta.hidden, "Hidden widths, comma-separated")->capture_default_str();
  train->add_option("--activation", ta.activation, "silu, relu or gelu")->capture_default_str();
  train->add_option("--time-features", ta.time_features, "0: raw t; K (even): K sinusoidal features")->capture_default_str();
  train->add_flag("--conditional", ta.conditional, "Condition on the data's labels (classifier-free guidance)");
  train->add_option("--label-dropout", ta.label_dropout, "Per-sample null-label probability")->capture_default_str();
  train->add_option("--steps", ta.steps, "Total training steps")->capture_default_str();
  train->add_option("--batch", ta.batch, "Batch size")->capture_default_str();
  train->add_option("--lr", ta.lr, "Learning rate")->capture_default_str();
  train->add_option("--optimizer", ta.optimizer, "adam or adamw")->capture_default_str();
  train->add_option("--weight-decay", ta.weight_decay, "Weight decay")->capture_default_str();
  train->add_option("--grad-clip", ta.grad_clip, "Clip the gradient norm (0: off)")->capture_default_str();
  train->add_option("--ema", ta.ema, "EMA decay of the weights (0: off)")->capture_default_str();
  train->add_option("--sigma-min", ta.sigma_min, "sigma_min of the path")->capture_default_str();
  train->add_option("--time-sampling", ta.time_sampling, "uniform or logit-normal")->capture_default_str();
  train->add_option("--logit-mean", ta.logit_mean, "Logit-normal mean")->capture_default_str();
  train->add_option("--logit-std", ta.logit_std, "Logit-normal std")->capture_default_str();
  train->add_option("--seed", ta.seed, "Seed of the initialisation and of every draw")->capture_default_str();
  train->add_option("--device", ta.device, "auto, cpu or cuda")->capture_default_str();
  train->add_option("--precision", ta.precision, "fp32, tf32 or bf16 (CUDA)")->capture_default_str();
  train->add_option("--threads", ta.threads, "CPU threads (0: all cores)")->capture_default_str();
  train->add_option("--out", ta.out, "Output directory")->capture_default_str();
  train->add_option("--checkpoint-every", ta.checkpoint_every, "Steps between checkpoints (0: only at the end)")->capture_default_str();
  train->add_option("--log-every", ta.log_every, "Steps between progress updates")->capture_default_str();
  train->add_flag("--resume", ta.resume, "Continue from <out>/checkpoint.safetensors");
  train->add_flag("--quiet", ta.quiet, "No progress bar");

  SampleArgs sa;
  auto* samp = app.add_subcommand("sample", "Sample from a checkpoint; writes .npy and a PNG");
  samp->add_option("checkpoint", sa.checkpoint, "Checkpoint (.safetensors)")->required();
  samp->add_option("--count", sa.count, "Number of samples")->capture_default_str();
  samp->add_option("--solver", sa.solver, "euler, midpoint, heun, rk4 or dopri5")->capture_default_str();
  samp->add_option("--steps", sa.steps, "Steps of a fixed-step solver")->capture_default_str();
  samp->add_option("--atol", sa.atol, "dopri5 absolute tolerance")->capture_default_str();
  samp->add_option("--rtol", sa.rtol, "dopri5 relative tolerance")->capture_default_str();
  samp->add_option("--class", sa.label, "Class label for a conditional model (-1: unconditional)")->capture_default_str();
  samp->add_option("--guidance", sa.guidance, "Classifier-free guidance scale w");
  samp->add_flag("--ema", sa.ema, "Use the EMA weights");
  samp->add_option("--seed", sa.seed, "Noise seed")->capture_default_str();
  samp->add_option("--device", sa.device, "auto, cpu or cuda")->capture_default_str();
  samp->add_option("--precision", sa.precision, "fp32, tf32 or bf16 (CUDA)")->capture_default_str();
  samp->add_option("--threads", sa.threads, "CPU threads (0: all cores)")->capture_default_str();
  samp->add_option("--out", sa.out, "Output .npy")->capture_default_str();
  samp->add_option("--png", sa.png, "Output PNG (default: the .npy's name with .png)");
  samp->add_option("--range", sa.range, "The PNG shows [-range, range]^2")->capture_default_str();

  std::string eval_samples;
  DataSpec eval_data;
  int projections = 256;
  int64_t max_points = 4000;
  uint64_t eval_seed = 0;
  auto* ev = app.add_subcommand("eval", "Distances between a sample file and a dataset");
  ev->add_option("samples", eval_samples, "Samples .npy [N, D]")->required();
  ev->add_option("--data", eval_data.source, "Toy dataset or .npy")->required();
  ev->add_option("--n-data", eval_data.n, "Points drawn for a toy dataset")->capture_default_str();
  ev->add_option("--data-seed", eval_data.seed, "Seed of the toy dataset")->capture_default_str();
  ev->add_option("--projections", projections, "Sliced W2 projections")->capture_default_str();
  ev->add_option("--max-points", max_points, "Energy distance: points per set")->capture_default_str();
  ev->add_option("--seed", eval_seed, "Seed of the projections and subsets")->capture_default_str();

  app.add_subcommand("info", "Version, build options and devices");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*train) return run_train(ta, train->count("--data") > 0);
    if (*samp) return run_sample(sa);
    if (*ev) return run_eval(eval_samples, eval_data, projections, max_points, eval_seed);
    std::printf("%s\n", cufm::build_summary().c_str());
    const auto devices = cufm::cuda_devices();
    if (devices.empty()) std::printf("GPUs: none found\n");
    for (const auto& d : devices) {
      std::printf("GPU %d: %s (sm_%d%d, %.1f GiB)%s\n", d.index, d.name.c_str(), d.sm_major, d.sm_minor,
                  static_cast<double>(d.total_memory) / (1 << 30),
                  d.usable ? "" : ": not usable, this build has no code for it");
    }
    std::printf("auto device: %s\n", cufm::to_string(cufm::resolve_device(cufm::Device::Auto)));
    return 0;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    for (char& ch : msg) {
      if (ch == '\n') ch = ' ';
    }
    std::fprintf(stderr, "cufm: error: %s\n", msg.c_str());
    return 1;
  }
}
