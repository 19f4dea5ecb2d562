// The cufm command line: what each subcommand takes, parsed and checked before any work (a bad
// value or a flag that would be ignored is an error here, never half-way through a run).
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cufm/likelihood.hpp"
#include "cufm/model.hpp"
#include "cufm/sampler.hpp"
#include "cufm/trainer.hpp"
#include "cufm/velocity.hpp"
#include "host/cli/data_spec.hpp"

namespace cufm::cli {

struct TrainArgs {
  DataSpec data;
  std::string hidden = "512,512,512,512", activation = to_string(MlpConfig{}.activation),
              optimizer = to_string(OptimConfig{}.kind), time_sampling = to_string(PathConfig{}.time_sampling);
  std::string device = to_string(RunOptions{}.device), precision = to_string(RunOptions{}.precision),
              out = "cufm-run";
  int time_features = 0, batch = 4096, threads = 0;
  bool conditional = false, resume = false, overwrite = false, quiet = false;
  uint64_t steps = 20000, checkpoint_every = 5000, log_every = 100, seed = 0;
  float lr = 1e-3f, weight_decay = 0.0f, grad_clip = 0.0f, ema = 0.0f, label_dropout = 0.1f, sigma_min = 0.0f;
  float logit_mean = 0.0f, logit_std = 1.0f;
  float context_dropout = 0.0f;
  std::string coupling = to_string(TrainConfig{}.coupling);
  float ot_reg = 0.05f;
  std::string lr_schedule = to_string(OptimConfig{}.lr_schedule);
  uint64_t warmup_steps = 0, decay_steps = 0;  // decay_steps 0: the rest of the run (--steps - warm-up)
  float min_lr = 0.0f;
  std::vector<int> hidden_widths;  // --hidden, parsed
  std::set<std::string> given;     // the options on the command line ("--lr", ...)
  bool was_given(const std::string& option) const { return given.count(option) > 0; }
};

struct SampleArgs {
  std::string checkpoint, solver = to_string(SampleConfig{}.solver), device = to_string(SampleConfig{}.device),
              precision = to_string(SampleConfig{}.precision), out = "samples.npy", png;
  std::string x0;  // the points to integrate from (.npy [N, D]) instead of the seed's noise
  float t0 = 0.0f, t1 = 1.0f;
  int64_t count = 50000;
  int steps = 20, threads = 0;
  std::optional<int> label;
  std::string context;  // .npy: one context row for all samples, or one per sample
  float atol = 1e-5f, rtol = 1e-5f;
  std::optional<float> guidance;
  bool ema = false;
  uint64_t seed = 0;
  double range = 4.5;
  std::string log_prob;  // also each sample's log-density, into this .npy [N]
  std::string divergence = to_string(SampleConfig{}.divergence);
  int probes = 1;
  bool no_png = false, quiet = false;
  bool png_given = false;  // --png named the picture: written whatever the dimension
  std::set<std::string> given;
};

struct LogProbArgs {
  std::string checkpoint, points, out = "logprob.npy", solver = to_string(LogProbConfig{}.solver),
                                  divergence = to_string(LogProbConfig{}.divergence),
                                  device = to_string(LogProbConfig{}.device);
  std::string noise;  // also the points carried back to t = 0, into this .npy
  int steps = 20, probes = 1, threads = 0;
  float atol = 1e-5f, rtol = 1e-5f;
  std::optional<int> label;
  std::string context;  // .npy: one context row for all points, or one per point
  std::optional<float> guidance;
  bool ema = false;
  uint64_t seed = 0;
};

struct VelocityArgs {
  std::string checkpoint, x, out = "velocity.npy", device = to_string(FieldOptions{}.device),
                                  precision = to_string(FieldOptions{}.precision);
  float t = 0.0f;
  std::optional<int> label;
  std::string context;  // .npy: one context row for all points, or one per point
  std::optional<float> guidance;
  bool ema = false;
  int threads = 0;
};

struct EvalArgs {
  std::string samples;
  DataSpec data;
  int projections = 256;
  int64_t max_points = 4000;
  uint64_t seed = 0;
};

struct Command {
  enum class Kind { Train, Sample, Velocity, LogProb, Eval, Info } kind = Kind::Info;
  TrainArgs train;
  SampleArgs sample;
  LogProbArgs logprob;
  VelocityArgs velocity;
  EvalArgs eval;
  bool verbose = false;  // print errors' source locations
};

// Thrown for --help and --version: the text to print, and exit 0.
struct HelpRequested {
  std::string text;
};

// Parses argv and checks every value that can be checked without the data or the checkpoint.
// Throws HelpRequested, or cufm::Error with a one-line message for any syntax or value error.
Command parse_command_line(int argc, const char* const* argv);

// The model (data_dim and num_classes 0: set from the data) and the recipe the train flags give.
MlpConfig model_from(const TrainArgs& a);
TrainConfig recipe_from(const TrainArgs& a);

// --hidden: comma-separated widths, each an integer in [1, 65536], no empty item ("16," and
// "1,,2" are both refused).
std::vector<int> parse_widths(const std::string& s);

}  // namespace cufm::cli
