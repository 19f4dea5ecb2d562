// Minibatch optimal-transport coupling: which noise sample each data point of a training batch is
// paired with. Independent (plain flow matching) pairs row i's data with row i's noise. Exact and
// Sinkhorn pair them to make the squared Euclidean cost |x1 - eps|^2 small over the batch, which
// straightens the learned paths so that few solver steps suffice.
//
// Pairs are only made within a group: rows of a conditional model's batch are grouped by their
// label after dropout (the null class is a group of its own), so that guidance still trains on
// matched pairs; an unconditional batch is one group. The noise rows a group may take are the rows
// of the same group, so each group's noise is still a sample of N(0, I).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cufm {

enum class Coupling : int {
  Independent = 0,  // row i takes row i's noise
  Exact = 1,        // an optimal assignment (a permutation within each group)
  Sinkhorn = 2,     // each data row draws its noise row from an entropic OT plan
};

// "independent", "exact", "sinkhorn".
const char* to_string(Coupling c);
Coupling parse_coupling(const std::string& s);

// Exact: a forward auction (Bertsekas) with epsilon scaling. The scale c of a group is the mean cost
// of its rows' independent pairs; epsilon starts at c / 8 and is divided by 8 per phase down to
// kAuctionFinalEps * c, a phase keeping the pairs still epsilon-complementary-slack, so the
// assignment's cost is within m * kAuctionFinalEps * c of the optimum for a group of m rows, and
// not always the optimum itself: an independent Hungarian check at B = 64, D = 16 found 4 of 64 rows
// paired otherwise, the total cost 1e-3 above the optimum, inside that bound (the tests hold it to
// brute force and a Hungarian reference within the bound). The CPU
// bids one row at a time (Gauss-Seidel), the GPU every unassigned row at once (Jacobi: each object
// to its highest bid, ties to the lowest row); both are deterministic, and their pairs differ only
// where two assignments cost the same to within that bound.
constexpr float kAuctionFinalEps = 1e-5f;

// Sinkhorn, in the log domain, per group with uniform marginals: the plan P_ij is proportional to
// exp((f_i + g_j - C_ij) / (reg * c)), c the group's scale as above. It alternates the row and the
// column updates and stops when every column's mass is within kSinkhornTolerance (relative) of
// uniform, or after kSinkhornMaxIterations; each data row then draws its noise row from its row of
// the plan with Philox (block 0xFFFFFFFE of the row's counter), so a step's pairs are reproducible.
constexpr float kSinkhornTolerance = 1e-3f;
constexpr int kSinkhornMaxIterations = 100;

struct CouplingConfig {
  Coupling kind = Coupling::Independent;
  float reg = 0.05f;  // Sinkhorn's regularisation, relative to the group's scale; in [1e-4, 100]
  uint64_t seed = 0;  // Sinkhorn: the Philox key and stream (a training step's index) of the pair draws
  uint64_t step = 0;
  void validate() const;
};

// The pairing of a batch of B rows (HOST arrays, row-major): data x1 [B, D] and noise eps [B, D],
// groups [B] (any int32 values: rows pair only within equal values; nullptr: one group). Returns
// noise_row [B]: data row i takes noise row noise_row[i], in i's group (exact: a permutation).
// threads: the CPU's threads (0: all cores). Throws cufm::Error on a bad argument, a non-finite
// value or a group over kMaxCouplingGroup rows.
std::vector<uint32_t> couple(const CouplingConfig& config, int64_t B, int D, const float* x1,
                             const float* eps, const int32_t* groups = nullptr, int threads = 0);

// The largest group a coupling takes: the solvers hold a group's m x m costs (exact, CPU: 4 m^2 bytes).
constexpr int64_t kMaxCouplingGroup = 16384;

// The mean over rows of |x1_i - eps_noise_row[i]|^2: a pairing's transport cost.
double coupling_cost(int64_t B, int D, const float* x1, const float* eps, const uint32_t* noise_row);

}  // namespace cufm
