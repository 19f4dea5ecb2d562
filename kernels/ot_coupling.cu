// fm_couple: minibatch optimal-transport pairs for a training step, on the device, graph-capturable.
//
//   keys      one thread per row: the row's draws (fm_row_draw) give its group (the label after
//             dropout, or 0) and the identity order.
//   sort      CUB's stable radix sort of the rows by group (conditional layouts only).
//   gather    one thread per sorted position: x1 and eps of the row, in group order, and the
//             groups' bounds.
//   exact     auction_kernel, one block of 512 threads per group: the group's scale (a fixed-order
//             sum, as cpu::group_scale), then the Jacobi auction of cufm/coupling.hpp: each warp
//             takes one unassigned row at a time, its lanes scan strided objects and merge their
//             (best, object, second) (hd::bid_merge gives the sequential scan's result), lane 0
//             publishes the bid with a 64-bit atomicMax on the object's key; after a barrier the
//             winning bidder of each object takes it. The state (prices, owners, bidder lists) is
//             in global memory at the group's offset. Costs are recomputed from x1 and eps
//             (hd::pair_cost), never stored.
//   sinkhorn  sinkhorn_init (one block per group: its scale, zero potentials), then per iteration
//             sinkhorn_pass<rows> and sinkhorn_pass<cols> (a warp per row or column: an online
//             log-sum-exp over the group with the costs on the fly); the column kernel's last block
//             marks the groups that converged, and once all have the remaining launches return at
//             once; then sinkhorn_draws (a warp per data row: the lanes' chunk sums, a warp scan,
//             and the lane holding the draw walks its chunk).
// Cost: exact O(bids x m / 32) warp steps per group; Sinkhorn 2 m^2 D flops and exps per iteration.
#include <algorithm>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>

#include "cufm/detail/coupling.hpp"
#include "cufm/detail/math.hpp"
#include "cufm/kernels.hpp"
#include "kernels/common.cuh"
#include "kernels/cuda_check.hpp"
#include "kernels/fm_draws.cuh"

namespace cufm::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kBlock = 512;  // the auction's block (128 registers a thread) and the scale's
constexpr int kWarps = kBlock / 32;

// The workspace's arrays, carved in order (each 256-byte aligned).
struct CoupleSpace {
  int32_t* key;                 // [B] group of row i
  int32_t* key_sorted;          // [B] group of sorted position k
  uint32_t* identity;           // [B] 0..B-1
  uint32_t* order;              // [B] row at sorted position k
  int32_t* gstart;              // [G] first position of group g (0 when empty)
  int32_t* gend;                // [G] one past its last
  float* xs;                    // [B, D] x1 in group order
  float* es;                    // [B, D] eps in group order
  float* price;                 // [B] auction: prices (local object a of group g at gstart[g] + a)
  int32_t* owner;               // [B]
  int32_t* assigned;            // [B]
  unsigned long long* col_key;  // [B]
  uint32_t* list_a;             // [B] bidders
  uint32_t* list_b;             // [B]
  uint32_t* target;             // [B]
  float* f;                     // [B] Sinkhorn's potentials by sorted position
  float* g;                     // [B]
  float* eps_reg;               // [G] Sinkhorn's absolute regularisation per group
  unsigned int* group_err;      // [G] Sinkhorn: the iteration's largest column error (float bits)
  unsigned int* group_done;     // [G] Sinkhorn: 1 once the group has converged (or is empty)
  unsigned int* flags;          // [4]: the last-block counter, -, every group converged, -
  void* sort_temp;
  size_t sort_bytes;
  size_t total;
};

size_t align256(size_t n) {
  return (n + 255) / 256 * 256;
}

int group_count(const FmCoupling& c) {
  return c.num_classes > 0 ? c.num_classes + 1 : 1;
}

int sort_bits(int num_classes) {
  int bits = 1;
  while ((1 << bits) <= num_classes) ++bits;
  return bits;
}

CoupleSpace carve(void* base, int B, int D, const FmCoupling& c) {
  CoupleSpace s{};
  const size_t b = static_cast<size_t>(B), G = static_cast<size_t>(group_count(c));
  size_t off = 0;
  char* p = static_cast<char*>(base);
  auto take = [&](size_t bytes) -> void* {
    void* at = p ? p + off : nullptr;
    off += align256(bytes);
    return at;
  };
  s.key = static_cast<int32_t*>(take(b * 4));
  s.key_sorted = static_cast<int32_t*>(take(b * 4));
  s.identity = static_cast<uint32_t*>(take(b * 4));
  s.order = static_cast<uint32_t*>(take(b * 4));
  s.gstart = static_cast<int32_t*>(take(G * 4));
  s.gend = static_cast<int32_t*>(take(G * 4));
  s.xs = static_cast<float*>(take(b * D * 4));
  s.es = static_cast<float*>(take(b * D * 4));
  s.price = static_cast<float*>(take(b * 4));
  s.owner = static_cast<int32_t*>(take(b * 4));
  s.assigned = static_cast<int32_t*>(take(b * 4));
  s.col_key = static_cast<unsigned long long*>(take(b * 8));
  s.list_a = static_cast<uint32_t*>(take(b * 4));
  s.list_b = static_cast<uint32_t*>(take(b * 4));
  s.target = static_cast<uint32_t*>(take(b * 4));
  s.f = static_cast<float*>(take(b * 4));
  s.g = static_cast<float*>(take(b * 4));
  s.eps_reg = static_cast<float*>(take(G * 4));
  s.group_err = static_cast<unsigned int*>(take(G * 4));
  s.group_done = static_cast<unsigned int*>(take(G * 4));
  s.flags = static_cast<unsigned int*>(take(16));
  s.sort_bytes = 0;
  if (c.num_classes > 0) {
    CUFM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, s.sort_bytes, s.key, s.key_sorted, s.identity,
                                                    s.order, B, 0, sort_bits(c.num_classes)));
  }
  s.sort_temp = take(std::max<size_t>(s.sort_bytes, 1));
  s.total = off;
  return s;
}

__global__ void __launch_bounds__(kThreads) couple_keys(FmBatch b, int num_classes, CoupleSpace s) {
  const uint64_t step = fm_step(b);
  for (const int64_t i : cuda::grid_stride(b.batch)) {
    const uint32_t row = static_cast<uint32_t>(i);
    int32_t key = 0;
    if (num_classes > 0) {
      const hd::SampleDraw d = fm_row_draw(b, step, row);
      key = d.drop_label ? num_classes : b.labels[d.data_index];
      key = key < 0 || key > num_classes ? num_classes : key;  // an out-of-range label: the null group
    }
    s.key[row] = key;
    s.key_sorted[row] = key;
    s.identity[row] = row;
    s.order[row] = row;
  }
}

__global__ void __launch_bounds__(kThreads) couple_gather(FmBatch b, CoupleSpace s) {
  const uint64_t step = fm_step(b);
  const int D = b.dim, B = b.batch;
  for (const int64_t k : cuda::grid_stride(B)) {
    const uint32_t row = s.order[k];
    const hd::SampleDraw d = fm_row_draw(b, step, row);
    const float* x1 = b.data + static_cast<size_t>(d.data_index) * D;
    float* xs = s.xs + static_cast<size_t>(k) * D;
    float* es = s.es + static_cast<size_t>(k) * D;
    for (int g = 0; g < (D + 3) / 4; ++g) {
      float eps[4];
      fm_row_eps(b, step, row, g, eps);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        if (4 * g + c < D) {
          xs[4 * g + c] = x1[4 * g + c];
          es[4 * g + c] = eps[c];
        }
      }
    }
    const int32_t key = s.key_sorted[k];
    if (k == 0 || s.key_sorted[k - 1] != key) s.gstart[key] = static_cast<int32_t>(k);
    if (k == B - 1 || s.key_sorted[k + 1] != key) s.gend[key] = static_cast<int32_t>(k + 1);
  }
}

// The group's scale: lane l (of hd::kScaleLanes) sums members l, l + kScaleLanes, ... in order,
// then a halving tree (cpu::group_scale's order); the block's threads share the lanes. Every thread
// of the block calls it; all get the result.
__device__ float block_group_scale(const float* xs, const float* es, int m, int D) {
  __shared__ double lane[hd::kScaleLanes];
  for (int l = threadIdx.x; l < hd::kScaleLanes; l += blockDim.x) {
    double sum = 0.0;
    for (int k = l; k < m; k += hd::kScaleLanes) {
      sum += hd::pair_cost(xs + static_cast<size_t>(k) * D, es + static_cast<size_t>(k) * D, D);
    }
    lane[l] = sum;
  }
  __syncthreads();
  for (int half = hd::kScaleLanes / 2; half > 0; half /= 2) {
    for (int l = threadIdx.x; l < half; l += blockDim.x) lane[l] += lane[l + half];
    __syncthreads();
  }
  const float scale = hd::group_scale(lane[0], m);
  __syncthreads();
  return scale;
}

__device__ __forceinline__ hd::BidScan warp_merge(hd::BidScan s) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    hd::BidScan o;
    o.w1 = __shfl_xor_sync(0xFFFFFFFFu, s.w1, off);
    o.w2 = __shfl_xor_sync(0xFFFFFFFFu, s.w2, off);
    o.j1 = __shfl_xor_sync(0xFFFFFFFFu, s.j1, off);
    s = hd::bid_merge(s, o);
  }
  return s;
}

__global__ void __launch_bounds__(kBlock) auction_kernel(int D, CoupleSpace s, uint32_t* noise_row) {
  const int gid = blockIdx.x;
  const int lo = s.gstart[gid], m = s.gend[gid] - lo;
  if (m <= 0) return;
  const float* xs = s.xs + static_cast<size_t>(lo) * D;
  const float* es = s.es + static_cast<size_t>(lo) * D;
  if (m == 1) {
    if (threadIdx.x == 0) noise_row[s.order[lo]] = s.order[lo];
    return;
  }
  float* price = s.price + lo;
  int32_t* owner = s.owner + lo;
  int32_t* assigned = s.assigned + lo;
  unsigned long long* col_key = s.col_key + lo;
  uint32_t* target = s.target + lo;
  uint32_t* const list_a = s.list_a + lo;
  uint32_t* const list_b = s.list_b + lo;
  const float scale = block_group_scale(xs, es, m, D);
  const float last = hd::auction_last_eps(scale);
  float eps = hd::auction_first_eps(scale);
  __shared__ int count[2];
  for (int a = threadIdx.x; a < m; a += kBlock) {
    price[a] = 0.0f;
    col_key[a] = 0ull;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int a = threadIdx.x; a < m; a += kBlock) {
    owner[a] = -1;
    assigned[a] = -1;
    list_a[a] = static_cast<uint32_t>(a);
  }
  int cur = 0;
  if (threadIdx.x == 0) count[0] = m;
  __syncthreads();
  for (;;) {
    while (count[cur] > 0) {
      const int nb = count[cur];
      const uint32_t* bidders = cur ? list_b : list_a;
      // Bids: a warp per bidder.
      for (int k = warp; k < nb; k += kWarps) {
        const uint32_t a = bidders[k];
        const float* x = xs + static_cast<size_t>(a) * D;
        hd::BidScan scan = hd::bid_scan_empty();
        for (int b = lane; b < m; b += 32) {
          hd::bid_consider(scan,
                           hd::bid_value(hd::pair_cost(x, es + static_cast<size_t>(b) * D, D), price[b]),
                           static_cast<uint32_t>(b));
        }
        scan = warp_merge(scan);
        // Finite costs always give an object; a non-finite row (data past the documented range)
        // must not index outside the group.
        scan.j1 = scan.j1 < static_cast<uint32_t>(m) ? scan.j1 : 0u;
        if (lane == 0) {
          const float bid = hd::bid_amount(scan, price[scan.j1], eps);
          target[k] = scan.j1;
          atomicMax(col_key + scan.j1, static_cast<unsigned long long>(hd::bid_key(bid, a)));
        }
      }
      if (threadIdx.x == 0) count[cur ^ 1] = 0;
      __syncthreads();
      // Each object goes to its highest key; losers and displaced owners bid next round.
      uint32_t* next = cur ? list_a : list_b;
      for (int k = threadIdx.x; k < nb; k += kBlock) {
        const uint32_t a = bidders[k], b = target[k];
        const unsigned long long key = col_key[b];
        if (hd::key_row(key) != a) {
          next[atomicAdd(&count[cur ^ 1], 1)] = a;
          continue;
        }
        const int32_t old = owner[b];
        if (old >= 0) {
          assigned[old] = -1;
          next[atomicAdd(&count[cur ^ 1], 1)] = static_cast<uint32_t>(old);
        }
        owner[b] = static_cast<int32_t>(a);
        assigned[a] = static_cast<int32_t>(b);
        price[b] = hd::key_bid(key);
      }
      __syncthreads();
      for (int k = threadIdx.x; k < nb; k += kBlock) col_key[target[k]] = 0ull;
      cur ^= 1;
      __syncthreads();
    }
    if (eps == last) break;
    eps = hd::auction_next_eps(eps, last);
    // A new phase keeps the pairs still eps-complementary-slack at the smaller eps (a warp checks
    // a row); the others bid. The list's order does not matter.
    if (threadIdx.x == 0) count[cur] = 0;
    __syncthreads();
    uint32_t* list = cur ? list_b : list_a;
    for (int a = warp; a < m; a += kWarps) {
      const float* x = xs + static_cast<size_t>(a) * D;
      hd::BidScan scan = hd::bid_scan_empty();
      for (int b = lane; b < m; b += 32) {
        hd::bid_consider(scan, hd::bid_value(hd::pair_cost(x, es + static_cast<size_t>(b) * D, D), price[b]),
                         static_cast<uint32_t>(b));
      }
      scan = warp_merge(scan);
      const int32_t own = assigned[a];
      const float own_value =
          hd::bid_value(hd::pair_cost(x, es + static_cast<size_t>(own) * D, D), price[own]);
      if (lane == 0) target[a] = hd::still_slack(own_value, scan, eps) ? 0u : 1u;  // a mark
    }
    __syncthreads();
    for (int a = threadIdx.x; a < m; a += kBlock) {
      if (target[a] == 0u) continue;
      owner[assigned[a]] = -1;
      assigned[a] = -1;
      list[atomicAdd(&count[cur], 1)] = static_cast<uint32_t>(a);
    }
    __syncthreads();
  }
  for (int a = threadIdx.x; a < m; a += kBlock) noise_row[s.order[lo + a]] = s.order[lo + assigned[a]];
}

// ---- Sinkhorn ------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kBlock) sinkhorn_init(int D, float reg, CoupleSpace s) {
  const int gid = blockIdx.x;
  const int lo = s.gstart[gid], m = s.gend[gid] - lo;
  if (gid == 0 && threadIdx.x < 4) s.flags[threadIdx.x] = 0u;
  if (threadIdx.x == 0) {
    s.group_err[gid] = 0u;
    s.group_done[gid] = m <= 0 ? 1u : 0u;
  }
  if (m <= 0) return;
  const float scale =
      block_group_scale(s.xs + static_cast<size_t>(lo) * D, s.es + static_cast<size_t>(lo) * D, m, D);
  if (threadIdx.x == 0) s.eps_reg[gid] = hd::rn_mul(reg, scale);
  for (int a = threadIdx.x; a < m; a += kBlock) {
    s.f[lo + a] = 0.0f;
    s.g[lo + a] = 0.0f;
  }
}

// A lane's running log-sum-exp (max, sum of exp((v - max) / eps)), merged across the warp.
struct Lse {
  float mx, sum;
};
__device__ __forceinline__ void lse_add(Lse& l, float v, float inv) {
  if (v > l.mx) {
    l.sum = l.sum * expf((l.mx - v) * inv) + 1.0f;
    l.mx = v;
  } else {
    l.sum += expf((v - l.mx) * inv);
  }
}
__device__ __forceinline__ Lse lse_warp(Lse l, float inv) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const float mx = __shfl_xor_sync(0xFFFFFFFFu, l.mx, off);
    const float sum = __shfl_xor_sync(0xFFFFFFFFu, l.sum, off);
    const float top = fmaxf(l.mx, mx);
    const float a = l.mx == -INFINITY ? 0.0f : l.sum * expf((l.mx - top) * inv);
    const float b = mx == -INFINITY ? 0.0f : sum * expf((mx - top) * inv);
    l.mx = top;
    l.sum = a + b;
  }
  return l;
}

// rows: f_k = -eps LSE_b((g_b - C_kb) / eps); cols: g_k = -eps LSE_a((f_a - C_ak) / eps) and the
// column's relative mass error. Each group iterates until its own largest error is within the
// tolerance, as the CPU's loop over the groups does: the columns kernel's last block marks the groups
// that converged, and once all have, the remaining launches return at once.
template <bool kRows>
__global__ void __launch_bounds__(kThreads) sinkhorn_pass(int B, int D, int groups, CoupleSpace s) {
  if (*reinterpret_cast<volatile unsigned int*>(s.flags + 2)) return;  // every group converged
  const int lane = threadIdx.x % 32;
  const int warps = gridDim.x * (kThreads / 32);
  for (int k = blockIdx.x * (kThreads / 32) + threadIdx.x / 32; k < B; k += warps) {
    const int gid = s.key_sorted[k];
    if (s.group_done[gid]) continue;
    const int lo = s.gstart[gid], hi = s.gend[gid];
    const float eps = s.eps_reg[gid], inv = 1.0f / eps;
    const float* own = (kRows ? s.xs : s.es) + static_cast<size_t>(k) * D;
    const float* other = kRows ? s.es : s.xs;
    const float* pot = kRows ? s.g : s.f;
    Lse l{-INFINITY, 0.0f};
    for (int j = lo + lane; j < hi; j += 32) {
      const float c = kRows ? hd::pair_cost(own, other + static_cast<size_t>(j) * D, D)
                            : hd::pair_cost(other + static_cast<size_t>(j) * D, own, D);
      lse_add(l, pot[j] - c, inv);
    }
    l = lse_warp(l, inv);
    const float updated = -l.mx - eps * logf(l.sum);
    if (lane == 0) {
      if (kRows) {
        s.f[k] = updated;
      } else {
        const float err = fabsf(expf((s.g[k] - updated) * inv) - 1.0f);
        // A max of non-negative floats as their bits (a NaN's bits exceed every finite error's).
        if (!(err <= 0.0f)) atomicMax(s.group_err + gid, __float_as_uint(err));
        s.g[k] = updated;
      }
    }
  }
  if (kRows) return;
  __shared__ bool is_last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    is_last = atomicAdd(s.flags, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  bool pending = false;
  for (int g = threadIdx.x; g < groups; g += kThreads) {
    if (s.group_done[g]) continue;
    const unsigned int bits = atomicExch(s.group_err + g, 0u);
    if (__uint_as_float(bits) <= kSinkhornTolerance) {
      s.group_done[g] = 1u;
    } else {
      pending = true;
    }
  }
  if (!__syncthreads_or(pending) && threadIdx.x == 0) s.flags[2] = 1u;
  if (threadIdx.x == 0) s.flags[0] = 0u;
}

__global__ void __launch_bounds__(kThreads) sinkhorn_draws(FmBatch b, CoupleSpace s, uint32_t* noise_row) {
  const uint64_t step = fm_step(b);
  const int B = b.batch, D = b.dim;
  const int lane = threadIdx.x % 32;
  const int warps = gridDim.x * (kThreads / 32);
  for (int k = blockIdx.x * (kThreads / 32) + threadIdx.x / 32; k < B; k += warps) {
    const int gid = s.key_sorted[k];
    const int lo = s.gstart[gid], hi = s.gend[gid], m = hi - lo;
    const float inv = 1.0f / s.eps_reg[gid];
    const float* x = s.xs + static_cast<size_t>(k) * D;
    const float fk = s.f[k];
    const int chunk = (m + 31) / 32;
    const int first = lo + lane * chunk, end = min(hi, first + chunk);
    auto weight = [&](int j) {
      return expf((fk + s.g[j] - hd::pair_cost(x, s.es + static_cast<size_t>(j) * D, D)) * inv);
    };
    float mine = 0.0f;
    int last_positive = -1;
    for (int j = first; j < end; ++j) {
      const float w = weight(j);
      mine += w;
      if (w > 0.0f) last_positive = j;
    }
    float inclusive = mine;
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const float up = __shfl_up_sync(0xFFFFFFFFu, inclusive, off);
      if (lane >= off) inclusive += up;
    }
    const float total = __shfl_sync(0xFFFFFFFFu, inclusive, 31);
    const float goal = hd::sinkhorn_draw(b.seed, step, s.order[k]) * total;
    // The first lane whose prefix passes the goal walks its chunk; only columns of positive weight
    // are taken. Rounding may leave the goal past every prefix: then the last column of positive
    // weight; a row whose weights all underflow keeps its own noise.
    const unsigned crossing = __ballot_sync(0xFFFFFFFFu, inclusive > goal && last_positive >= 0);
    const unsigned positive = __ballot_sync(0xFFFFFFFFu, last_positive >= 0);
    int pick = k;
    if (crossing) {
      const int walker = __ffs(crossing) - 1;
      int chosen = last_positive;
      if (lane == walker) {
        float cum = inclusive - mine;
        for (int j = first; j < end; ++j) {
          const float w = weight(j);
          cum += w;
          if (w > 0.0f && cum > goal) {
            chosen = j;
            break;
          }
        }
      }
      pick = __shfl_sync(0xFFFFFFFFu, chosen, walker);
    } else if (positive) {
      pick = __shfl_sync(0xFFFFFFFFu, last_positive, 31 - __clz(positive));
    }
    if (lane == 0) noise_row[s.order[k]] = s.order[pick];
  }
}

}  // namespace

size_t fm_couple_workspace_bytes(int batch, int dim, const FmCoupling& coupling) {
  CUFM_REQUIRE(batch >= 1 && dim >= 1, "fm_couple_workspace_bytes: batch and dim must be >= 1");
  return carve(nullptr, batch, dim, coupling).total;
}

void fm_couple(const FmBatch& batch, const FmCoupling& c, uint32_t* noise_row, void* workspace,
               size_t workspace_bytes, cudaStream_t stream) {
  CUFM_REQUIRE(batch.batch >= 1 && batch.batch <= kMaxCouplingGroup,
               "fm_couple: batch must be in [1, " << kMaxCouplingGroup << "], got " << batch.batch);
  CUFM_REQUIRE(batch.dim >= 1 && batch.dim <= 65536,
               "fm_couple: dim must be in [1, 65536], got " << batch.dim);
  CUFM_REQUIRE(batch.n_data >= 1 && batch.data, "fm_couple: data must be a device array of n_data >= 1 rows");
  check_draws(batch, "fm_couple");
  CUFM_REQUIRE(!batch.given_t, "fm_couple: pairs Philox's draws; couple the caller's eps with cufm::couple");
  CUFM_REQUIRE(!batch.noise_row, "fm_couple: batch.noise_row must be unset (fm_couple computes it)");
  CUFM_REQUIRE(c.kind == Coupling::Exact || c.kind == Coupling::Sinkhorn,
               "fm_couple: coupling must be exact or sinkhorn, got " << to_string(c.kind));
  CUFM_REQUIRE(std::isfinite(c.reg) && c.reg >= 1e-4f && c.reg <= 100.0f,
               "fm_couple: reg must be in [1e-4, 100], got " << c.reg);
  CUFM_REQUIRE(c.num_classes >= 0 && c.num_classes <= 100000,
               "fm_couple: num_classes must be in [0, 100000], got " << c.num_classes);
  CUFM_REQUIRE(c.num_classes == 0 || batch.labels, "fm_couple: grouping by class needs batch.labels");
  CUFM_REQUIRE(noise_row, "fm_couple: noise_row must be a device array of batch entries");
  const CoupleSpace need = carve(nullptr, batch.batch, batch.dim, c);
  CUFM_REQUIRE(workspace && workspace_bytes >= need.total,
               "fm_couple: the workspace must hold fm_couple_workspace_bytes() = "
                   << need.total << " bytes, got " << workspace_bytes);
  CUFM_REQUIRE(reinterpret_cast<uintptr_t>(workspace) % 256 == 0,
               "fm_couple: the workspace must be 256-byte aligned");
  const CoupleSpace s = carve(workspace, batch.batch, batch.dim, c);
  const int B = batch.batch, G = group_count(c);
  CUFM_CUDA_CHECK(cudaMemsetAsync(s.gstart, 0, sizeof(int32_t) * G, stream));
  CUFM_CUDA_CHECK(cudaMemsetAsync(s.gend, 0, sizeof(int32_t) * G, stream));
  const int blocks = cuda::grid_for(B, kThreads, 65535);
  couple_keys<<<blocks, kThreads, 0, stream>>>(batch, c.num_classes, s);
  CUFM_CUDA_CHECK_LAUNCH("couple_keys");
  if (c.num_classes > 0) {
    size_t bytes = s.sort_bytes;
    CUFM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(s.sort_temp, bytes, s.key, s.key_sorted, s.identity,
                                                    s.order, B, 0, sort_bits(c.num_classes), stream));
  }
  couple_gather<<<blocks, kThreads, 0, stream>>>(batch, s);
  CUFM_CUDA_CHECK_LAUNCH("couple_gather");
  if (c.kind == Coupling::Exact) {
    auction_kernel<<<G, kBlock, 0, stream>>>(batch.dim, s, noise_row);
    CUFM_CUDA_CHECK_LAUNCH("auction_kernel");
    return;
  }
  sinkhorn_init<<<G, kBlock, 0, stream>>>(batch.dim, c.reg, s);
  CUFM_CUDA_CHECK_LAUNCH("sinkhorn_init");
  const int warp_blocks = cuda::grid_for(static_cast<int64_t>(B) * 32, kThreads, 65535);
  for (int it = 0; it < kSinkhornMaxIterations; ++it) {
    sinkhorn_pass<true><<<warp_blocks, kThreads, 0, stream>>>(B, batch.dim, G, s);
    sinkhorn_pass<false><<<warp_blocks, kThreads, 0, stream>>>(B, batch.dim, G, s);
  }
  CUFM_CUDA_CHECK_LAUNCH("sinkhorn_pass");
  sinkhorn_draws<<<warp_blocks, kThreads, 0, stream>>>(batch, s, noise_row);
  CUFM_CUDA_CHECK_LAUNCH("sinkhorn_draws");
}

}  // namespace cufm::kernels
