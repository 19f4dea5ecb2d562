// See args.hpp. CLI11 parses; everything after that is cuFM's own checking.
#include "host/cli/args.hpp"

#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <utility>

#include "cufm/cufm.hpp"
#include "host/atomic_file.hpp"

namespace cufm::cli {
namespace fs = std::filesystem;

namespace {

void record_given(const CLI::App* sub, std::set<std::string>& given) {
  for (const CLI::Option* o : sub->get_options()) {
    if (o->count() > 0) given.insert(o->get_name());
  }
}

void check_train(TrainArgs& a, bool data_given) {
  CUFM_REQUIRE(!(a.resume && a.overwrite), "--resume and --overwrite contradict each other: choose one");
  if (!a.resume || a.was_given("--hidden")) a.hidden_widths = parse_widths(a.hidden);
  (void)parse_activation(a.activation);
  (void)parse_optimizer(a.optimizer);
  (void)parse_time_sampling(a.time_sampling);
  (void)parse_device(a.device);
  (void)parse_precision(a.precision);
  CUFM_REQUIRE(a.threads >= 0, "--threads must be >= 0 (0: all cores), got " << a.threads);
  CUFM_REQUIRE(!a.out.empty(), "--out is empty");

  CUFM_REQUIRE(data_given || a.resume,
               "train: --data is required (a toy name: " << toy_list() << "; or a .npy file)");
  CUFM_REQUIRE(data_given || !a.was_given("--labels"), "--labels needs --data (the .npy file it labels)");
  CUFM_REQUIRE(data_given || !a.was_given("--context"),
               "--context needs --data (the .npy file whose points it goes with)");
  CUFM_REQUIRE(data_given || (!a.was_given("--n-data") && !a.was_given("--data-seed")),
               "--n-data and --data-seed need --data (the toy they shape)");
  if (data_given) a.data.validate();
  if (data_given && !a.data.is_toy()) {
    CUFM_REQUIRE(!a.was_given("--n-data") && !a.was_given("--data-seed"),
                 "--n-data and --data-seed are for toy datasets; '" << a.data.source << "' is a .npy file");
  }
  if (a.resume) return;  // the recipe is the checkpoint's; run_train compares the flags given with it

  // The recipe, checked whole before any data is loaded.
  CUFM_REQUIRE(parse_lr_schedule(a.lr_schedule) != LrSchedule::Constant ||
                   (!a.was_given("--decay-steps") && !a.was_given("--min-lr")),
               "--decay-steps and --min-lr apply to --lr-schedule cosine or linear");
  CUFM_REQUIRE(a.conditional || !a.was_given("--labels"),
               "--labels gives the data's classes, and the model is unconditional: add --conditional to "
               "train on them (with guidance), or drop --labels");
  CUFM_REQUIRE(a.conditional || !a.was_given("--label-dropout"),
               "--label-dropout applies to conditional models: add --conditional or drop it");
  CUFM_REQUIRE(!a.data.context.empty() || !a.was_given("--context-dropout"),
               "--context-dropout applies to models with a context: add --context or drop it");
  CUFM_REQUIRE(
      parse_time_sampling(a.time_sampling) == TimeSampling::LogitNormal ||
          (!a.was_given("--logit-mean") && !a.was_given("--logit-std")),
      "--logit-mean and --logit-std apply to --time-sampling logit-normal");
  MlpConfig model = model_from(a);
  model.data_dim = 1;  // known once the data is loaded
  model.validate();
  recipe_from(a).validate();
}

// Whether two paths name one file (both exist and share a device and inode), or are the same text.
bool same_file(const std::string& a, const std::string& b) {
  if (a == b) return true;
  struct stat sa, sb;
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

// The parent folder of an output must exist: found before the work, not at the write.
void require_parent_folder(const std::string& path, const char* what) {
  const fs::path parent = fs::path(path).parent_path();
  if (parent.empty()) return;
  struct stat st;
  CUFM_REQUIRE(::stat(parent.c_str(), &st) == 0 && S_ISDIR(st.st_mode),
               what << " '" << path << "': the folder '" << parent.string() << "' does not exist");
}

void check_logprob(const LogProbArgs& a) {
  (void)parse_solver(a.solver);
  (void)parse_divergence(a.divergence);
  (void)parse_device(a.device);
  CUFM_REQUIRE(a.steps >= 1, "--steps must be >= 1, got " << a.steps);
  CUFM_REQUIRE(a.probes >= 1 && a.probes <= 1024, "--probes must be in [1, 1024], got " << a.probes);
  CUFM_REQUIRE(!a.label || *a.label >= 0, "--class must be a class index >= 0, got " << *a.label);
  CUFM_REQUIRE(!a.guidance || a.label || !a.context.empty(),
               "--guidance needs --class or --context, the condition to guide towards");
  CUFM_REQUIRE(!a.guidance || std::isfinite(*a.guidance), "--guidance must be finite");
  CUFM_REQUIRE(a.threads >= 0, "--threads must be >= 0 (0: all cores), got " << a.threads);
  for (const auto& [out, flag] :
       {std::pair<const std::string&, const char*>{a.out, "--out"}, {a.noise, "--noise"}}) {
    if (out.empty()) continue;
    CUFM_REQUIRE(fs::path(out).extension() == ".npy", flag << " '" << out << "' must be a .npy file");
    for (const auto& [path, what] :
         {std::pair<const std::string&, const char*>{a.checkpoint, "the checkpoint"},
          {a.points, "the points file"},
          {a.context, "the context file"}}) {
      CUFM_REQUIRE(!same_file(out, path),
                   flag << " '" << out << "' is " << what << ": give the output another name");
    }
    require_parent_folder(out, flag);
    detail::require_writable_target(out, flag);
  }
  CUFM_REQUIRE(a.noise.empty() || !same_file(a.noise, a.out), "--noise and --out name the same file");
}

void check_velocity(const VelocityArgs& a) {
  CUFM_REQUIRE(std::isfinite(a.t) && a.t >= 0.0f && a.t <= 1.0f,
               "--t must lie in [0, 1] (the times the model was trained on), got " << a.t);
  CUFM_REQUIRE(!a.label || *a.label >= 0, "--class must be a class index >= 0, got " << *a.label);
  CUFM_REQUIRE(!a.guidance || a.label || !a.context.empty(),
               "--guidance needs --class or --context, the condition to guide towards");
  CUFM_REQUIRE(!a.guidance || std::isfinite(*a.guidance), "--guidance must be finite");
  (void)parse_device(a.device);
  (void)parse_precision(a.precision);
  CUFM_REQUIRE(a.threads >= 0, "--threads must be >= 0 (0: all cores), got " << a.threads);
  CUFM_REQUIRE(fs::path(a.out).extension() == ".npy", "--out '" << a.out << "' must be a .npy file");
  for (const auto& [path, what] : {std::pair<const std::string&, const char*>{a.checkpoint, "the checkpoint"},
                                   {a.x, "the --x file"},
                                   {a.context, "the context file"}}) {
    CUFM_REQUIRE(!same_file(a.out, path),
                 "--out '" << a.out << "' is " << what << ": give the output another name");
  }
  require_parent_folder(a.out, "--out");
  detail::require_writable_target(a.out, "--out");
}

void check_sample(SampleArgs& a) {
  const Solver solver = parse_solver(a.solver);
  if (solver == Solver::Dopri5) {
    CUFM_REQUIRE(!a.given.count("--steps"),
                 "--steps applies to fixed-step solvers; dopri5 chooses its own steps "
                 "(set --atol/--rtol)");
  } else {
    CUFM_REQUIRE(!a.given.count("--atol") && !a.given.count("--rtol"),
                 "--atol and --rtol apply to --solver dopri5, not " << a.solver);
  }
  CUFM_REQUIRE(!a.label || *a.label >= 0, "--class must be a class index >= 0, got "
                                              << *a.label
                                              << " (leave it out to sample "
                                                 "unconditionally)");
  CUFM_REQUIRE(!a.guidance || a.label || !a.context.empty(),
               "--guidance needs --class or --context, the condition to guide towards");
  CUFM_REQUIRE(a.x0.empty() || (!a.given.count("--count") && !a.given.count("--seed")),
               "--x0 gives the points (their count too): --count and --seed apply to sampling from noise");
  CUFM_REQUIRE(a.x0.empty() || !same_file(a.x0, a.out),
               "--out '" << a.out << "' is the --x0 file: give the output another name");
  CUFM_REQUIRE(a.context.empty() || (!same_file(a.context, a.out) && !same_file(a.context, a.png) &&
                                     (a.log_prob.empty() || !same_file(a.context, a.log_prob))),
               "an output names the --context file '" << a.context << "': give the output another name");
  (void)parse_device(a.device);
  (void)parse_precision(a.precision);
  CUFM_REQUIRE(a.threads >= 0, "--threads must be >= 0 (0: all cores), got " << a.threads);
  CUFM_REQUIRE(std::isfinite(a.range) && a.range > 0 && a.range <= 1e30,
               "--range must be a positive finite half-width, got " << a.range);
  CUFM_REQUIRE(fs::path(a.out).extension() != ".png",
               "--out '" << a.out << "' is where the samples go (.npy); the picture goes to --png");
  CUFM_REQUIRE(!a.no_png || a.png.empty(), "--png and --no-png contradict each other: choose one");
  a.png_given = !a.png.empty();
  if (a.png.empty()) a.png = fs::path(a.out).replace_extension(".png").string();
  std::error_code ec_out, ec_png;
  const fs::path out_c = fs::weakly_canonical(a.out, ec_out), png_c = fs::weakly_canonical(a.png, ec_png);
  const bool same = same_file(a.out, a.png) || (!ec_out && !ec_png && out_c == png_c);
  CUFM_REQUIRE(!same, "--png '" << a.png << "' would overwrite the samples in --out '" << a.out
                                << "': give them different names");
  for (const auto& [path, what] :
       {std::pair<const std::string&, const char*>{a.out, "--out"}, {a.png, "--png"}}) {
    CUFM_REQUIRE(!same_file(path, a.checkpoint),
                 what << " '" << path << "' is the checkpoint being sampled: give the output another name");
    require_parent_folder(path, what);
  }
  detail::require_writable_target(a.out, "--out");
  detail::require_writable_target(a.png, "--png");
  CUFM_REQUIRE(!a.log_prob.empty() || (!a.given.count("--divergence") && !a.given.count("--probes")),
               "--divergence and --probes apply with --log-prob");
  (void)parse_divergence(a.divergence);
  if (!a.log_prob.empty()) {
    CUFM_REQUIRE(fs::path(a.log_prob).extension() == ".npy",
                 "--log-prob '" << a.log_prob << "' must be a .npy file");
    for (const std::string& other : {a.out, a.png, a.checkpoint, a.x0}) {
      CUFM_REQUIRE(other.empty() || !same_file(a.log_prob, other),
                   "--log-prob '" << a.log_prob << "' is also '" << other << "': give it another name");
    }
    require_parent_folder(a.log_prob, "--log-prob");
    detail::require_writable_target(a.log_prob, "--log-prob");
  }
  SampleConfig sc;  // the count and tolerances, checked as the library will
  sc.count = a.count;
  sc.solver = solver;
  sc.steps = a.steps;
  sc.atol = a.atol;
  sc.rtol = a.rtol;
  sc.t0 = a.t0;
  sc.t1 = a.t1;
  MlpConfig any;
  any.data_dim = 1;
  any.hidden = {1};
  any.num_classes = 1;  // labels are checked against the checkpoint's model later
  sc.validate(any);
}

void check_eval(EvalArgs& a, const CLI::App* ev) {
  a.data.validate();
  CUFM_REQUIRE(a.data.is_toy() || (ev->count("--n-data") == 0 && ev->count("--data-seed") == 0),
               "--n-data and --data-seed are for toy datasets; '" << a.data.source << "' is a .npy file");
  CUFM_REQUIRE(a.max_points >= 2, "--max-points must be >= 2, got " << a.max_points);
  CUFM_REQUIRE(a.projections >= 1 && a.projections <= 1000000,
               "--projections must be in [1, 1000000], got " << a.projections);
}

}  // namespace

MlpConfig model_from(const TrainArgs& a) {
  MlpConfig model;
  model.data_dim = 0;
  model.hidden = a.hidden_widths;
  model.activation = parse_activation(a.activation);
  model.time_features = a.time_features;
  return model;
}

TrainConfig recipe_from(const TrainArgs& a) {
  TrainConfig tc;
  tc.batch_size = a.batch;
  tc.seed = a.seed;
  tc.optim.kind = parse_optimizer(a.optimizer);
  tc.optim.lr = a.lr;
  tc.optim.weight_decay = a.weight_decay;
  tc.optim.grad_clip = a.grad_clip;
  tc.optim.ema_decay = a.ema;
  tc.label_dropout = a.label_dropout;
  tc.context_dropout = a.context_dropout;
  tc.coupling = parse_coupling(a.coupling);
  tc.ot_reg = a.ot_reg;
  tc.path.sigma_min = a.sigma_min;
  tc.path.time_sampling = parse_time_sampling(a.time_sampling);
  tc.path.logit_mean = a.logit_mean;
  tc.path.logit_std = a.logit_std;
  tc.optim.lr_schedule = parse_lr_schedule(a.lr_schedule);
  tc.optim.warmup_steps = a.warmup_steps;
  tc.optim.decay_steps =
      a.decay_steps > 0 || a.steps <= a.warmup_steps ? a.decay_steps : a.steps - a.warmup_steps;
  if (tc.optim.lr_schedule != LrSchedule::Constant)
    tc.optim.decay_steps = std::max<uint64_t>(1, tc.optim.decay_steps);
  tc.optim.min_lr = a.min_lr;
  return tc;
}

std::vector<int> parse_widths(const std::string& s) {
  std::vector<int> out;
  size_t start = 0;
  for (;;) {
    const size_t comma = s.find(',', start);
    const std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    CUFM_REQUIRE(
        used != 0 && used == item.size() && !item.empty() && item[0] != '+' && item[0] != ' ',
        "--hidden: '" << item << "' is not a width (give comma-separated integers, e.g. 512,512,512,512)");
    CUFM_REQUIRE(v >= 1 && v <= 65536, "--hidden: width " << v << " must be in [1, 65536]");
    out.push_back(static_cast<int>(v));
    CUFM_REQUIRE(out.size() <= 64, "--hidden: at most 64 hidden layers");
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

Command parse_command_line(int argc, const char* const* argv) {
  Command cmd;
  CLI::App app{"cufm: train and sample flow-matching models on the GPU or the CPU"};
  app.require_subcommand(1);
  app.set_version_flag("--version", version());
  app.add_flag("--verbose", cmd.verbose, "Print where in cuFM's source an error was raised");
  app.fallthrough();  // --verbose (the app's own flag) may also follow the subcommand
  // CLI11 converts integers with strtoull/strtoll in base 0: "-1" into an unsigned option wraps to
  // 2^64 - 1, " -1" too, "010" reads as 8 and "0x40" as 64. Counts and seeds are plain decimals.
  // A plain decimal: digits, and no leading zero but for "0" itself.
  const auto plain_decimal = [](const std::string& digits) {
    return !digits.empty() && digits.find_first_not_of("0123456789") == std::string::npos &&
           (digits.size() == 1 || digits[0] != '0');
  };
  const CLI::Validator non_negative(
      [plain_decimal](std::string& in) {
        if (plain_decimal(in)) return std::string();
        return in.find('-') != std::string::npos && in.find_first_not_of(" -0123456789") == std::string::npos
                   ? "must be >= 0, got " + in
                   : "must be a decimal integer >= 0, got '" + in + "'";
      },
      "NONNEGATIVE");
  const CLI::Validator decimal(
      [plain_decimal](std::string& in) {
        return plain_decimal(!in.empty() && in[0] == '-' ? in.substr(1) : in)
                   ? std::string()
                   : "must be a decimal integer, got '" + in + "'";
      },
      "DECIMAL");
  const auto unsigned_option = [&](CLI::Option* o) { return o->check(non_negative); };
  const auto int_option = [&](CLI::Option* o) { return o->check(decimal); };

  TrainArgs& ta = cmd.train;
  auto* train = app.add_subcommand("train", "Train a model and write checkpoints");
  train->add_option("--data", ta.data.source, "Toy dataset (" + toy_list() + ") or a .npy file [N, D]");
  train->add_option("--labels", ta.data.labels, "Integer labels .npy [N] for --data .npy");
  train->add_option("--context", ta.data.context,
                    "Context vectors .npy [N, K] for --data .npy: the model is conditioned on them");
  int_option(
      train->add_option("--n-data", ta.data.n, "Points drawn for a toy dataset")->capture_default_str());
  unsigned_option(
      train->add_option("--data-seed", ta.data.seed, "Seed of the toy dataset")->capture_default_str());
  train->add_option("--hidden", ta.hidden, "Hidden widths, comma-separated")->capture_default_str();
  train->add_option("--activation", ta.activation, enum_help<Activation>())->capture_default_str();
  int_option(
      train->add_option("--time-features", ta.time_features, "0: raw t; K (even): K sinusoidal features")
          ->capture_default_str());
  train->add_flag("--conditional", ta.conditional,
                  "Condition on the data's labels (classifier-free guidance)");
  train
      ->add_option("--context-dropout", ta.context_dropout,
                   "Per-sample null-context probability (--context; > 0 for guidance on a context)")
      ->capture_default_str();
  train->add_option("--label-dropout", ta.label_dropout, "Per-sample null-label probability (--conditional)")
      ->capture_default_str();
  train
      ->add_option("--coupling", ta.coupling,
                   "Noise-data pairing in a batch: " + enum_help<Coupling>())
      ->capture_default_str();
  train
      ->add_option("--ot-reg", ta.ot_reg, "Sinkhorn's regularisation, relative to the batch's mean pair cost")
      ->capture_default_str();
  unsigned_option(
      train->add_option("--steps", ta.steps, "Total training steps (0: write the initial weights)")
          ->capture_default_str());
  int_option(train->add_option("--batch", ta.batch, "Batch size")->capture_default_str());
  train->add_option("--lr", ta.lr, "Learning rate")->capture_default_str();
  train->add_option("--optimizer", ta.optimizer, enum_help<Optimizer>())->capture_default_str();
  train->add_option("--lr-schedule", ta.lr_schedule, enum_help<LrSchedule>())
      ->capture_default_str();
  unsigned_option(train->add_option("--warmup-steps", ta.warmup_steps, "Linear learning-rate warm-up steps")
                      ->capture_default_str());
  unsigned_option(train->add_option("--decay-steps", ta.decay_steps,
                                    "Steps of the decay (default: the rest of the run after the warm-up)"));
  train->add_option("--min-lr", ta.min_lr, "The learning rate the decay ends at")->capture_default_str();
  train->add_option("--weight-decay", ta.weight_decay, "Weight decay")->capture_default_str();
  train->add_option("--grad-clip", ta.grad_clip, "Clip the gradient norm (0: off)")->capture_default_str();
  train->add_option("--ema", ta.ema, "EMA decay of the weights (0: off)")->capture_default_str();
  train->add_option("--sigma-min", ta.sigma_min, "sigma_min of the path")->capture_default_str();
  train->add_option("--time-sampling", ta.time_sampling, enum_help<TimeSampling>())->capture_default_str();
  train->add_option("--logit-mean", ta.logit_mean, "Logit-normal mean")->capture_default_str();
  train->add_option("--logit-std", ta.logit_std, "Logit-normal std")->capture_default_str();
  unsigned_option(train->add_option("--seed", ta.seed, "Seed of the initialisation and of every draw")
                      ->capture_default_str());
  train->add_option("--device", ta.device, enum_help<Device>())->capture_default_str();
  train->add_option("--precision", ta.precision, enum_help<Precision>())->capture_default_str();
  int_option(train->add_option("--threads", ta.threads, "CPU threads (0: all cores; at most 4x the cores)")
                 ->capture_default_str());
  train->add_option("--out", ta.out, "Output folder")->capture_default_str();
  unsigned_option(train
                      ->add_option("--checkpoint-every", ta.checkpoint_every,
                                   "Steps between checkpoints (0: only at the end)")
                      ->capture_default_str());
  unsigned_option(train->add_option("--log-every", ta.log_every, "Steps between progress updates")
                      ->capture_default_str());
  train->add_flag("--resume", ta.resume, "Continue from <out>/checkpoint.safetensors");
  train->add_flag("--overwrite", ta.overwrite,
                  "Start afresh even if <out> holds a checkpoint (replaced at the first save)");
  train->add_flag("--quiet", ta.quiet, "Print nothing but warnings and errors (no progress bar)");

  SampleArgs& sa = cmd.sample;
  auto* samp = app.add_subcommand("sample", "Sample from a checkpoint; writes .npy (and a PNG of 1-D and 2-D samples)");
  samp->add_option("checkpoint", sa.checkpoint, "Checkpoint (.safetensors)")->required();
  int_option(samp->add_option("--count", sa.count, "Number of samples")->capture_default_str());
  samp->add_option("--solver", sa.solver, enum_help<Solver>())->capture_default_str();
  int_option(samp->add_option("--steps", sa.steps, "Steps of a fixed-step solver")->capture_default_str());
  samp->add_option("--atol", sa.atol, "dopri5 absolute tolerance")->capture_default_str();
  samp->add_option("--rtol", sa.rtol, "dopri5 relative tolerance")->capture_default_str();
  int_option(samp->add_option("--class", sa.label,
                              "Class label for a conditional model (leave out: unconditional)"));
  samp->add_option(
      "--context", sa.context,
      "Context .npy: one row [K] or [1, K] for all samples, or [count, K] (a model with a context)");
  samp->add_option("--guidance", sa.guidance, "Classifier-free guidance scale w (with --class or --context)");
  samp->add_flag("--ema", sa.ema, "Use the EMA weights");
  unsigned_option(samp->add_option("--seed", sa.seed, "Noise seed")->capture_default_str());
  samp->add_option("--x0", sa.x0, "Integrate from these points (.npy [N, D]) instead of noise");
  samp->add_option("--t0", sa.t0, "Start time, in [0, 1]")->capture_default_str();
  samp->add_option("--t1", sa.t1, "End time, in [0, 1] (below --t0: backwards, data to noise)")
      ->capture_default_str();
  samp->add_option("--device", sa.device, enum_help<Device>())->capture_default_str();
  samp->add_option("--precision", sa.precision, enum_help<Precision>())->capture_default_str();
  int_option(samp->add_option("--threads", sa.threads, "CPU threads (0: all cores; at most 4x the cores)")
                 ->capture_default_str());
  samp->add_option("--out", sa.out, "Output .npy")->capture_default_str();
  samp->add_option("--png", sa.png,
                   "Output PNG (default: the .npy's name with .png, written for 1-D and 2-D models only)");
  samp->add_flag("--no-png", sa.no_png, "Write no PNG");
  samp->add_flag("--quiet", sa.quiet, "Print nothing but warnings and errors");
  samp->add_option("--range", sa.range, "The PNG shows [-range, range] on each axis")->capture_default_str();
  samp->add_option("--log-prob", sa.log_prob, "Also each sample's log-density, into this .npy [N] (fp32)");
  samp->add_option("--divergence", sa.divergence, "With --log-prob: " + enum_help<Divergence>())
      ->capture_default_str();
  int_option(samp->add_option("--probes", sa.probes, "With --log-prob and hutchinson: probes per sample")
                 ->capture_default_str());

  LogProbArgs& la = cmd.logprob;
  auto* lp =
      app.add_subcommand("logprob", "Log-likelihoods of points under a checkpoint's model; writes .npy [N]");
  lp->add_option("checkpoint", la.checkpoint, "Checkpoint (.safetensors)")->required();
  lp->add_option("points", la.points, "The points (.npy [N, D])")->required();
  lp->add_option("--solver", la.solver, enum_help<Solver>())->capture_default_str();
  int_option(lp->add_option("--steps", la.steps, "Steps of a fixed-step solver")->capture_default_str());
  lp->add_option("--atol", la.atol, "dopri5 absolute tolerance")->capture_default_str();
  lp->add_option("--rtol", la.rtol, "dopri5 relative tolerance")->capture_default_str();
  lp->add_option("--divergence", la.divergence, enum_help<Divergence>())
      ->capture_default_str();
  int_option(lp->add_option("--probes", la.probes, "Hutchinson probes per point")->capture_default_str());
  unsigned_option(lp->add_option("--seed", la.seed, "Seed of Hutchinson's probes")->capture_default_str());
  int_option(lp->add_option("--class", la.label,
                            "Class label for every point (conditional model; leave out: null)"));
  lp->add_option("--context", la.context,
                 "Context .npy: one row [K] or [1, K] for all points, or [N, K] (a model with a context)");
  lp->add_option("--guidance", la.guidance,
                 "The guided field's likelihood, scale w (with --class or --context)");
  lp->add_flag("--ema", la.ema, "Use the EMA weights");
  lp->add_option("--device", la.device, enum_help<Device>())->capture_default_str();
  int_option(lp->add_option("--threads", la.threads, "CPU threads (0: all cores; at most 4x the cores)")
                 ->capture_default_str());
  lp->add_option("--out", la.out, "Output .npy [N]: log p(x), natural log")->capture_default_str();
  lp->add_option("--noise", la.noise, "Also the points carried back to t = 0, into this .npy [N, D]");

  VelocityArgs& va = cmd.velocity;
  auto* vel = app.add_subcommand("velocity", "Evaluate a checkpoint's velocity field at points; writes .npy");
  vel->add_option("checkpoint", va.checkpoint, "Checkpoint (.safetensors)")->required();
  vel->add_option("--x", va.x, "The points (.npy [N, D])")->required();
  vel->add_option("--t", va.t, "The time, in [0, 1]")->required();
  int_option(vel->add_option("--class", va.label,
                             "Class label for every point (conditional model; leave out: null)"));
  vel->add_option("--context", va.context,
                  "Context .npy: one row [K] or [1, K] for all points, or [N, K] (a model with a context)");
  vel->add_option("--guidance", va.guidance, "Classifier-free guidance scale w (with --class or --context)");
  vel->add_flag("--ema", va.ema, "Use the EMA weights");
  vel->add_option("--device", va.device, enum_help<Device>())->capture_default_str();
  vel->add_option("--precision", va.precision, enum_help<Precision>())->capture_default_str();
  int_option(vel->add_option("--threads", va.threads, "CPU threads (0: all cores; at most 4x the cores)")
                 ->capture_default_str());
  vel->add_option("--out", va.out, "Output .npy [N, D]")->capture_default_str();

  EvalArgs& ea = cmd.eval;
  auto* ev = app.add_subcommand("eval", "Distances between a sample file and a dataset");
  ev->add_option("samples", ea.samples, "Samples .npy [N, D]")->required();
  ev->add_option("--data", ea.data.source, "Toy dataset or .npy")->required();
  int_option(ev->add_option("--n-data", ea.data.n, "Points drawn for a toy dataset")->capture_default_str());
  unsigned_option(
      ev->add_option("--data-seed", ea.data.seed, "Seed of the toy dataset")->capture_default_str());
  int_option(ev->add_option("--projections", ea.projections, "Sliced W2 projections")->capture_default_str());
  int_option(ev->add_option("--max-points", ea.max_points, "Energy distance: points per set")
                 ->capture_default_str());
  unsigned_option(
      ev->add_option("--seed", ea.seed, "Seed of the projections and subsets")->capture_default_str());

  app.add_subcommand("info", "Version, build options and devices");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    const auto subs = app.get_subcommands();
    throw HelpRequested{subs.empty() ? app.help() : subs.front()->help()};
  } catch (const CLI::CallForAllHelp&) {
    throw HelpRequested{app.help("", CLI::AppFormatMode::All)};
  } catch (const CLI::CallForVersion&) {
    throw HelpRequested{version() + "\n"};
  } catch (const CLI::ParseError& e) {
    throw Error(std::string(e.what()) + " (see --help)");
  }

  if (*train) {
    cmd.kind = Command::Kind::Train;
    record_given(train, ta.given);
    check_train(ta, train->count("--data") > 0);
  } else if (*samp) {
    cmd.kind = Command::Kind::Sample;
    record_given(samp, sa.given);
    check_sample(sa);
  } else if (*vel) {
    cmd.kind = Command::Kind::Velocity;
    check_velocity(va);
  } else if (*lp) {
    cmd.kind = Command::Kind::LogProb;
    check_logprob(la);
  } else if (*ev) {
    cmd.kind = Command::Kind::Eval;
    check_eval(ea, ev);
  }
  return cmd;
}

}  // namespace cufm::cli
