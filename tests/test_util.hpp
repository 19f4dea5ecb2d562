// Helpers shared by the tests: tolerance comparison that reports the worst element.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <sstream>
#include <string>

namespace cufm::test {

// Every |got - want| <= atol + rtol * |want|; on failure names the worst element.
template <typename A, typename B>
::testing::AssertionResult all_close(const A* got, const B* want, size_t n, double atol, double rtol) {
  double worst = -1.0;
  size_t worst_i = 0;
  for (size_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
    const double excess = std::isfinite(g) ? std::abs(g - w) - (atol + rtol * std::abs(w)) : INFINITY;
    if (excess > worst) {
      worst = excess;
      worst_i = i;
    }
  }
  if (worst <= 0.0) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os << "worst element " << worst_i << ": expected " << static_cast<double>(want[worst_i]) << ", got "
     << static_cast<double>(got[worst_i]) << " (atol " << atol << ", rtol " << rtol << ")";
  return ::testing::AssertionFailure() << os.str();
}

template <typename V>
double norm2(const V& v) {
  double s = 0.0;
  for (auto x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

}  // namespace cufm::test
