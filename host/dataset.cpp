// Datasets: validation, the 2D toy distributions and loading from .npy.
//
// The toys draw every number from Philox (stream rng::kDatasetStream, one counter per point) and
// compute with single IEEE operations, so make_toy(name, n, seed) gives the same bits everywhere.
#include "cufm/dataset.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iomanip>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "cufm/detail/philox.hpp"
#include "cufm/error.hpp"
#include "host/memory.hpp"

namespace cufm {

void Dataset::validate() const {
  CUFM_REQUIRE(n > 0, "dataset '" << name << "' is empty (n = " << n << "); it needs at least one point");
  CUFM_REQUIRE(dim > 0, "dataset '" << name << "' has dim = " << dim << "; it must be >= 1");
  CUFM_REQUIRE(x.size() == static_cast<size_t>(n) * static_cast<size_t>(dim),
               "dataset '" << name << "': x holds " << x.size() << " floats but n * dim = " << n << " * "
                           << dim << " = " << static_cast<size_t>(n) * static_cast<size_t>(dim));
  for (size_t k = 0; k < x.size(); ++k) {
    if (!std::isfinite(x[k])) {
      CUFM_FAIL("dataset '" << name << "': x at (row " << k / dim << ", col " << k % dim << ") is " << x[k]
                            << "; remove or replace non-finite values before training");
    }
  }
  CUFM_REQUIRE(context_dim >= 0 && context_dim <= 65536,
               "dataset '" << name << "' has context_dim = " << context_dim << "; it must be in [0, 65536]");
  CUFM_REQUIRE(context.size() == static_cast<size_t>(n) * static_cast<size_t>(context_dim),
               "dataset '" << name << "': the context holds " << context.size()
                           << " floats but n * context_dim = " << n << " * " << context_dim << " = "
                           << static_cast<size_t>(n) * static_cast<size_t>(context_dim));
  for (size_t k = 0; k < context.size(); ++k) {
    if (!std::isfinite(context[k])) {
      CUFM_FAIL("dataset '" << name << "': the context at (row " << k / context_dim << ", col "
                            << k % context_dim << ") is " << context[k]
                            << "; remove or replace non-finite values before training");
    }
  }
  if (labels.empty()) {
    CUFM_REQUIRE(num_classes == 0, "dataset '" << name << "' has num_classes = " << num_classes
                                               << " but no labels; give labels or set num_classes = 0");
    return;
  }
  CUFM_REQUIRE(labels.size() == static_cast<size_t>(n), "dataset '" << name << "': " << labels.size()
                                                                    << " labels for " << n
                                                                    << " points; they must match");
  CUFM_REQUIRE(num_classes > 0, "dataset '" << name << "' has labels but num_classes = " << num_classes
                                            << "; it must be >= 1");
  for (size_t i = 0; i < labels.size(); ++i) {
    CUFM_REQUIRE(labels[i] >= 0 && labels[i] < num_classes,
                 "dataset '" << name << "': label " << labels[i] << " at row " << i << " is outside [0, "
                             << num_classes << ")");
  }
}

namespace {

using hd::rn_add;
using hd::rn_div;
using hd::rn_fma;
using hd::rn_mul;
using hd::rn_sub;

struct Point {
  float x, y;
  int32_t label;
};

// facebookresearch/flow_matching's checkerboard (its 2D examples' inf_train_gen): x1 ~ U[-2, 2);
// x2 ~ U[0, 1) or U[-2, -1), shifted up by one in odd columns; both divided by 0.45, so the points
// fill 8 of the 16 squares of side 1/0.45 in [-4.44, 4.44)^2. Label: column (0..3) * 2 + (upper square
// of the column ? 1 : 0). The uniforms are multiples of 2^-24 in [0, 1): x1 = 4u - 2 is exact, and
// so is adding the column's shift to x2, but x2 = u - 2 (the lower square) rounds to a multiple of
// 2^-23 when u is an odd multiple of 2^-24 (half those draws), and u = 1 - 2^-24 rounds to -1, the
// upper square's edge (one lower draw in 2^24). The division is one correctly rounded IEEE
// operation, which keeps the order of the values: a point lies in the square its unscaled
// coordinates name. (Before 2026-11-29 cuFM
// multiplied by 2, a square of side 2 in [-4, 4)^2: see docs/CHANGELOG.md.)
Point checkerboard(const Philox4x32& r) {
  const float x1 = rn_sub(rn_mul(hd::uniform01(r.v[0]), 4.0f), 2.0f);
  const int lower = static_cast<int>(r.v[2] >> 31);         // randint(0, 2)
  const int column = static_cast<int>(std::floor(x1)) + 2;  // 0..3
  const int odd = column & 1;                               // floor(x1) mod 2
  const float x2 =
      rn_add(rn_sub(hd::uniform01(r.v[1]), static_cast<float>(2 * lower)), static_cast<float>(odd));
  return {rn_div(x1, 0.45f), rn_div(x2, 0.45f), column * 2 + (1 - lower)};
}

// 8 Gaussians (std 0.3) on a circle of radius 2*sqrt(2); label = mode k at angle 2*pi*k/8.
Point eight_gaussians(const Philox4x32& r) {
  constexpr float kRadius = 2.82842712f, kStd = 0.3f;
  const uint32_t mode = hd::uniform_index(r.v[0], 8);
  float s, c;
  hd::det_sincos_turns(static_cast<float>(mode) * 0.125f, s, c);
  float z0, z1;
  hd::box_muller(r.v[1], r.v[2], z0, z1);
  return {rn_fma(kStd, z0, rn_mul(kRadius, c)), rn_fma(kStd, z1, rn_mul(kRadius, s)),
          static_cast<int32_t>(mode)};
}

// scikit-learn's two moons (outer: (cos a, sin a), inner: (1 - cos a, 0.5 - sin a), a in [0, pi))
// with Gaussian noise of 0.08, centred on the origin and scaled by 2.5 to span about [-4, 4].
Point moons(const Philox4x32& r) {
  constexpr float kScale = 2.5f, kNoise = 0.08f;
  const int32_t moon = static_cast<int32_t>(r.v[0] >> 31);
  float s, c;
  hd::det_sincos_turns(rn_mul(hd::uniform01(r.v[1]), 0.5f), s, c);
  float z0, z1;
  hd::box_muller(r.v[2], r.v[3], z0, z1);
  float x = moon == 0 ? c : rn_sub(1.0f, c);
  float y = moon == 0 ? s : rn_sub(0.5f, s);
  x = rn_fma(kNoise, z0, rn_sub(x, 0.5f));
  y = rn_fma(kNoise, z1, rn_sub(y, 0.25f));
  return {rn_mul(x, kScale), rn_mul(y, kScale), moon};
}

// Two interleaved spirals of 1.5 turns: radius grows with the angle (r = angle / 3, as FFJORD's
// 2spirals), the angle is sqrt(u)-distributed so that points spread evenly along the arm, and the
// second arm is the first turned by half a turn. Gaussian noise of 0.1. Label = arm.
Point spirals(const Philox4x32& r) {
  constexpr float kTurns = 1.5f, kNoise = 0.1f;
  constexpr float kRadiusPerTurn = 6.28318531f / 3.0f;
  const int32_t arm = static_cast<int32_t>(r.v[0] >> 31);
  const float turns = rn_mul(hd::rn_sqrt(hd::uniform01(r.v[1])), kTurns);
  const float frac = rn_sub(turns, std::floor(turns));
  float s, c;
  hd::det_sincos_turns(frac, s, c);
  const float radius = rn_mul(turns, kRadiusPerTurn);
  const float sign = arm == 0 ? 1.0f : -1.0f;
  float z0, z1;
  hd::box_muller(r.v[2], r.v[3], z0, z1);
  return {rn_fma(kNoise, z0, rn_mul(sign, rn_mul(-radius, c))),
          rn_fma(kNoise, z1, rn_mul(sign, rn_mul(radius, s))), arm};
}

// Four concentric rings of radius 0.75, 1.5, 2.25 and 3 (FFJORD's rings) with Gaussian noise of
// 0.08. Label = ring, innermost 0.
Point rings(const Philox4x32& r) {
  constexpr float kNoise = 0.08f;
  const uint32_t ring = hd::uniform_index(r.v[0], 4);
  const float radius = rn_mul(0.75f, static_cast<float>(ring + 1));
  float s, c;
  hd::det_sincos_turns(hd::uniform01(r.v[1]), s, c);
  float z0, z1;
  hd::box_muller(r.v[2], r.v[3], z0, z1);
  return {rn_fma(kNoise, z0, rn_mul(radius, c)), rn_fma(kNoise, z1, rn_mul(radius, s)),
          static_cast<int32_t>(ring)};
}

struct Toy {
  const char* name;
  int num_classes;
  Point (*draw)(const Philox4x32&);
};

const Toy kToys[] = {
    {"checkerboard", 8, checkerboard},
    {"8gaussians", 8, eight_gaussians},
    {"moons", 2, moons},
    {"spirals", 2, spirals},
    {"rings", 4, rings},
};

// An integer-valued double as digits (1000000, not 1e+06).
std::string integer_text(double v) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(0) << v;
  return os.str();
}

std::string joined_names() {
  std::string s;
  for (const auto& name : toy_names()) s += (s.empty() ? "" : ", ") + name;
  return s;
}

}  // namespace

const std::vector<std::string>& toy_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const Toy& t : kToys) v.emplace_back(t.name);
    return v;
  }();
  return names;
}

Dataset make_toy(const std::string& name, int64_t n, uint64_t seed) {
  const Toy* toy = nullptr;
  for (const Toy& t : kToys) {
    if (name == t.name) toy = &t;
  }
  CUFM_REQUIRE(toy != nullptr, "unknown toy dataset '" << name << "': expected one of " << joined_names());
  // One Philox counter per point, indexed by a 32-bit sample number.
  CUFM_REQUIRE(n >= 1 && n <= (int64_t{1} << 32),
               "toy dataset '" << name << "': n must be in [1, 2^32], got " << n);

  detail::require_memory(detail::mul_sat(static_cast<uint64_t>(n), 2 * sizeof(float) + sizeof(int32_t)),
                         "toy dataset '" + name + "' of " + std::to_string(n) + " points",
                         "draw fewer points");
  Dataset d;
  d.name = name;
  d.n = n;
  d.dim = 2;
  d.num_classes = toy->num_classes;
  d.x.resize(static_cast<size_t>(n) * 2);
  d.labels.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const Philox4x32 r = rng::draw(seed, rng::kDatasetStream, static_cast<uint32_t>(i), 0u);
    const Point p = toy->draw(r);
    d.x[2 * i] = p.x;
    d.x[2 * i + 1] = p.y;
    d.labels[i] = p.label;
  }
  return d;
}

std::vector<float> read_npy_matrix(const std::string& path, const char* what, int64_t& rows, int64_t& cols,
                                   bool one_row_ok) {
  const NpyArray a = read_npy(path);
  CUFM_REQUIRE(a.dtype == "<f4" || a.dtype == "<f8",
               what << " '" << path << "' holds '" << a.dtype
                    << "'; it must be float32 or float64 (convert with arr.astype(np.float32))");
  CUFM_REQUIRE((one_row_ok && a.shape.size() == 1) || a.shape.size() == 2,
               what << " '" << path << "' has " << a.shape.size()
                    << " dimensions; it must be a 2-D array [N, D]"
                    << (one_row_ok ? " (or 1-D: one row)" : ""));
  rows = a.shape.size() == 2 ? a.shape[0] : 1;
  cols = a.shape.back();
  CUFM_REQUIRE(cols >= 1 && cols <= std::numeric_limits<int>::max(),
               what << " '" << path << "' has " << cols << " columns; it needs at least one");
  std::vector<float> out(a.values.size());
  for (size_t k = 0; k < a.values.size(); ++k) {
    const double v = a.values[k];
    out[k] = static_cast<float>(v);
    CUFM_REQUIRE(!std::isfinite(v) || std::isfinite(out[k]), what << " '" << path << "': value " << v
                                                                  << " at (row " << k / cols << ", col "
                                                                  << k % cols << ") overflows float32");
  }
  return out;
}

Dataset load_npy_dataset(const std::string& data_path, const std::string& labels_path, int num_classes,
                         const std::string& context_path) {
  CUFM_REQUIRE(num_classes >= 0,
               "load_npy_dataset: num_classes must be >= 0 (0: from the labels), got " << num_classes);
  CUFM_REQUIRE(num_classes == 0 || !labels_path.empty(),
               "load_npy_dataset: num_classes = " << num_classes << " given without a labels file");

  Dataset d;
  d.name = data_path;
  int64_t cols = 0;
  d.x = read_npy_matrix(data_path, "data file", d.n, cols);
  d.dim = static_cast<int>(cols);

  if (!labels_path.empty()) {
    const NpyArray labels = read_npy(labels_path);
    const char kind = labels.dtype.size() == 3 ? labels.dtype[1] : '?';
    CUFM_REQUIRE(kind == 'i' || kind == 'u', "labels file '" << labels_path << "' holds '" << labels.dtype
                                                             << "'; labels must be integers");
    std::string got = "(";
    for (size_t i = 0; i < labels.shape.size(); ++i) got += (i ? ", " : "") + std::to_string(labels.shape[i]);
    got += labels.shape.size() == 1 ? ",)" : ")";
    CUFM_REQUIRE(labels.shape.size() == 1 && labels.shape[0] == d.n,
                 "labels file '" << labels_path << "' must have shape (" << d.n << ",) to match '"
                                 << data_path << "', got " << got);
    d.labels.resize(labels.values.size());
    int32_t max_label = -1;
    for (size_t i = 0; i < labels.values.size(); ++i) {
      const double v = labels.values[i];
      CUFM_REQUIRE(v >= 0.0 && v < 100000.0, "labels file '" << labels_path << "': label " << integer_text(v)
                                                             << " at row " << i << " is outside [0, 100000)");
      d.labels[i] = static_cast<int32_t>(v);
      if (d.labels[i] > max_label) max_label = d.labels[i];
    }
    d.num_classes = num_classes > 0 ? num_classes : max_label + 1;
  }
  if (!context_path.empty()) {
    int64_t rows = 0, k = 0;
    d.context = read_npy_matrix(context_path, "context file", rows, k);
    CUFM_REQUIRE(rows == d.n && k <= 65536, "context file '" << context_path << "' must have shape (" << d.n
                                                             << ", K) with K <= 65536 to match '" << data_path
                                                             << "', got (" << rows << ", " << k << ")");
    d.context_dim = static_cast<int>(k);
  }
  d.validate();
  return d;
}

DatasetSource::DatasetSource(const Dataset& data, uint64_t seed) : data_(data), seed_(seed) {
  data_.validate();
  CUFM_REQUIRE(data_.n <= 0xFFFFFFFFll,
               "DatasetSource: the data has " << data_.n << " points; at most 2^32 - 1 are supported");
}

void DataSource::next_batch(uint64_t, int, float*, int32_t*) {
  CUFM_FAIL(
      "DataSource: the source overrides neither next_batch(step, batch_size, x1, labels) nor the "
      "overload with a context");
}

void DataSource::next_batch(uint64_t step, int batch_size, float* x1, int32_t* labels, float* context) {
  CUFM_REQUIRE(context_dim() == 0 || !context, "DataSource: the source has a context (context_dim() = "
                                                   << context_dim()
                                                   << ") but does not override next_batch(step, "
                                                      "batch_size, x1, labels, context)");
  next_batch(step, batch_size, x1, labels);
}

void DatasetSource::next_batch(uint64_t step, int batch_size, float* x1, int32_t* labels) {
  next_batch(step, batch_size, x1, labels, nullptr);
}

void DatasetSource::next_batch(uint64_t step, int batch_size, float* x1, int32_t* labels, float* context) {
  CUFM_REQUIRE(batch_size >= 1 && x1, "DatasetSource: a batch needs batch_size >= 1 and x1");
  const int K = data_.context_dim;
  const int D = data_.dim;
  const uint32_t n = static_cast<uint32_t>(data_.n);
  for (int i = 0; i < batch_size; ++i) {
    // The index hd::draw_sample gives row i of step `step` (block 0 of its counter, word 2).
    const uint32_t idx = hd::uniform_index(rng::draw(seed_, step, static_cast<uint32_t>(i), 0u).v[2], n);
    std::copy_n(data_.x.data() + static_cast<size_t>(idx) * D, D, x1 + static_cast<size_t>(i) * D);
    if (labels && data_.labelled()) labels[i] = data_.labels[idx];
    if (context && K > 0) {
      std::copy_n(data_.context.data() + static_cast<size_t>(idx) * K, K,
                  context + static_cast<size_t>(i) * K);
    }
  }
}

}  // namespace cufm
