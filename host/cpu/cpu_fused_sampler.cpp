// The CPU twin of the fused sampler (kernels/fused_sampler.cu): the same block program over the
// same tiles, each phase run by one thread (tid 0 of 1) over all of its elements, the tiles on the
// OpenMP team. It computes what each GPU block computes, apart from the activations' exp, and so
// tests the kernel's tiling, stage points, inputs, guidance and divergence tangents here, without a
// GPU.
#include <algorithm>
#include <limits>
#include <vector>

#include "cufm/error.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "kernels/fused_sampler.hpp"

namespace cufm::cpu {

void fused_sample(const cuda::FusedSample& p) {
  CUFM_REQUIRE(p.n >= 1 && p.tile >= 1 && p.x, "fused_sample: needs points, a tile and x");
  const std::string why = cuda::fused_sampler_refusal(p.net, p.dim, p.precision, Solver::Euler);
  CUFM_REQUIRE(why.empty(), "fused_sample: " << why);
  const std::string bad = cuda::fused_tangents_error(p);
  CUFM_REQUIRE(bad.empty(), "fused_sample: " << bad);
  const int64_t tiles = (p.n + p.tile - 1) / p.tile;
  const int64_t floats = cuda::fused_smem_floats(p);
#pragma omp parallel
  {
    // NaN where nothing was written: a phase that reads what no phase wrote (the tensor cores'
    // padding included) shows in the results.
    std::vector<float> smem(static_cast<size_t>(floats), std::numeric_limits<float>::quiet_NaN());
    const cuda::FusedSmem s = cuda::fused_smem_carve(p, smem.data());
#pragma omp for schedule(static)
    for (int64_t b = 0; b < tiles; ++b) {
      const int64_t first = b * p.tile;
      const int rows = static_cast<int>(std::min<int64_t>(p.tile, p.n - first));
      cuda::fused_sample_tile(
          p, first, rows, s, 0, 1, hd::FastExp{}, [] {}, cuda::FusedTwinMma{});
    }
  }
}

}  // namespace cufm::cpu
