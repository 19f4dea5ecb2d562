// The CPU backend's coupling solvers (internal): the reference of the kernels in
// kernels/ot_coupling.cu. See cufm/coupling.hpp for what they compute.
#pragma once

#include <cstdint>
#include <vector>

#include "cufm/coupling.hpp"
#include "cufm/detail/coupling.hpp"
#include "cufm/trainer.hpp"

namespace cufm::cpu {

// What the solvers keep between steps (the trainer's buffers).
struct CouplingScratch {
  std::vector<uint32_t> order;  // the rows sorted by group, stably
  std::vector<float> xs, es;    // x1 and eps in that order
  std::vector<float> cost;      // one group's m x m costs
  std::vector<float> price, f, g, gnew;
  std::vector<std::vector<float>> colmax, colsum;  // Sinkhorn's column slices
  std::vector<int32_t> owner, assigned;
  std::vector<uint32_t> bidders;
  std::vector<uint8_t> keep;
};

// noise_row [B] as cufm::couple gives it (arguments taken as checked: finite values, kind not
// Independent). Runs on the current OpenMP threads.
void couple(const CouplingConfig& config, int64_t B, int D, const float* x1, const float* eps,
            const int32_t* groups, uint32_t* noise_row, CouplingScratch& scratch);

// A training step's coupling.
inline CouplingConfig coupling_config(const TrainConfig& c, uint64_t step) {
  CouplingConfig cc;
  cc.kind = c.coupling;
  cc.reg = c.ot_reg;
  cc.seed = c.seed;
  cc.step = step;
  return cc;
}

// Couples the caller's rows x1 [B, D] with the step's noise eps [B, D] (rows grouped by groups, or
// one group when nullptr) and reorders eps so that row i holds the noise it is paired with.
void couple_rows(const CouplingConfig& config, int64_t B, int D, const float* x1, const int32_t* groups,
                 std::vector<float>& eps);

// Sinkhorn's potentials for one group's m x m costs at regularisation eps (absolute), into s.f and
// s.g: the plan is exp((f_a + g_b - C_ab) / eps) / m. Returns the iterations run (the stopping rule
// of cufm/coupling.hpp).
int sinkhorn_potentials(const float* cost, int64_t m, float eps, CouplingScratch& s);

// The auction's scan of one row: hd::bid_consider over objects 0..m-1 of the values -(C + p), with
// AVX-512 where the CPU has it; generic: the portable version (for the tests).
hd::BidScan bid_scan(const float* cost, const float* price, int64_t m, bool generic = false);

// The group's scale (cufm/coupling.hpp) over m rows of xs and es [m, D]: the fixed-order sum.
float group_scale(const float* xs, const float* es, int64_t m, int D);

}  // namespace cufm::cpu
