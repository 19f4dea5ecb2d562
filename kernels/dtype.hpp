// The storage type of activations and GEMM operands in the CUDA backend (plain C++).
#pragma once

#include <cstddef>

namespace cufm::cuda {

enum class DType : int { F32 = 0, BF16 = 1 };

inline size_t dtype_size(DType t) {
  return t == DType::BF16 ? 2 : 4;
}

}  // namespace cufm::cuda
