// Helpers shared by the tests: tolerance comparison that reports the worst element.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cufm/device.hpp"
#include "cufm/error.hpp"

namespace cufm::test {

// Every |got - want| <= atol + rtol * |want|; on failure names the worst element. A non-finite
// expected value must be matched exactly (NaN by NaN), and an empty comparison fails.
template <typename A, typename B>
::testing::AssertionResult all_close(const A* got, const B* want, size_t n, double atol, double rtol) {
  if (n == 0) return ::testing::AssertionFailure() << "nothing to compare (n = 0)";
  double worst = -1.0;
  size_t worst_i = 0;
  for (size_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
    double excess;
    if (!std::isfinite(w)) {
      excess = (std::isnan(w) ? std::isnan(g) : g == w) ? -1.0 : INFINITY;
    } else {
      excess = std::isfinite(g) ? std::abs(g - w) - (atol + rtol * std::abs(w)) : INFINITY;
    }
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

// all_close with atol given as a fraction of the reference's largest magnitude (sums over
// thousands of terms are compared to the scale of the tensor, not of each small element).
inline ::testing::AssertionResult close_to_scale(const std::vector<float>& got,
                                                 const std::vector<float>& want, double atol_frac,
                                                 double rtol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  double scale = 0.0;
  for (float w : want) scale = std::max(scale, static_cast<double>(std::abs(w)));
  return all_close(got.data(), want.data(), got.size(), atol_frac * scale, rtol);
}

// close_to_scale, but for up to `allowed` elements: a ReLU divergence (the trace of a Jacobian whose
// act' jumps from 0 to 1 at z = 0) moves by a whole term where a pre-activation near zero lands on
// the other side in another summation order. Names how many elements were off.
inline ::testing::AssertionResult close_to_scale_but(const std::vector<float>& got,
                                                     const std::vector<float>& want, double atol_frac,
                                                     double rtol, size_t allowed) {
  if (got.size() != want.size() || want.empty())
    return ::testing::AssertionFailure() << "sizes " << got.size() << " and " << want.size();
  double scale = 0.0;
  for (float w : want) scale = std::max(scale, static_cast<double>(std::abs(w)));
  size_t off = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = std::abs(static_cast<double>(got[i]) - want[i]);
    if (!(d <= atol_frac * scale + rtol * std::abs(static_cast<double>(want[i])))) ++off;
  }
  if (off <= allowed) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << off << " of " << want.size() << " elements off (" << allowed << " allowed)";
}

// |got - want| / |want| over whole vectors (the L2 norms), in double.
inline double relative_l2(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  return got.size() == want.size() ? std::sqrt(num / den) : INFINITY;
}

// Random floats in [lo, hi) from a fixed seed (std::mt19937 is portable across platforms).
inline std::vector<float> random_floats(size_t n, float lo, float hi, unsigned seed) {
  std::mt19937 gen(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = lo + (hi - lo) * static_cast<float>(gen() >> 8) * (1.0f / 16777216.0f);
  return v;
}

template <typename V>
double norm2(const V& v) {
  double s = 0.0;
  for (auto x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

// Where the CPU tests run: the CPU backend, fp32, `threads` threads (0: all cores).
inline cufm::RunOptions on_cpu(int threads = 0) {
  cufm::RunOptions run;
  run.device = cufm::Device::CPU;
  run.threads = threads;
  return run;
}

// Runs f, which must throw cufm::Error, and returns the message.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const cufm::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a cufm::Error";
  return "";
}

// A fresh directory under the system's temporary folder, removed with its contents.
class TempDir {
 public:
  TempDir() {
    namespace fs = std::filesystem;
    const fs::path base = fs::temp_directory_path();
    for (unsigned i = 0;; ++i) {
      fs::path candidate =
          base / ("cufm_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
                  std::to_string(reinterpret_cast<uintptr_t>(this) + i));
      if (fs::create_directory(candidate)) {
        path_ = candidate.string();
        break;
      }
    }
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path_))
      out.push_back(e.path().filename().string());
    return out;
  }

 private:
  std::string path_;
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace cufm::test
