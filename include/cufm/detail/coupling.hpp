// The coupling solvers' arithmetic shared by the CPU backend and the kernels (internal: cufm::hd):
// the pair cost, the group's scale summed in a fixed order, and the auction's bids and keys, written
// with exactly rounded operations, so that both backends compute the same scale and bids.
#pragma once

#include <cmath>
#include <cstdint>

#include "cufm/coupling.hpp"
#include "cufm/detail/hd.hpp"
#include "cufm/detail/philox.hpp"

namespace cufm::hd {

// |x - e|^2 over D dims, summed in order.
CUFM_HD float pair_cost(const float* x, const float* e, int D) {
  float s = 0.0f;
  for (int d = 0; d < D; ++d) {
    const float diff = rn_sub(x[d], e[d]);
    s = rn_add(s, rn_mul(diff, diff));
  }
  return s;
}

// A group's scale is summed by kScaleLanes lanes, lane l adding members l, l + kScaleLanes, ... in
// order (in double), then the lanes by a halving tree: the CUDA kernel's block of kScaleLanes threads
// and the CPU loop give the same bits.
constexpr int kScaleLanes = 1024;

// The scale from the tree's total over m members; never 0 (a group of identical pairs).
CUFM_HD float group_scale(double total, int64_t m) {
  const float c = static_cast<float>(total / static_cast<double>(m));
  return c > 1e-30f ? c : 1e-30f;
}

// The auction's epsilon schedule: from the scale down by 8 per phase to the last.
CUFM_HD float auction_first_eps(float scale) {
  return rn_mul(scale, 0.125f);
}
CUFM_HD float auction_last_eps(float scale) {
  return rn_mul(scale, kAuctionFinalEps);
}
CUFM_HD float auction_next_eps(float eps, float last) {
  const float next = rn_mul(eps, 0.125f);
  return next < last ? last : next;
}

// A bidder's scan over the objects: the best value and its object (the lowest on ties) and the
// second-best value. Values are -(C_ij + p_j).
struct BidScan {
  float w1, w2;
  uint32_t j1;
};
CUFM_HD BidScan bid_scan_empty() {
  return BidScan{-INFINITY, -INFINITY, 0xFFFFFFFFu};
}
CUFM_HD float bid_value(float cost, float price) {
  return -rn_add(cost, price);
}
// Objects in increasing order.
CUFM_HD void bid_consider(BidScan& s, float w, uint32_t j) {
  if (w > s.w1) {
    s.w2 = s.w1;
    s.w1 = w;
    s.j1 = j;
  } else if (w > s.w2) {
    s.w2 = w;
  }
}
// Two scans over disjoint objects, in any order: the result of one scan over both.
CUFM_HD BidScan bid_merge(BidScan a, BidScan b) {
  if (b.w1 > a.w1 || (b.w1 == a.w1 && b.j1 < a.j1)) {
    const BidScan t = a;
    a = b;
    b = t;
  }
  a.w2 = a.w2 > b.w1 ? a.w2 : b.w1;
  return a;
}
// The bid for object j1 at price p: p + (w1 - w2) + eps, always above p (prices never fall, so
// each bid raises one; a rounding that would not is replaced by the next float up).
CUFM_HD float bid_amount(const BidScan& s, float price, float eps) {
  const float bid = rn_add(rn_add(price, rn_sub(s.w1, s.w2)), eps);
  return bid > price ? bid : bits_to_float(float_to_bits(price) + 1u);
}
// At the start of a phase, whether a row keeps its object: its value there is within eps of its best.
CUFM_HD bool still_slack(float own_value, const BidScan& s, float eps) {
  return own_value >= rn_sub(s.w1, eps);
}

// A bid as a key whose maximum is the highest bid, and the lowest row among equal ones (bids are
// positive floats, whose bits order as they do).
CUFM_HD uint64_t bid_key(float bid, uint32_t row) {
  return (static_cast<uint64_t>(float_to_bits(bid)) << 32) | (0xFFFFFFFFu - row);
}
CUFM_HD float key_bid(uint64_t key) {
  return bits_to_float(static_cast<uint32_t>(key >> 32));
}
CUFM_HD uint32_t key_row(uint64_t key) {
  return 0xFFFFFFFFu - static_cast<uint32_t>(key);
}

// Sinkhorn's pair draw for data row `row` of a step: uniform in [0, 1).
CUFM_HD float sinkhorn_draw(uint64_t seed, uint64_t step, uint32_t row) {
  return uniform01(rng::draw(seed, step, row, 0xFFFFFFFEu).v[0]);
}

}  // namespace cufm::hd
