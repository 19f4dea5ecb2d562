// Distances between two sample sets of the same dimension, for evaluating a trained model.
#pragma once

#include <cstdint>

namespace cufm {

// Sliced Wasserstein-2: sqrt of the mean over `projections` random unit directions of the
// squared W2 distance between the 1D projections (quantiles matched at max(na, nb) levels).
double sliced_wasserstein2(const float* a, int64_t na, const float* b, int64_t nb, int dim,
                           int projections = 256, uint64_t seed = 0);

// Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| on at most max_points of each set (a seeded subset).
double energy_distance(const float* a, int64_t na, const float* b, int64_t nb, int dim,
                       int64_t max_points = 4000, uint64_t seed = 0);

}  // namespace cufm
