// The CPU twin of the fused training step (kernels/fused_train.cu): the same block program over the
// same runs of tiles, each phase run by one thread (tid 0 of 1) over all of its elements, the blocks
// on the OpenMP team (each writes only its own partial), then the same second pass. It computes what
// each GPU block computes, apart from the activations' exp, and so tests the kernel's tiling, sums
// and loss here, without a GPU.
#include <algorithm>
#include <limits>
#include <vector>

#include "cufm/error.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "kernels/fused_train.hpp"

namespace cufm::cpu {

void fused_train(const cuda::FusedTrain& p, const float* targets, float* grads, float* loss) {
  const std::string bad = cuda::fused_train_error(p);
  CUFM_REQUIRE(bad.empty(), "fused_train: " << bad);
  CUFM_REQUIRE(targets && grads && loss, "fused_train: targets, grads and loss must be set");
  const int D = p.dim;
  const auto rows_targets = [&](int64_t row, int group, float u[4]) {
    for (int k = 0; k < 4; ++k) u[k] = 4 * group + k < D ? targets[row * D + 4 * group + k] : 0.0f;
  };
  const int64_t floats = cuda::fused_train_smem_floats(p);
#pragma omp parallel
  {
    std::vector<float> smem(static_cast<size_t>(floats));
    const cuda::FusedTrainSmem s = cuda::fused_train_smem_carve(p, smem.data());
#pragma omp for schedule(static)
    for (int g = 0; g < p.blocks; ++g) {
      // NaN where nothing was written, for each block: a phase that reads what no phase wrote shows
      // in the results (with one tile a block, the tests' usual geometry, a ragged last tile too).
      std::fill(smem.begin(), smem.end(), std::numeric_limits<float>::quiet_NaN());
      cuda::fused_train_block(
          p, g, s, 0, 1, hd::FastExp{}, [] {}, rows_targets, cuda::FusedTrainTwinMma{});
    }
  }
  for (int64_t e = 0; e < p.total; ++e) grads[e] = cuda::fused_train_gradient(p, e);
  *loss = cuda::fused_train_loss(p);
}

}  // namespace cufm::cpu
