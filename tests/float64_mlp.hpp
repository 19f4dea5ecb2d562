// The float64 oracle the gradient tests check against: the same MLP written plainly in double
// (rows of input [batch, input_dim], parameters in the Model's flat layout).
#pragma once

#include <cmath>
#include <vector>

#include "cufm/model.hpp"

namespace cufm::test {

inline double act64(Activation a, double z) {
  switch (a) {
    case Activation::ReLU:
      return z > 0 ? z : 0;
    case Activation::GELU:
      return 0.5 * z * (1 + std::tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)));
    default:
      return z / (1 + std::exp(-z));
  }
}

template <typename T>
std::vector<double> forward64(const MlpConfig& m, const std::vector<double>& p, const std::vector<T>& input,
                              int batch) {
  const ParamLayout layout(m);
  std::vector<double> x(input.begin(), input.end());
  for (int l = 0; l < m.num_layers(); ++l) {
    const int in = m.layer_in(l), out = m.layer_out(l);
    std::vector<double> y(static_cast<size_t>(batch) * out);
    for (int r = 0; r < batch; ++r) {
      for (int o = 0; o < out; ++o) {
        double s = p[layout.bias_offset(l) + o];
        for (int i = 0; i < in; ++i) s += p[layout.weight_offset(l) + o * in + i] * x[r * in + i];
        y[r * out + o] = l + 1 < m.num_layers() ? act64(m.activation, s) : s;
      }
    }
    x.swap(y);
  }
  return x;
}

}  // namespace cufm::test
