// Sample-set distances: sliced Wasserstein-2 and energy distance, on the CPU in double.
#include "cufm/metrics.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cufm/error.hpp"
#include "cufm/detail/philox.hpp"
#include "host/memory.hpp"

namespace cufm {

namespace {

constexpr int kMaxProjections = 1000000;

void check_sets(const float* a, int64_t na, const float* b, int64_t nb, int dim) {
  CUFM_REQUIRE(a && b, "metrics: null sample set");
  CUFM_REQUIRE(na >= 1 && nb >= 1,
               "metrics: both sample sets must be non-empty, got " << na << " and " << nb);
  CUFM_REQUIRE(dim >= 1, "metrics: dim must be >= 1, got " << dim);
  auto finite = [dim](const float* p, int64_t n, const char* which) {
    for (int64_t i = 0; i < n * dim; ++i) {
      CUFM_REQUIRE(std::isfinite(p[i]), "metrics: the " << which << " set holds a non-finite value at row "
                                                        << i / dim << ", column " << i % dim);
    }
  };
  finite(a, na, "first");
  finite(b, nb, "second");
}

// The subset of at most k of n indices, chosen by a seeded partial Fisher-Yates shuffle.
std::vector<int64_t> subset(int64_t n, int64_t k, uint64_t seed, uint32_t which) {
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  if (k >= n) return idx;
  for (int64_t i = 0; i < k; ++i) {
    const Philox4x32 r = rng::draw(seed, rng::kMetricStream, which, static_cast<uint32_t>(i));
    const uint64_t span = static_cast<uint64_t>(n - i);
    const int64_t j = i + static_cast<int64_t>(((static_cast<uint64_t>(r.v[0]) << 32 | r.v[1]) % span));
    std::swap(idx[i], idx[j]);
  }
  idx.resize(k);
  return idx;
}

double mean_distance(const float* a, const std::vector<int64_t>& ia, const float* b,
                     const std::vector<int64_t>& ib, int dim) {
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (size_t i = 0; i < ia.size(); ++i) {
    const float* x = a + ia[i] * dim;
    double row = 0.0;
    for (int64_t j : ib) {
      const float* y = b + j * dim;
      double s = 0.0;
      for (int d = 0; d < dim; ++d) {
        const double diff = static_cast<double>(x[d]) - y[d];
        s += diff * diff;
      }
      row += std::sqrt(s);
    }
    total += row;
  }
  return total / (static_cast<double>(ia.size()) * static_cast<double>(ib.size()));
}

}  // namespace

double sliced_wasserstein2(const float* a, int64_t na, const float* b, int64_t nb, int dim, int projections,
                           uint64_t seed) {
  check_sets(a, na, b, nb, dim);
  CUFM_REQUIRE(
      projections >= 1 && projections <= kMaxProjections,
      "sliced_wasserstein2: projections must be in [1, " << kMaxProjections << "], got " << projections);
  const int64_t levels = std::max(na, nb);
  // Each thread sorts one projection of both sets at a time.
  detail::require_memory(
      detail::add_sat(
          static_cast<uint64_t>(projections) * sizeof(double),
          detail::mul_sat(static_cast<uint64_t>(na) + static_cast<uint64_t>(nb),
                          sizeof(double) * static_cast<uint64_t>(std::max(1, omp_get_max_threads())))),
      "sliced_wasserstein2 over " + std::to_string(na) + " and " + std::to_string(nb) + " points",
      "pass fewer points or use fewer threads");
  std::vector<double> per_projection(projections);
#pragma omp parallel for schedule(dynamic)
  for (int p = 0; p < projections; ++p) {
    // A uniform direction on the sphere: normalised Gaussian draws.
    std::vector<double> dir(dim);
    double norm = 0.0;
    for (int g = 0; g < (dim + 3) / 4; ++g) {
      float z[4];
      rng::normal4(seed, rng::kMetricStream, 0x80000000u + static_cast<uint32_t>(p), static_cast<uint32_t>(g),
                   z);
      for (int k = 0; k < 4 && 4 * g + k < dim; ++k) {
        dir[4 * g + k] = z[k];
        norm += static_cast<double>(z[k]) * z[k];
      }
    }
    norm = std::sqrt(std::max(norm, 1e-30));
    auto project = [&](const float* x, int64_t n) {
      std::vector<double> out(n);
      for (int64_t i = 0; i < n; ++i) {
        double s = 0.0;
        for (int d = 0; d < dim; ++d) s += dir[d] * x[i * dim + d];
        out[i] = s / norm;
      }
      std::sort(out.begin(), out.end());
      return out;
    };
    const std::vector<double> pa = project(a, na), pb = project(b, nb);
    double s = 0.0;
    for (int64_t q = 0; q < levels; ++q) {
      const double level = (static_cast<double>(q) + 0.5) / static_cast<double>(levels);
      const double va = pa[std::min<int64_t>(na - 1, static_cast<int64_t>(level * na))];
      const double vb = pb[std::min<int64_t>(nb - 1, static_cast<int64_t>(level * nb))];
      s += (va - vb) * (va - vb);
    }
    per_projection[p] = s / static_cast<double>(levels);
  }
  double total = 0.0;
  for (double v : per_projection) total += v;
  return std::sqrt(total / projections);
}

double energy_distance(const float* a, int64_t na, const float* b, int64_t nb, int dim, int64_t max_points,
                       uint64_t seed) {
  check_sets(a, na, b, nb, dim);
  CUFM_REQUIRE(max_points >= 2, "energy_distance: max_points must be >= 2, got " << max_points);
  // Two index lists of each set's size (the subsets are drawn from a full shuffle's prefix).
  detail::require_memory(
      detail::mul_sat(static_cast<uint64_t>(na) + static_cast<uint64_t>(nb), 2 * sizeof(int64_t)),
      "energy_distance over " + std::to_string(na) + " and " + std::to_string(nb) + " points",
      "pass fewer points");
  const std::vector<int64_t> ia = subset(na, max_points, seed, 0), ib = subset(nb, max_points, seed, 1);
  // The V-statistic: non-negative, and zero only for identical empirical sets.
  const double xy = mean_distance(a, ia, b, ib, dim);
  const double xx = mean_distance(a, ia, a, ia, dim);
  const double yy = mean_distance(b, ib, b, ib, dim);
  return std::max(0.0, 2.0 * xy - xx - yy);
}

}  // namespace cufm
