// The cufm subcommands' work, after parse_command_line has checked their arguments.
#include "host/cli/commands.hpp"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

#include "cufm/cufm.hpp"
#include "host/atomic_file.hpp"
#include "host/cli/plot.hpp"
#include "host/cli/run_lock.hpp"
#include "host/divergence_flow.hpp"

namespace cufm::cli {
namespace fs = std::filesystem;

namespace {

constexpr const char* kCheckpointName = "checkpoint.safetensors";

// A .npy of finite points [N, dim] as floats; `what` names the option in errors.
std::vector<float> read_points(const std::string& path, const char* what, int dim) {
  const NpyArray arr = read_npy(path);
  std::ostringstream shape;
  for (size_t i = 0; i < arr.shape.size(); ++i) shape << (i ? ", " : "") << arr.shape[i];
  CUFM_REQUIRE(arr.shape.size() == 2 && arr.shape[0] >= 1 && arr.shape[1] == dim,
               what << " '" << path << "': expected points [N, " << dim
                    << "] (the model's data_dim), got shape [" << shape.str() << "]");
  std::vector<float> x(arr.values.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = static_cast<float>(arr.values[i]);
    CUFM_REQUIRE(std::isfinite(x[i]), what << " '" << path << "': value " << i << " (row " << i / dim
                                           << ") is not a finite float32: " << arr.values[i]);
  }
  return x;
}

// A --context file for n points of a model with a context of K: one row ([K] or [1, K]) for all,
// or [n, K], finite.
std::vector<float> read_context(const std::string& path, const MlpConfig& m, int64_t n) {
  CUFM_REQUIRE(m.context_dim > 0, "--context given, but the checkpoint's model has no context");
  int64_t rows = 0, cols = 0;
  std::vector<float> c = read_npy_matrix(path, "--context", rows, cols, /*one_row_ok=*/true);
  CUFM_REQUIRE(cols == m.context_dim && (rows == 1 || rows == n),
               "--context '" << path << "': expected one row of " << m.context_dim
                             << " (the model's context_dim) or [" << n << ", " << m.context_dim << "], got ["
                             << rows << ", " << cols << "]");
  for (size_t i = 0; i < c.size(); ++i) {
    CUFM_REQUIRE(std::isfinite(c[i]),
                 "--context '" << path << "': value " << i << " (row " << i / cols << ") is not finite");
  }
  return c;
}

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
  void update(const FitProgress& p) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double done = static_cast<double>(p.step - first_);
    const double rate = seconds > 0 ? done * batch_ / seconds : 0.0;
    const double eta = done > 0 ? seconds / done * static_cast<double>(total_ - p.step) : -1.0;
    const int width = 30;
    const int filled =
        total_ ? static_cast<int>(width * static_cast<double>(p.step) / static_cast<double>(total_)) : width;
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

int clamp_threads(int threads, const char* what) {
  const int cap = max_threads();
  if (threads <= cap) return threads;
  std::fprintf(stderr, "cufm: %s: --threads %d is more than 4x this machine's cores; using %d\n", what,
               threads, cap);
  return cap;
}

std::string widths_text(const std::vector<int>& w) {
  std::string s;
  for (int v : w) s += (s.empty() ? "" : ",") + std::to_string(v);
  return s;
}

// A value as the user would type it: a float in the fewest digits that read back as that float.
template <typename T>
std::string value_text(const T& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}
std::string value_text(float v) {
  for (int digits = 6;; ++digits) {
    std::ostringstream os;
    os.precision(digits);
    os << v;
    if (digits >= 9 || std::stof(os.str()) == v) return os.str();
  }
}

// A flag given on --resume must agree with the checkpoint: a resumed run keeps its recipe.
template <typename T, typename U>
void require_same(const TrainArgs& a, const char* option, const T& given, const U& recorded) {
  if (!a.was_given(option) || given == recorded) return;
  std::ostringstream os;
  os << option << " " << value_text(given) << " differs from the checkpoint's " << value_text(recorded)
     << ": a resumed run keeps its recipe (drop " << option << ", or start afresh with --overwrite)";
  throw Error(os.str());
}

// The checkpoint's recipe against every recipe flag given with --resume, and its data against
// --data. Steps, threads, device, precision, logging and checkpoint spacing may change.
void check_resume_flags(const TrainArgs& a, const Checkpoint& c) {
  const MlpConfig& m = c.model;
  const TrainConfig& t = c.train;
  require_same(a, "--hidden", widths_text(a.hidden_widths), widths_text(m.hidden));
  require_same(a, "--activation", std::string(to_string(parse_activation(a.activation))),
               std::string(to_string(m.activation)));
  require_same(a, "--time-features", a.time_features, m.time_features);
  require_same(a, "--conditional", std::string(a.conditional ? "on" : "off"),
               std::string(m.num_classes > 0 ? "on" : "off"));
  require_same(a, "--label-dropout", a.label_dropout, t.label_dropout);
  require_same(a, "--context-dropout", a.context_dropout, t.context_dropout);
  require_same(a, "--coupling", std::string(to_string(parse_coupling(a.coupling))),
               std::string(to_string(t.coupling)));
  require_same(a, "--ot-reg", a.ot_reg, t.ot_reg);
  require_same(a, "--batch", a.batch, t.batch_size);
  require_same(a, "--lr", a.lr, t.optim.lr);
  require_same(a, "--optimizer", a.optimizer,
               std::string(to_string(t.optim.kind)));
  require_same(a, "--weight-decay", a.weight_decay, t.optim.weight_decay);
  require_same(a, "--grad-clip", a.grad_clip, t.optim.grad_clip);
  require_same(a, "--ema", a.ema, t.optim.ema_decay);
  require_same(a, "--sigma-min", a.sigma_min, t.path.sigma_min);
  require_same(a, "--time-sampling", a.time_sampling,
               std::string(to_string(t.path.time_sampling)));
  require_same(a, "--logit-mean", a.logit_mean, t.path.logit_mean);
  require_same(a, "--logit-std", a.logit_std, t.path.logit_std);
  require_same(a, "--seed", a.seed, t.seed);
  require_same(a, "--lr-schedule", std::string(to_string(parse_lr_schedule(a.lr_schedule))),
               std::string(to_string(t.optim.lr_schedule)));
  require_same(a, "--warmup-steps", a.warmup_steps, t.optim.warmup_steps);
  require_same(a, "--decay-steps", a.decay_steps, t.optim.decay_steps);
  require_same(a, "--min-lr", a.min_lr, t.optim.min_lr);
}

// The data of a resumed run: the checkpoint's, and --data (and its options) only to repeat it.
DataSpec resume_data(const TrainArgs& a, const Checkpoint& c) {
  FileStamp data_stamp, labels_stamp, context_stamp;
  DataSpec recorded;
  try {
    recorded = DataSpec::parse(c.dataset, &data_stamp, &labels_stamp, &context_stamp);
  } catch (const Error& e) {
    if (!a.was_given("--data")) throw;
    // A checkpoint written through the library records its data in free text: take --data's word.
    std::fprintf(stderr, "cufm: warning: %s; resuming on --data %s as given\n", e.message().c_str(),
                 spec_text(a.data).c_str());
    return a.data;
  }
  if (a.was_given("--data")) {
    const DataSpec& given = a.data;
    // The same file: the same path, the same inode, or (moved) the same size and CRC-32.
    const auto same_file = [](const std::string& path, const std::string& recorded_path,
                              const FileStamp& stamp) {
      std::error_code ec;
      if (fs::absolute(path, ec).lexically_normal() == fs::absolute(recorded_path, ec).lexically_normal())
        return true;
      if (fs::equivalent(path, recorded_path, ec)) return true;
      if (!stamp.known) return false;
      const FileStamp now = stamp_file(path);
      return now.size == stamp.size && now.crc32 == stamp.crc32;
    };
    bool same = given.is_toy() == recorded.is_toy();
    if (same && given.is_toy()) {
      same = given.source == recorded.source && (!a.was_given("--n-data") || given.n == recorded.n) &&
             (!a.was_given("--data-seed") || given.seed == recorded.seed);
    } else if (same) {
      same = same_file(given.source, recorded.source, data_stamp) &&
             (!a.was_given("--labels") || same_file(given.labels, recorded.labels, labels_stamp)) &&
             (!a.was_given("--context") || same_file(given.context, recorded.context, context_stamp));
    }
    CUFM_REQUIRE(same, "--data " << spec_text(given) << " differs from the checkpoint's data "
                                 << spec_text(recorded)
                                 << ": a resumed run trains on the same data (drop --data, or start afresh "
                                    "with --overwrite)");
    if (!given.is_toy()) {
      // The file the user named now (it may have moved): read from there, checked against the stamp.
      recorded.source = given.source;
      if (a.was_given("--labels")) recorded.labels = given.labels;
      data_stamp.path = given.source;
      if (labels_stamp.known && a.was_given("--labels")) labels_stamp.path = given.labels;
      if (a.was_given("--context")) recorded.context = given.context;
      if (context_stamp.known && a.was_given("--context")) context_stamp.path = given.context;
    }
  }
  // A .npy file must still hold what it held when the checkpoint was written; the stamps read
  // here are the new checkpoint's (describe() does not read the files again).
  for (auto [st, kept] :
       {std::pair{&data_stamp, &recorded.source_stamp}, std::pair{&labels_stamp, &recorded.labels_stamp},
        std::pair{&context_stamp, &recorded.context_stamp}}) {
    if (!st->known) continue;
    const FileStamp now = stamp_file(st->path);
    *kept = now;
    CUFM_REQUIRE(
        now.size == st->size && now.crc32 == st->crc32,
        "'" << st->path << "' changed since the checkpoint was written (size " << st->size << " -> "
            << now.size << ", CRC-32 " << st->crc32 << " -> " << now.crc32
            << "): a resumed run must see the same data; start afresh with --overwrite to train on it");
  }
  return recorded;
}

}  // namespace

int run_train(const TrainArgs& a) {
  const fs::path dir(a.out);
  const fs::path ckpt_path = dir / kCheckpointName;
  // The lock first: it creates the folder if needed and proves it writable, before any work.
  RunLock lock(a.out);
  std::error_code ec;
  const bool has_checkpoint = fs::exists(fs::symlink_status(ckpt_path, ec));
  CUFM_REQUIRE(a.resume || a.overwrite || !has_checkpoint,
               "'" << ckpt_path.string()
                   << "' already exists: pass --resume to continue that run, --overwrite to start afresh, "
                      "or choose another --out");
  detail::require_writable_target(ckpt_path.string(), "the checkpoint");

  MlpConfig model;
  TrainConfig tc;
  TrainState state;
  DataSpec spec = a.data;
  if (a.resume) {
    CUFM_REQUIRE(has_checkpoint, "--resume: no checkpoint at " << ckpt_path.string());
    Checkpoint c = load_checkpoint(ckpt_path.string());
    check_resume_flags(a, c);
    spec = resume_data(a, c);
    model = c.model;
    tc = c.train;
    state = std::move(c.state);
    if (!a.quiet) {
      std::fprintf(stderr, "resuming %s at step %llu\n", ckpt_path.c_str(),
                   static_cast<unsigned long long>(state.step));
    }
  } else {
    model = model_from(a);
    tc = recipe_from(a);
  }
  RunOptions run;  // where this run goes, whatever the checkpoint's ran on
  run.device = parse_device(a.device);
  run.precision = parse_precision(a.precision);
  run.threads = clamp_threads(a.threads, "train");
  if (a.resume && state.step >= a.steps) {
    std::fprintf(stderr, "the checkpoint is at step %llu, already >= --steps %llu: nothing to do\n",
                 static_cast<unsigned long long>(state.step), static_cast<unsigned long long>(a.steps));
    return 0;
  }

  // The data's descriptor (its files' CRC-32s) before the data is read: a file that changes in
  // between is caught at the next resume, not recorded as what the model saw.
  const std::string descriptor = spec.describe();
  const Dataset data = spec.load();
  if (!a.resume) {
    model.data_dim = data.dim;
    CUFM_REQUIRE(!a.conditional || data.labelled(),
                 "--conditional needs labelled data (--labels for a .npy file)");
    model.num_classes = a.conditional ? data.num_classes : 0;
    model.context_dim = data.context_dim;
  }
  Trainer trainer =
      a.resume ? Trainer(model, state, data, tc, run) : Trainer(Model(model, tc.seed), data, tc, run);
  if (!a.quiet) {
    std::fprintf(
        stderr, "training %s on %s%s: MLP %d-", spec_text(spec).c_str(), to_string(trainer.device()),
        run.precision == Precision::FP32 ? "" : (std::string(" (") + to_string(run.precision) + ")").c_str(),
        model.input_dim());
    for (int w : model.hidden) std::fprintf(stderr, "%d-", w);
    std::fprintf(stderr, "%d (%s, %s), batch %d, %llu steps\n", model.data_dim, to_string(model.activation),
                 trainer.mlp().c_str(), tc.batch_size, static_cast<unsigned long long>(a.steps));
  }

  auto save = [&]() {
    save_checkpoint(ckpt_path.string(), Checkpoint{model, tc, trainer.state(), descriptor});
    lock.keep();
  };
  if (a.steps == 0) {  // the initial weights, as a checkpoint
    save();
    if (!a.quiet) std::printf("checkpoint: %s (step 0: the initial weights)\n", ckpt_path.c_str());
    return 0;
  }
  ProgressBar bar(trainer.step_count(), a.steps, tc.batch_size, !a.quiet && isatty(fileno(stderr)));
  const uint64_t every = std::max<uint64_t>(1, a.log_every);
  while (trainer.step_count() < a.steps) {
    const uint64_t to_ckpt =
        a.checkpoint_every > 0 ? a.checkpoint_every - trainer.step_count() % a.checkpoint_every : a.steps;
    const uint64_t chunk = std::min(a.steps - trainer.step_count(), to_ckpt);
    trainer.fit(
        chunk,
        [&](const FitProgress& p) {
          if (!std::isfinite(p.loss)) {
            throw Error("the loss became non-finite at step " + std::to_string(p.step) +
                        ": lower --lr or set --grad-clip");
          }
          if (!a.quiet) bar.update(p);
        },
        every);
    save();
  }
  if (!a.quiet) {
    std::printf("checkpoint: %s (step %llu, loss %.5f)\n", ckpt_path.c_str(),
                static_cast<unsigned long long>(trainer.step_count()), trainer.loss());
  }
  return 0;
}

int run_sample(const SampleArgs& a) {
  const Checkpoint c = load_checkpoint(a.checkpoint);
  const Model model = c.to_model(a.ema ? Weights::Ema : Weights::Trained);
  SampleConfig sc;
  sc.count = a.count;
  sc.solver = parse_solver(a.solver);
  sc.steps = a.steps;
  sc.atol = a.atol;
  sc.rtol = a.rtol;
  if (a.label) sc.labels = {*a.label};
  sc.guidance = a.guidance;
  sc.seed = a.seed;
  sc.device = parse_device(a.device);
  sc.precision = parse_precision(a.precision);
  sc.threads = clamp_threads(a.threads, "sample");
  sc.t0 = a.t0;
  sc.t1 = a.t1;
  sc.with_log_prob = !a.log_prob.empty();
  sc.divergence = parse_divergence(a.divergence);
  sc.probes = a.probes;
  std::vector<float> x0;
  if (!a.x0.empty()) {
    x0 = read_points(a.x0, "--x0", model.config().data_dim);
    sc.count = static_cast<int64_t>(x0.size()) / model.config().data_dim;
  }
  if (!a.context.empty()) sc.context = read_context(a.context, model.config(), sc.count);
  sc.validate(model.config());  // the class and the context against the model, before any work
  const auto start = std::chrono::steady_clock::now();
  const SampleResult r = a.x0.empty() ? sample(model, sc) : integrate(model, x0, sc);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  write_npy(a.out, r.x.data(), {r.count, r.dim});
  if (sc.with_log_prob) write_npy(a.log_prob, r.log_prob.data(), {r.count});
  // A picture where it shows the samples (1-D: a histogram, 2-D: their density), or where --png asks
  // for one (the first two coordinates).
  const bool picture = !a.no_png && (a.png_given || r.dim <= 2);
  int64_t non_finite = 0;  // points with a NaN or Inf coordinate
  for (int64_t i = 0; i < r.count; ++i) {
    bool finite = true;
    for (int d = 0; d < r.dim; ++d) finite = finite && std::isfinite(r.x[static_cast<size_t>(i) * r.dim + d]);
    non_finite += finite ? 0 : 1;
  }
  if (picture) {
    PlotOptions opt;
    const float half = static_cast<float>(a.range);
    opt.range = PlotRange{-half, half, -half, half};
    (void)(r.dim == 1 ? write_histogram_png(a.png, r.x.data(), r.count, opt)
                      : write_density_png(a.png, r.x.data(), r.count, r.dim, opt));
  }
  if (non_finite > 0) {
    std::fprintf(stderr, "warning: %lld samples are not finite\n", static_cast<long long>(non_finite));
  }
  if (!a.quiet) {
    std::printf("%lld samples (%s, %lld evaluations, %.3f s on %s, %s): %s%s%s\n",
                static_cast<long long>(r.count), a.solver.c_str(), static_cast<long long>(r.evaluations), secs,
                to_string(r.device), r.mlp.c_str(), a.out.c_str(), picture ? ", " : "",
                picture ? a.png.c_str() : "");
  }
  return 0;
}

namespace {
// The checkpoint's model (trained or EMA weights), with --class checked against its classes.
Model model_for_points(const std::string& checkpoint, bool ema, const std::optional<int>& label) {
  const Model model = load_checkpoint(checkpoint).to_model(ema ? Weights::Ema : Weights::Trained);
  const MlpConfig& m = model.config();
  CUFM_REQUIRE(!label || m.num_classes > 0, "--class given, but the checkpoint's model is unconditional");
  CUFM_REQUIRE(!label || *label < m.num_classes,
               "--class " << *label << " is outside the model's classes [0, " << m.num_classes << ")");
  return model;
}
}  // namespace

int run_velocity(const VelocityArgs& a) {
  const Model model = model_for_points(a.checkpoint, a.ema, a.label);
  const MlpConfig& m = model.config();
  const std::vector<float> x = read_points(a.x, "--x", m.data_dim);
  const int64_t n = static_cast<int64_t>(x.size()) / m.data_dim;
  FieldOptions o;
  o.guidance = a.guidance;
  o.device = parse_device(a.device);
  o.precision = parse_precision(a.precision);
  o.threads = clamp_threads(a.threads, "velocity");
  std::vector<float> context;
  if (!a.context.empty())
    context = detail::context_per_point(read_context(a.context, m, n), m.context_dim, n);
  VelocityField field(model, o);
  std::vector<int32_t> labels;
  if (a.label) labels.assign(static_cast<size_t>(n), *a.label);
  std::vector<float> v(x.size());
  const auto start = std::chrono::steady_clock::now();
  field.evaluate(a.t, x.data(), labels.empty() ? nullptr : labels.data(),
                 context.empty() ? nullptr : context.data(), n, v.data());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  write_npy(a.out, v.data(), {n, m.data_dim});
  std::printf("velocity at %lld points, t = %g (%.3f s on %s): %s\n", static_cast<long long>(n),
              static_cast<double>(a.t), secs, to_string(field.device()), a.out.c_str());
  return 0;
}

int run_logprob(const LogProbArgs& a) {
  const Model model = model_for_points(a.checkpoint, a.ema, a.label);
  const MlpConfig& m = model.config();
  const std::vector<float> x = read_points(a.points, "the points", m.data_dim);
  LogProbConfig lc;
  lc.solver = parse_solver(a.solver);
  lc.steps = a.steps;
  lc.atol = a.atol;
  lc.rtol = a.rtol;
  lc.divergence = parse_divergence(a.divergence);
  lc.probes = a.probes;
  lc.seed = a.seed;
  if (a.label) lc.labels = {*a.label};
  if (!a.context.empty()) {
    lc.context = read_context(a.context, m, static_cast<int64_t>(x.size()) / m.data_dim);
  }
  lc.guidance = a.guidance;
  lc.device = parse_device(a.device);
  lc.threads = clamp_threads(a.threads, "logprob");
  const auto start = std::chrono::steady_clock::now();
  const LogProbResult r = log_prob(model, x, lc);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  write_npy(a.out, r.log_prob.data(), {r.count});
  if (!a.noise.empty()) write_npy(a.noise, r.noise.data(), {r.count, r.dim});
  double mean = 0.0;
  for (float v : r.log_prob) mean += v;
  std::printf("log p at %lld points: mean %.5f (%s, %s divergence, %lld evaluations, %.3f s on %s, %s): %s\n",
              static_cast<long long>(r.count), mean / static_cast<double>(r.count), a.solver.c_str(),
              to_string(r.divergence), static_cast<long long>(r.evaluations), secs, to_string(r.device),
              r.mlp.c_str(), a.out.c_str());
  return 0;
}

int run_eval(const EvalArgs& a) {
  const NpyArray arr = read_npy(a.samples);
  CUFM_REQUIRE(arr.shape.size() == 2 && arr.shape[0] >= 1 && arr.shape[1] >= 1,
               "'" << a.samples << "': samples must be a non-empty 2-D array [N, D]");
  const Dataset data = a.data.load();
  CUFM_REQUIRE(data.dim == arr.shape[1],
               "'" << a.samples << "' has " << arr.shape[1] << " dims but the data has " << data.dim);
  const std::vector<float> s(arr.values.begin(), arr.values.end());
  const double sw2 =
      sliced_wasserstein2(s.data(), arr.shape[0], data.x.data(), data.n, data.dim, a.projections, a.seed);
  const double ed =
      energy_distance(s.data(), arr.shape[0], data.x.data(), data.n, data.dim, a.max_points, a.seed);
  std::printf("sliced_w2 %.6f\nenergy_distance %.6f\n", sw2, ed);
  return 0;
}

int run_info() {
  std::printf("%s\n", build_summary().c_str());
  const auto devices = cuda_devices();
  if (devices.empty()) std::printf("GPUs: none found\n");
  for (const auto& d : devices) {
    std::printf("GPU %d: %s (sm_%d%d, %.1f GiB)%s\n", d.index, d.name.c_str(), d.sm_major, d.sm_minor,
                static_cast<double>(d.total_memory) / (1 << 30),
                d.usable ? "" : ": not usable, this build has no code for it");
  }
  std::printf("auto device: %s\n", to_string(resolve_device(Device::Auto)));
  std::printf("CPU threads wait: %s\n", cpu_thread_wait_policy().c_str());
  return 0;
}

}  // namespace cufm::cli
