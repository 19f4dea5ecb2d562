// The CPU backend's coupling: the rows grouped (stably) by their group, and per group an exact
// assignment (a Gauss-Seidel forward auction with epsilon scaling, its bids scanned with AVX-512
// where the CPU has it) or an entropic plan (log-domain Sinkhorn) from which each data row draws
// its noise row. A group's costs are held as an m x m matrix (1 MiB for m = 512); the phase checks
// and the Sinkhorn updates run on the OpenMP threads.
#include "host/cpu/cpu_coupling.hpp"

#include <omp.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "cufm/detail/coupling.hpp"
#include "cufm/detail/math.hpp"
#include "cufm/error.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "host/cpu/cpu_simd.hpp"

namespace cufm {


namespace cpu {

namespace {

// The rows in group order (stable: rows of a group keep their order), and the groups' first
// positions, ending with B.
void group_rows(int64_t B, const int32_t* groups, std::vector<uint32_t>& order,
                std::vector<int64_t>& starts) {
  order.resize(static_cast<size_t>(B));
  std::iota(order.begin(), order.end(), 0u);
  starts.clear();
  if (groups) {
    std::stable_sort(order.begin(), order.end(),
                     [&](uint32_t a, uint32_t b) { return groups[a] < groups[b]; });
  }
  for (int64_t k = 0; k < B; ++k) {
    if (k == 0 || (groups && groups[order[k]] != groups[order[k - 1]])) starts.push_back(k);
  }
  starts.push_back(B);
}

void group_costs(const float* xs, const float* es, int64_t m, int D, std::vector<float>& cost) {
  cost.resize(static_cast<size_t>(m * m));
#pragma omp parallel for schedule(static) if (m * m * D >= kParallelMin)
  for (int64_t a = 0; a < m; ++a) {
    float* row = cost.data() + a * m;
    const float* x = xs + a * D;
    if (D == 2) {  // the 2-D toys: a loop the compiler vectorises
      for (int64_t b = 0; b < m; ++b) {
        const float d0 = hd::rn_sub(x[0], es[2 * b]), d1 = hd::rn_sub(x[1], es[2 * b + 1]);
        row[b] = hd::rn_add(hd::rn_add(0.0f, hd::rn_mul(d0, d0)), hd::rn_mul(d1, d1));
      }
    } else {
      for (int64_t b = 0; b < m; ++b) row[b] = hd::pair_cost(x, es + b * D, D);
    }
  }
}

// hd::bid_consider over objects 0..m-1 in order, in one vectorised pass: each lane keeps its least
// and second-least C + p and the first object of the least (lane l sees objects l, l + W, ... in
// order), then the lanes are merged as hd::bid_merge merges scans. Values are negated exactly at the
// end. The generic version is sixteen floats as one GCC vector value (the compiler does not vectorise
// these selects by itself); on AVX-512 an intrinsics version with two sets of lanes.
hd::BidScan bid_scan_generic(const float* cost, const float* price, int64_t m) {
  typedef float Float16 __attribute__((vector_size(64)));
  typedef int32_t Int16 __attribute__((vector_size(64)));
  const int64_t body = m - m % 16;
  Float16 best = Float16{} + INFINITY, second = best;
  Int16 where = Int16{} - 1;
  Int16 index;
  for (int l = 0; l < 16; ++l) index[l] = l;
  for (int64_t b = 0; b < body; b += 16) {
    Float16 c, p;
    std::memcpy(&c, cost + b, sizeof c);
    std::memcpy(&p, price + b, sizeof p);
    const Float16 v = c + p;
    const Int16 better = v < best;
    second = better ? best : (v < second ? v : second);
    where = better ? index : where;
    best = better ? v : best;
    index += 16;
  }
  hd::BidScan scan = hd::bid_scan_empty();
  for (int l = 0; l < 16; ++l) {
    if (where[l] < 0) continue;
    scan = hd::bid_merge(scan, hd::BidScan{-best[l], -second[l], static_cast<uint32_t>(where[l])});
  }
  for (int64_t b = body; b < m; ++b) {
    hd::bid_consider(scan, hd::bid_value(cost[b], price[b]), static_cast<uint32_t>(b));
  }
  return scan;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CUFM_AVX512_SCAN 1
// GCC 12 flags the intrinsics' own _mm512_undefined_ps() pass-through operands as uninitialised
// when they are inlined here (a false positive of its headers, not of this code).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
// Minima by compare and blend, and across the vector by a butterfly of lane permutations, every
// lane getting the result.
#define CUFM_AVX512 __attribute__((target("avx512f"), always_inline)) inline
CUFM_AVX512 __m512 min_ps(__m512 a, __m512 b) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(b, a, _CMP_LT_OQ), a, b);
}
CUFM_AVX512 __m512i min_epi(__m512i a, __m512i b) {
  return _mm512_mask_blend_epi32(_mm512_cmplt_epi32_mask(b, a), a, b);
}
CUFM_AVX512 __m512 all_min_ps(__m512 v) {
  v = min_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));
  v = min_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));
  v = min_ps(v, _mm512_permute_ps(v, 0x4E));
  return min_ps(v, _mm512_permute_ps(v, 0xB1));
}
CUFM_AVX512 __m512i all_min_epi(__m512i v) {
  v = min_epi(v, _mm512_shuffle_i32x4(v, v, 0x4E));
  v = min_epi(v, _mm512_shuffle_i32x4(v, v, 0xB1));
  v = min_epi(v, _mm512_shuffle_epi32(v, _MM_PERM_BADC));
  return min_epi(v, _mm512_shuffle_epi32(v, _MM_PERM_CDAB));
}
__attribute__((target("avx512f"))) hd::BidScan bid_scan_avx512(const float* cost, const float* price,
                                                               int64_t m) {
  const int64_t body = m - m % 32;
  __m512 best0 = _mm512_set1_ps(INFINITY), second0 = best0, best1 = best0, second1 = best0;
  __m512i where0 = _mm512_set1_epi32(-1), where1 = where0;
  __m512i index0 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i index1 = _mm512_add_epi32(index0, _mm512_set1_epi32(16));
  const __m512i stride = _mm512_set1_epi32(32);
  for (int64_t b = 0; b < body; b += 32) {
    const __m512 v0 = _mm512_add_ps(_mm512_loadu_ps(cost + b), _mm512_loadu_ps(price + b));
    const __m512 v1 = _mm512_add_ps(_mm512_loadu_ps(cost + b + 16), _mm512_loadu_ps(price + b + 16));
    const __mmask16 better0 = _mm512_cmp_ps_mask(v0, best0, _CMP_LT_OQ);
    const __mmask16 better1 = _mm512_cmp_ps_mask(v1, best1, _CMP_LT_OQ);
    second0 = _mm512_mask_blend_ps(
        better0, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v0, second0, _CMP_LT_OQ), second0, v0), best0);
    second1 = _mm512_mask_blend_ps(
        better1, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v1, second1, _CMP_LT_OQ), second1, v1), best1);
    where0 = _mm512_mask_blend_epi32(better0, where0, index0);
    where1 = _mm512_mask_blend_epi32(better1, where1, index1);
    best0 = _mm512_mask_blend_ps(better0, best0, v0);
    best1 = _mm512_mask_blend_ps(better1, best1, v1);
    index0 = _mm512_add_epi32(index0, stride);
    index1 = _mm512_add_epi32(index1, stride);
  }
  // The 32 lanes merged, all in registers: the least value, the lowest object holding it, and the
  // least of the rest (the winner's second, the other lanes' bests).
  hd::BidScan scan = hd::bid_scan_empty();
  if (body > 0) {
    const __m512 low = all_min_ps(min_ps(best0, best1));
    const __m512i none = _mm512_set1_epi32(INT32_MAX);
    const __m512i j1 = all_min_epi(
        min_epi(_mm512_mask_blend_epi32(_mm512_cmp_ps_mask(best0, low, _CMP_EQ_OQ), none, where0),
                _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(best1, low, _CMP_EQ_OQ), none, where1)));
    const __m512 rest =
        all_min_ps(min_ps(_mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(where0, j1), best0, second0),
                          _mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(where1, j1), best1, second1)));
    scan = hd::BidScan{-_mm512_cvtss_f32(low), -_mm512_cvtss_f32(rest),
                       static_cast<uint32_t>(_mm_cvtsi128_si32(_mm512_castsi512_si128(j1)))};
  }
  for (int64_t b = body; b < m; ++b) {
    hd::bid_consider(scan, hd::bid_value(cost[b], price[b]), static_cast<uint32_t>(b));
  }
  return scan;
}
#pragma GCC diagnostic pop
#endif

// The exact assignment of one group, assigned[a] = the noise row (local) data row a takes: the
// forward auction of cufm/coupling.hpp, Gauss-Seidel style (one bidder at a time from a queue,
// in order; an outbid owner joins the queue's end), which needs about half the bids of the GPU's
// Jacobi rounds. Between phases the pairs still eps-complementary-slack are kept.
void auction(const float* cost, int64_t m, float scale, CouplingScratch& s) {
  s.price.assign(static_cast<size_t>(m), 0.0f);
  s.owner.assign(static_cast<size_t>(m), -1);
  s.assigned.assign(static_cast<size_t>(m), -1);
  s.keep.resize(static_cast<size_t>(m));
  if (m == 1) {
    s.assigned[0] = 0;
    return;
  }
  const float last = hd::auction_last_eps(scale);
  float eps = hd::auction_first_eps(scale);
  s.bidders.resize(static_cast<size_t>(m));
  std::iota(s.bidders.begin(), s.bidders.end(), 0u);
  for (;;) {
    for (size_t head = 0; head < s.bidders.size(); ++head) {
      const uint32_t a = s.bidders[head];
      const hd::BidScan scan = bid_scan(cost + static_cast<int64_t>(a) * m, s.price.data(), m);
      const uint32_t b = scan.j1;
      s.price[b] = hd::bid_amount(scan, s.price[b], eps);
      if (s.owner[b] >= 0) {
        s.assigned[s.owner[b]] = -1;
        s.bidders.push_back(static_cast<uint32_t>(s.owner[b]));
      }
      s.owner[b] = static_cast<int32_t>(a);
      s.assigned[a] = static_cast<int32_t>(b);
    }
    if (eps == last) return;
    eps = hd::auction_next_eps(eps, last);
    s.bidders.clear();
#pragma omp parallel for schedule(static) if (m * m >= 4 * kParallelMin)
    for (int64_t a = 0; a < m; ++a) {
      const int32_t b = s.assigned[a];
      const hd::BidScan scan = bid_scan(cost + a * m, s.price.data(), m);
      s.keep[a] = hd::still_slack(hd::bid_value(cost[a * m + b], s.price[b]), scan, eps);
    }
    for (int64_t a = 0; a < m; ++a) {
      if (s.keep[a]) continue;
      s.owner[s.assigned[a]] = -1;
      s.assigned[a] = -1;
      s.bidders.push_back(static_cast<uint32_t>(a));
    }
  }
}

// The largest and the sum of x[0..m), sixteen lanes at a time (see bid_scan).
CUFM_SIMD_CLONES float vector_max(const float* x, int64_t m) {
  typedef float Float16 __attribute__((vector_size(64)));
  const int64_t body = m - m % 16;
  Float16 lane = Float16{} - INFINITY;
  for (int64_t b = 0; b < body; b += 16) {
    Float16 v;
    std::memcpy(&v, x + b, sizeof v);
    lane = v > lane ? v : lane;
  }
  float mx = -INFINITY;
  for (int l = 0; l < 16; ++l) mx = lane[l] > mx ? lane[l] : mx;
  for (int64_t b = body; b < m; ++b) mx = std::max(mx, x[b]);
  return mx;
}
CUFM_SIMD_CLONES float vector_sum(const float* x, int64_t m) {
  typedef float Float16 __attribute__((vector_size(64)));
  const int64_t body = m - m % 16;
  Float16 lane = {};
  for (int64_t b = 0; b < body; b += 16) {
    Float16 v;
    std::memcpy(&v, x + b, sizeof v);
    lane += v;
  }
  float sum = 0.0f;
  for (int l = 0; l < 16; ++l) sum += lane[l];
  for (int64_t b = body; b < m; ++b) sum += x[b];
  return sum;
}

}  // namespace

hd::BidScan bid_scan(const float* cost, const float* price, int64_t m, bool generic) {
#ifdef CUFM_AVX512_SCAN
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512 && !generic) return bid_scan_avx512(cost, price, m);
#endif
  return bid_scan_generic(cost, price, m);
}

CUFM_SIMD_CLONES int sinkhorn_potentials(const float* cost, int64_t m, float eps, CouplingScratch& s) {
  s.f.assign(static_cast<size_t>(m), 0.0f);
  s.g.assign(static_cast<size_t>(m), 0.0f);
  s.gnew.resize(static_cast<size_t>(m));
  const float inv = 1.0f / eps;
  float* f = s.f.data();
  float* g = s.g.data();
  const int nt = m * m >= 2 * kParallelMin ? omp_get_max_threads() : 1;
  // The column sums run over kSlices fixed slices of the rows, combined in order: the same bits
  // for any thread count.
  constexpr int kSlices = 8;
  std::vector<std::vector<float>>& colmax = s.colmax;
  std::vector<std::vector<float>>& colsum = s.colsum;
  colmax.resize(kSlices);
  colsum.resize(kSlices);
  for (int t = 0; t < kSlices; ++t) {
    colmax[t].resize(static_cast<size_t>(m));
    colsum[t].resize(static_cast<size_t>(m));
  }
  int it = 0;
  while (it < kSinkhornMaxIterations) {
    ++it;
    // Rows: f_a = -eps LSE_b((g_b - C_ab) / eps). After the first iteration the sum is shifted by
    // the row's previous potential instead of its maximum (one pass over the row instead of three);
    // a sum outside [1e-20, 1e30] (the potentials moved too far for fast_exp's range) takes the
    // maximum after all.
    const bool shifted = it > 1;
#pragma omp parallel num_threads(nt)
    {
      std::vector<float> tmp(static_cast<size_t>(m));
#pragma omp for schedule(static)
      for (int64_t a = 0; a < m; ++a) {
        const float* c = cost + a * m;
        const float fa = f[a];
        if (shifted) {
          for (int64_t b = 0; b < m; ++b) tmp[b] = hd::fast_exp((g[b] - c[b] + fa) * inv);
          const float sum = vector_sum(tmp.data(), m);
          if (sum >= 1e-20f && sum <= 1e30f) {
            f[a] = fa - eps * std::log(sum);
            continue;
          }
        }
        for (int64_t b = 0; b < m; ++b) tmp[b] = g[b] - c[b];
        const float mx = vector_max(tmp.data(), m);
        for (int64_t b = 0; b < m; ++b) tmp[b] = hd::fast_exp((tmp[b] - mx) * inv);
        f[a] = -mx - eps * std::log(vector_sum(tmp.data(), m));
      }
    }
    // Columns: each thread a slice of the rows, then the slices combined; shifted by the column's
    // previous potential after the first iteration, as the rows are (the sum is then the column's
    // mass relative to uniform, so its distance from 1 is the stopping rule's error).
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int t = 0; t < kSlices; ++t) {
      const int64_t lo = m * t / kSlices, hi = m * (t + 1) / kSlices;
      float* cm = colmax[t].data();
      float* cs = colsum[t].data();
      std::fill(cs, cs + m, 0.0f);
      if (shifted) {
        for (int64_t a = lo; a < hi; ++a) {
          const float* c = cost + a * m;
          for (int64_t b = 0; b < m; ++b) cs[b] += hd::fast_exp((f[a] - c[b] + g[b]) * inv);
        }
        continue;
      }
      std::fill(cm, cm + m, -INFINITY);
      for (int64_t a = lo; a < hi; ++a) {
        const float* c = cost + a * m;
        for (int64_t b = 0; b < m; ++b) cm[b] = std::max(cm[b], f[a] - c[b]);
      }
      for (int64_t a = lo; a < hi; ++a) {
        const float* c = cost + a * m;
        for (int64_t b = 0; b < m; ++b) cs[b] += hd::fast_exp((f[a] - c[b] - cm[b]) * inv);
      }
    }
    float err = 0.0f;
    for (int64_t b = 0; b < m; ++b) {
      if (shifted) {
        double sum = 0.0;
        for (int t = 0; t < kSlices; ++t) sum += colsum[t][b];
        if (sum >= 1e-20 && sum <= 1e30) {
          s.gnew[b] = g[b] - eps * static_cast<float>(std::log(sum));
          err = std::max(err, static_cast<float>(std::fabs(sum - 1.0)));
          continue;
        }
        // Out of range: the column's maximum, over all rows.
        float mx = -INFINITY;
        for (int64_t a = 0; a < m; ++a) mx = std::max(mx, f[a] - cost[a * m + b]);
        double total = 0.0;
        for (int64_t a = 0; a < m; ++a)
          total += std::exp(static_cast<double>((f[a] - cost[a * m + b] - mx) * inv));
        const float gn = -mx - eps * static_cast<float>(std::log(total));
        err = std::max(err, std::fabs(std::exp((g[b] - gn) * inv) - 1.0f));
        s.gnew[b] = gn;
        continue;
      }
      float mx = -INFINITY;
      for (int t = 0; t < kSlices; ++t) mx = std::max(mx, colmax[t][b]);
      double sum = 0.0;
      for (int t = 0; t < kSlices; ++t)
        sum += colsum[t][b] * std::exp(static_cast<double>((colmax[t][b] - mx) * inv));
      const float gn = -mx - eps * static_cast<float>(std::log(sum));
      err = std::max(err, std::fabs(std::exp((g[b] - gn) * inv) - 1.0f));
      s.gnew[b] = gn;
    }
    std::swap(s.g, s.gnew);
    g = s.g.data();
    if (err <= kSinkhornTolerance) break;
  }
  return it;
}

namespace {

// Each data row's draw from its row of the plan: pick[a] = the local noise row.
CUFM_SIMD_CLONES void sinkhorn_draws(const float* cost, int64_t m, float eps, const uint32_t* rows,
                                     uint64_t seed, uint64_t step, CouplingScratch& s, uint32_t* pick) {
  const float inv = 1.0f / eps;
  const float* f = s.f.data();
  const float* g = s.g.data();
  const int nt = m * m >= 2 * kParallelMin ? omp_get_max_threads() : 1;
  // Row a's weights exp((f_a + g_b - C_ab) / eps), normalised.
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t a = 0; a < m; ++a) {
    const float* c = cost + a * m;
    std::vector<float> w(static_cast<size_t>(m));
    for (int64_t b = 0; b < m; ++b) w[b] = hd::fast_exp((f[a] + g[b] - c[b]) * inv);
    const float total = vector_sum(w.data(), m);
    const float goal = hd::sinkhorn_draw(seed, step, rows[a]) * total;
    float cum = 0.0f;
    int64_t chosen = -1, last_positive = 0;
    for (int64_t b = 0; b < m; ++b) {
      if (w[b] > 0.0f) last_positive = b;
      cum += w[b];
      if (cum > goal) {
        chosen = b;
        break;
      }
    }
    pick[a] = static_cast<uint32_t>(chosen >= 0 ? chosen : last_positive);
  }
}

}  // namespace

float group_scale(const float* xs, const float* es, int64_t m, int D) {
  double lane[hd::kScaleLanes] = {};
  for (int64_t k = 0; k < m; ++k) lane[k % hd::kScaleLanes] += hd::pair_cost(xs + k * D, es + k * D, D);
  for (int half = hd::kScaleLanes / 2; half > 0; half /= 2) {
    for (int l = 0; l < half; ++l) lane[l] += lane[l + half];
  }
  return hd::group_scale(lane[0], m);
}

void couple(const CouplingConfig& config, int64_t B, int D, const float* x1, const float* eps,
            const int32_t* groups, uint32_t* noise_row, CouplingScratch& s) {
  std::vector<int64_t> starts;
  group_rows(B, groups, s.order, starts);
  s.xs.resize(static_cast<size_t>(B) * D);
  s.es.resize(static_cast<size_t>(B) * D);
  for (int64_t k = 0; k < B; ++k) {
    std::memcpy(s.xs.data() + k * D, x1 + static_cast<int64_t>(s.order[k]) * D, sizeof(float) * D);
    std::memcpy(s.es.data() + k * D, eps + static_cast<int64_t>(s.order[k]) * D, sizeof(float) * D);
  }
  std::vector<uint32_t> pick;
  for (size_t gi = 0; gi + 1 < starts.size(); ++gi) {
    const int64_t base = starts[gi], m = starts[gi + 1] - base;
    CUFM_REQUIRE(m <= kMaxCouplingGroup, "coupling: a group of " << m << " rows; at most "
                                                                 << kMaxCouplingGroup
                                                                 << " are supported (lower the batch size)");
    const float* xs = s.xs.data() + base * D;
    const float* es = s.es.data() + base * D;
    const float scale = group_scale(xs, es, m, D);
    group_costs(xs, es, m, D, s.cost);
    pick.resize(static_cast<size_t>(m));
    if (config.kind == Coupling::Exact) {
      auction(s.cost.data(), m, scale, s);
      for (int64_t a = 0; a < m; ++a) pick[a] = static_cast<uint32_t>(s.assigned[a]);
    } else {
      const float eps_reg = hd::rn_mul(config.reg, scale);
      sinkhorn_potentials(s.cost.data(), m, eps_reg, s);
      sinkhorn_draws(s.cost.data(), m, eps_reg, s.order.data() + base, config.seed, config.step, s,
                     pick.data());
    }
    for (int64_t a = 0; a < m; ++a) noise_row[s.order[base + a]] = s.order[base + pick[a]];
  }
}

void couple_rows(const CouplingConfig& config, int64_t B, int D, const float* x1, const int32_t* groups,
                 std::vector<float>& eps) {
  if (config.kind == Coupling::Independent) return;
  CouplingScratch scratch;
  std::vector<uint32_t> noise_row(static_cast<size_t>(B));
  couple(config, B, D, x1, eps.data(), groups, noise_row.data(), scratch);
  std::vector<float> paired(eps.size());
  for (int64_t i = 0; i < B; ++i) {
    std::memcpy(paired.data() + i * D, eps.data() + static_cast<int64_t>(noise_row[i]) * D,
                sizeof(float) * D);
  }
  eps.swap(paired);
}

}  // namespace cpu
}  // namespace cufm
