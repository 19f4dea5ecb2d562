// CUFM_GPU_MLP (internal): which MLP path the GPU's sampling and log-likelihoods take. Unset or
// "auto": the fused kernel where it applies, else the layered path; "fused": the fused kernel or an
// error saying why it cannot run; "layered": cuBLAS/cuBLASLt layer by layer.
#pragma once

#include <cstdlib>
#include <string>

#include "cufm/error.hpp"

namespace cufm::cuda {

enum class GpuMlp { Auto, Fused, Layered };

inline GpuMlp gpu_mlp_from_env() {
  const char* env = std::getenv("CUFM_GPU_MLP");
  const std::string want = env ? env : "";
  if (want.empty() || want == "auto") return GpuMlp::Auto;
  if (want == "fused") return GpuMlp::Fused;
  if (want == "layered") return GpuMlp::Layered;
  CUFM_FAIL("CUFM_GPU_MLP='" << want << "': expected fused, layered or auto");
}

// Whether to take the fused path, given why it cannot run (empty: it can): throws when
// CUFM_GPU_MLP=fused asks for it and it cannot.
inline bool take_fused(GpuMlp want, const std::string& why_not) {
  if (want == GpuMlp::Layered) return false;
  CUFM_REQUIRE(want != GpuMlp::Fused || why_not.empty(), "CUFM_GPU_MLP=fused, but " << why_not);
  return why_not.empty();
}

}  // namespace cufm::cuda
