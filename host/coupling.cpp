// cufm::couple and its checks (cufm/coupling.hpp): the pairing of host rows, computed by the CPU
// backend's solvers (the GPU couples inside its training step, kernels::fm_couple).
#include "cufm/coupling.hpp"

#include <cmath>
#include <numeric>

#include "cufm/error.hpp"
#include "host/backend.hpp"

namespace cufm {

void CouplingConfig::validate() const {
  CUFM_REQUIRE(kind == Coupling::Independent || kind == Coupling::Exact || kind == Coupling::Sinkhorn,
               "unknown coupling " << static_cast<int>(kind));
  CUFM_REQUIRE(std::isfinite(reg) && reg >= 1e-4f && reg <= 100.0f,
               "the Sinkhorn regularisation (ot_reg) must be in [1e-4, 100], got " << reg);
}

std::vector<uint32_t> couple(const CouplingConfig& config, int64_t B, int D, const float* x1,
                             const float* eps, const int32_t* groups, int threads) {
  config.validate();
  CUFM_REQUIRE(B >= 1 && B <= (int64_t{1} << 31) - 1, "couple: B must be in [1, 2^31 - 1], got " << B);
  CUFM_REQUIRE(D >= 1 && D <= 65536, "couple: D must be in [1, 65536], got " << D);
  CUFM_REQUIRE(x1 && eps, "couple: x1 and eps must be non-null [B, D] arrays");
  for (int64_t i = 0; i < B * D; ++i) {
    CUFM_REQUIRE(std::isfinite(x1[i]) && std::isfinite(eps[i]),
                 "couple: " << (std::isfinite(x1[i]) ? "eps" : "x1") << " has a non-finite value at row "
                            << i / D << ", dim " << i % D);
  }
  CUFM_REQUIRE(threads >= 0, "couple: threads must be >= 0 (0: all cores), got " << threads);
  std::vector<uint32_t> noise_row(static_cast<size_t>(B));
  if (config.kind == Coupling::Independent) {
    std::iota(noise_row.begin(), noise_row.end(), 0u);
    return noise_row;
  }
  detail::backend(Device::CPU).couple(config, B, D, x1, eps, groups, threads, noise_row.data());
  return noise_row;
}

double coupling_cost(int64_t B, int D, const float* x1, const float* eps, const uint32_t* noise_row) {
  CUFM_REQUIRE(B >= 1 && D >= 1 && x1 && eps && noise_row, "coupling_cost: needs B, D >= 1 and three arrays");
  double total = 0.0;
  for (int64_t i = 0; i < B; ++i) {
    CUFM_REQUIRE(noise_row[i] < B,
                 "coupling_cost: noise_row[" << i << "] = " << noise_row[i] << " is not a row");
    for (int d = 0; d < D; ++d) {
      const double diff =
          static_cast<double>(x1[i * D + d]) - eps[static_cast<int64_t>(noise_row[i]) * D + d];
      total += diff * diff;
    }
  }
  return total / static_cast<double>(B);
}

}  // namespace cufm
