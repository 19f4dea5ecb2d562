// Which of cuBLASLt's fused epilogues an MLP plan asks for (internal; plain C++, so the policy is
// tested without a GPU in tests/test_epilogue_policy.cpp).
//
// - Fused (the default): the bias in every forward GEMM (BIAS) and the bias gradients in the
//   backward ones (BGRADB, DRELU_BGRAD/DGELU_BGRAD); ReLU in the epilogue (exact) at every
//   precision; GELU in the epilogue at TF32 and BF16 only. cuBLASLt 13.0's GELU epilogues evaluate
//   tanh with the hardware's tanh.approx.f32 (relative error ~2^-11), which is below TF32's and
//   BF16's own rounding but far above FP32's: an FP32 GELU model must be FP32-accurate, so at FP32
//   the GEMM adds the bias and cuFM's activation kernel applies GELU (hd::activate, accurate to a
//   few ulp). SiLU has no epilogue at any precision.
// - Unfused: plain GEMMs and cuFM's own kernels for everything (bias_add, the activation kernels,
//   column_sum). The fallback that runs when cuBLASLt refuses an epilogue; selecting it outright lets
//   the tests run that path on GPUs where every epilogue exists (CUFM_LT_EPILOGUES=unfused).
// - ForwardOnly (for the tests): as Fused, but no DRELU/DGELU backward, so every fused forward is
//   re-planned unfused when the backward is built: the path taken on a GPU whose cuBLASLt fuses
//   the activation forward but refuses its derivative.
#pragma once

#include <cstdlib>
#include <cstring>

#include "cufm/error.hpp"
#include "cufm/detail/math.hpp"
#include "cufm/trainer.hpp"

namespace cufm::cuda {

enum class Epilogues : int { Fused = 0, Unfused = 1, ForwardOnly = 2 };

inline const char* to_string(Epilogues e) {
  switch (e) {
    case Epilogues::Unfused:
      return "unfused";
    case Epilogues::ForwardOnly:
      return "forward-only";
    default:
      return "fused";
  }
}

// "fused", "unfused" or "forward-only" (nullptr or "": fused); anything else is an error naming
// the value.
inline Epilogues parse_epilogues(const char* value) {
  if (value == nullptr || *value == '\0' || std::strcmp(value, "fused") == 0) return Epilogues::Fused;
  if (std::strcmp(value, "unfused") == 0) return Epilogues::Unfused;
  if (std::strcmp(value, "forward-only") == 0) return Epilogues::ForwardOnly;
  CUFM_FAIL("CUFM_LT_EPILOGUES must be 'fused', 'unfused' or 'forward-only', got '" << value << "'");
}

// The process's setting: the environment variable CUFM_LT_EPILOGUES, read once.
inline Epilogues epilogues_from_environment() {
  static const Epilogues e = parse_epilogues(std::getenv("CUFM_LT_EPILOGUES"));
  return e;
}

struct EpiloguePlan {
  bool bias = false;        // BIAS forward, BGRADB / D*_BGRAD backward (else bias_add / column_sum)
  bool activation = false;  // RELU/GELU(_AUX)_BIAS forward (else the activation kernels)
  bool derivative = false;  // DRELU/DGELU backward after a fused forward (else that forward is re-planned)
};

inline EpiloguePlan plan_epilogues(Activation act, Precision precision, Epilogues mode) {
  EpiloguePlan p;
  if (mode == Epilogues::Unfused) return p;
  p.bias = true;
  switch (act) {
    case Activation::ReLU:
      p.activation = true;
      break;
    case Activation::GELU:
      p.activation = precision != Precision::FP32;  // tanh.approx: see the header comment
      break;
    default:
      p.activation = false;  // SiLU: no epilogue
  }
  p.derivative = p.activation && mode == Epilogues::Fused;
  return p;
}

}  // namespace cufm::cuda
