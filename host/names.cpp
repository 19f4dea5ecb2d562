// The one home of every enum's names (cufm/names.hpp): each table below is read by to_string, the
// parse_* functions, the CLI's choices and help, the checkpoint's fields and the Python binding.
#include "cufm/names.hpp"

#include <algorithm>
#include <cctype>

#include "cufm/error.hpp"

namespace cufm {

namespace {
template <class E, size_t N>
EnumTable<E> table(const char* what, const EnumEntry<E> (&rows)[N]) {
  return EnumTable<E>{what, rows, N};
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// ---- the tables: one row per value ----------------------------------------------------------
constexpr EnumEntry<Activation> kActivations[] = {
    {Activation::SiLU, "silu", "x sigmoid(x)", nullptr},
    {Activation::ReLU, "relu", "max(x, 0)", nullptr},
    {Activation::GELU, "gelu", "the tanh approximation", nullptr},
};
constexpr EnumEntry<LrSchedule> kLrSchedules[] = {
    {LrSchedule::Constant, "constant", "lr throughout", nullptr},
    {LrSchedule::Cosine, "cosine", "a cosine decay to min_lr over decay_steps", nullptr},
    {LrSchedule::Linear, "linear", "a linear decay to min_lr over decay_steps", nullptr},
};
constexpr EnumEntry<TimeSampling> kTimeSamplings[] = {
    {TimeSampling::Uniform, "uniform", "t ~ U[0, 1]", nullptr},
    {TimeSampling::LogitNormal, "logit-normal", "t = sigmoid(mean + std z)", nullptr},
};
constexpr EnumEntry<Optimizer> kOptimizers[] = {
    {Optimizer::Adam, "adam", "weight decay added to the gradient", nullptr},
    {Optimizer::AdamW, "adamw", "decoupled weight decay", nullptr},
};
constexpr EnumEntry<Device> kDevices[] = {
    {Device::Auto, "auto", "the GPU where one is usable, else the CPU", nullptr},
    {Device::CPU, "cpu", "the CPU backend", nullptr},
    {Device::CUDA, "cuda", "the CUDA backend", "gpu"},
};
constexpr EnumEntry<Precision> kPrecisions[] = {
    {Precision::FP32, "fp32", "float32 throughout", nullptr},
    {Precision::TF32, "tf32", "TF32 tensor-core GEMMs (CUDA)", nullptr},
    {Precision::BF16, "bf16", "bf16 GEMM inputs (CUDA, or a CPU with AVX512_BF16)", nullptr},
};
constexpr EnumEntry<Solver> kSolvers[] = {
    {Solver::Euler, "euler", "order 1, 1 stage", nullptr},
    {Solver::Midpoint, "midpoint", "order 2, 2 stages", nullptr},
    {Solver::Heun, "heun", "order 2, 2 stages", nullptr},
    {Solver::RK4, "rk4", "order 4, 4 stages", nullptr},
    {Solver::Dopri5, "dopri5", "order 5, adaptive steps", nullptr},
};
constexpr EnumEntry<Divergence> kDivergences[] = {
    {Divergence::Auto, "auto", "exact up to D = 32, hutchinson above", nullptr},
    {Divergence::Exact, "exact", "the Jacobian's trace", nullptr},
    {Divergence::Hutchinson, "hutchinson", "Rademacher probes", nullptr},
};
constexpr EnumEntry<Coupling> kCouplings[] = {
    {Coupling::Independent, "independent", "row i takes its own noise", nullptr},
    {Coupling::Exact, "exact", "minibatch optimal transport", nullptr},
    {Coupling::Sinkhorn, "sinkhorn", "entropic optimal transport", nullptr},
};
}  // namespace

#define CUFM_ENUM_TABLE(E, what, rows)           \
  template <>                                    \
  const EnumTable<E>& enum_table<E>() {          \
    static const EnumTable<E> t = table(what, rows); \
    return t;                                    \
  }
CUFM_ENUM_TABLE(Activation, "activation", kActivations)
CUFM_ENUM_TABLE(LrSchedule, "learning-rate schedule", kLrSchedules)
CUFM_ENUM_TABLE(TimeSampling, "time sampling", kTimeSamplings)
CUFM_ENUM_TABLE(Optimizer, "optimizer", kOptimizers)
CUFM_ENUM_TABLE(Device, "device", kDevices)
CUFM_ENUM_TABLE(Precision, "precision", kPrecisions)
CUFM_ENUM_TABLE(Solver, "solver", kSolvers)
CUFM_ENUM_TABLE(Divergence, "divergence", kDivergences)
CUFM_ENUM_TABLE(Coupling, "coupling", kCouplings)
#undef CUFM_ENUM_TABLE

namespace {
template <class E>
std::string joined(bool with_help) {
  const EnumTable<E>& t = enum_table<E>();
  std::string out;
  for (size_t i = 0; i < t.size; ++i) {
    if (i > 0) out += i + 1 == t.size ? " or " : ", ";
    out += t.entries[i].name;
    if (with_help) out += std::string(" (") + t.entries[i].help + ")";
  }
  return out;
}
}  // namespace

template <class E>
std::string enum_choices() {
  return joined<E>(false);
}

template <class E>
std::string enum_help() {
  return joined<E>(true);
}

template <class E>
E enum_parse(const std::string& s) {
  const std::string v = lower(s);
  for (const EnumEntry<E>& e : enum_table<E>()) {
    if (v == e.name || (e.alias && v == e.alias)) return e.value;
  }
  CUFM_FAIL("unknown " << enum_table<E>().what << " '" << s << "': expected " << enum_choices<E>());
}

#define CUFM_ENUM_FUNCTIONS(E)                       \
  template E enum_parse<E>(const std::string&);      \
  template std::string enum_choices<E>();            \
  template std::string enum_help<E>();
CUFM_ENUM_FUNCTIONS(Activation)
CUFM_ENUM_FUNCTIONS(LrSchedule)
CUFM_ENUM_FUNCTIONS(TimeSampling)
CUFM_ENUM_FUNCTIONS(Optimizer)
CUFM_ENUM_FUNCTIONS(Device)
CUFM_ENUM_FUNCTIONS(Precision)
CUFM_ENUM_FUNCTIONS(Solver)
CUFM_ENUM_FUNCTIONS(Divergence)
CUFM_ENUM_FUNCTIONS(Coupling)
#undef CUFM_ENUM_FUNCTIONS

// The API's named functions, each the table's.
const char* to_string(Activation a) {
  return enum_name(a);
}
Activation parse_activation(const std::string& s) {
  return enum_parse<Activation>(s);
}
const char* to_string(LrSchedule s) {
  return enum_name(s);
}
LrSchedule parse_lr_schedule(const std::string& s) {
  return enum_parse<LrSchedule>(s);
}
const char* to_string(TimeSampling t) {
  return enum_name(t);
}
TimeSampling parse_time_sampling(const std::string& s) {
  return enum_parse<TimeSampling>(s);
}
const char* to_string(Optimizer o) {
  return enum_name(o);
}
Optimizer parse_optimizer(const std::string& s) {
  return enum_parse<Optimizer>(s);
}
const char* to_string(Device d) {
  return enum_name(d);
}
Device parse_device(const std::string& s) {
  return enum_parse<Device>(s);
}
const char* to_string(Precision p) {
  return enum_name(p);
}
Precision parse_precision(const std::string& s) {
  return enum_parse<Precision>(s);
}
const char* to_string(Solver s) {
  return enum_name(s);
}
Solver parse_solver(const std::string& s) {
  return enum_parse<Solver>(s);
}
const char* to_string(Divergence d) {
  return enum_name(d);
}
Divergence parse_divergence(const std::string& s) {
  return enum_parse<Divergence>(s);
}
const char* to_string(Coupling c) {
  return enum_name(c);
}
Coupling parse_coupling(const std::string& s) {
  return enum_parse<Coupling>(s);
}

}  // namespace cufm
