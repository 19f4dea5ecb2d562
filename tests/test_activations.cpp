// The activations and their derivatives (hd::activate, hd::activate_grad: what the CPU backend and
// the kernels both run) against a long-double reference over [-20, 20], and the same functions
// replayed with the device's exp error bound against the GPU test's tolerance.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "cufm/detail/math.hpp"

namespace {

using namespace cufm;

// Written from the definitions in long double, with no cancellation of its own: GELU's
// (1 + tanh u) / 2 as 1 / (1 + exp(-2u)), and 1 - tanh^2 u = 4 exp(-2|u|) / (1 + exp(-2|u|))^2.
long double act_ref(Activation a, long double z) {
  const long double k0 = 0.7978845608028654L, k1 = 0.044715L;
  switch (a) {
    case Activation::ReLU:
      return z > 0 ? z : 0;
    case Activation::GELU:
      return z / (1 + std::exp(-2 * k0 * (z + k1 * z * z * z)));
    default:
      return z / (1 + std::exp(-z));
  }
}

long double grad_ref(Activation a, long double z) {
  const long double k0 = 0.7978845608028654L, k1 = 0.044715L;
  switch (a) {
    case Activation::ReLU:
      return z > 0 ? 1 : 0;
    case Activation::GELU: {
      const long double u = k0 * (z + k1 * z * z * z), e = std::exp(-2 * std::fabs(u));
      const long double sech2 = 4 * e / ((1 + e) * (1 + e));
      return 1 / (1 + std::exp(-2 * u)) + 0.5L * z * sech2 * k0 * (1 + 3 * k1 * z * z);
    }
    default: {
      const long double s = 1 / (1 + std::exp(-z));
      return s * (1 + z * (1 - s));
    }
  }
}

const char* name(Activation a) {
  return a == Activation::SiLU ? "silu" : a == Activation::ReLU ? "relu" : "gelu";
}

// Records the worst excess |got - want| - (atol + rtol |want|) over many points.
struct Worst {
  double atol, rtol;
  double excess = -1e300;
  float z = 0;
  double got = 0, want = 0;
  void add(float at, double g, long double w) {
    const double e =
        std::fabs(g - static_cast<double>(w)) - (atol + rtol * std::fabs(static_cast<double>(w)));
    if (!(e <= excess)) {  // NaN counts as worst
      excess = std::isnan(g) ? 1e300 : e;
      z = at;
      got = g;
      want = static_cast<double>(w);
    }
  }
  std::string describe() const {
    std::ostringstream os;
    os << "worst at z = " << z << ": got " << got << ", want " << want << " (atol " << atol << ", rtol "
       << rtol << ")";
    return os.str();
  }
};

// fp32 accuracy over [-20, 20]: atol 1e-7 (a few ulp of the O(1) values), rtol 2e-5 (the tails,
// where exp's argument 2u = 2 k0 (z + k1 z^3) carries the float rounding of z^3 to e^{2u}).
// The old host tanh (1 - 2 / (e^{2u} + 1)) failed both: GELU'(-5) came out 0 where it is -1.5e-6.
TEST(Activations, MatchALongDoubleReferenceOverMinus20To20) {
  for (Activation a : {Activation::SiLU, Activation::ReLU, Activation::GELU}) {
    Worst act{1e-7, 2e-5}, grad{1e-7, 2e-5};
    constexpr int kPoints = 400000;
    for (int i = 0; i <= kPoints; ++i) {
      const float z = -20.0f + 40.0f * static_cast<float>(i) / kPoints;
      act.add(z, hd::activate(a, z), act_ref(a, z));
      grad.add(z, hd::activate_grad(a, z), grad_ref(a, z));
    }
    EXPECT_LE(act.excess, 0.0) << name(a) << " activation: " << act.describe();
    EXPECT_LE(grad.excess, 0.0) << name(a) << " derivative: " << grad.describe();
  }
  // The point the old formula got wrong, named.
  EXPECT_NEAR(hd::activate_grad(Activation::GELU, -5.0f), -1.5464e-6, 1e-9);
  EXPECT_LT(hd::activate(Activation::GELU, -5.0f), -2.29e-7);
}

// The kernels run the same formulas with __expf, whose error CUDA's programming guide bounds by
// 2 + floor(|1.173 x|) ulp. Replaying the activations with exp pushed to either end of that bound
// (and the argument's own rounding on top) must stay within the GPU test's fp32 tolerance
// (Activation.ForwardBackwardMatchCpu: atol 1e-6, rtol 1e-5) over that test's inputs, z + bias in
// [-5, 5], and over [-20, 20] with rtol 2e-5 as above.
struct PerturbedExp {
  int sign;  // +1: exp at the top of the device's error bound, -1: at the bottom
  float operator()(float x) const {
    const double ulps = 2.0 + std::floor(std::fabs(1.173 * x));
    const double exact = std::exp(static_cast<double>(x));
    return static_cast<float>(exact * (1.0 + sign * ulps * std::ldexp(1.0, -23)));
  }
};

TEST(Activations, DeviceExpErrorStaysWithinTheGpuTolerance) {
  for (Activation a : {Activation::SiLU, Activation::GELU}) {
    for (int sign : {-1, 1}) {
      const PerturbedExp dev{sign};
      Worst act{1e-6, 1e-5}, grad{1e-6, 1e-5}, act_wide{1e-7, 2e-5}, grad_wide{1e-7, 2e-5};
      constexpr int kPoints = 200000;
      for (int i = 0; i <= kPoints; ++i) {
        const float z = -20.0f + 40.0f * static_cast<float>(i) / kPoints;
        const float a_dev = hd::activate(a, z, dev), g_dev = hd::activate_grad(a, z, dev);
        if (std::fabs(z) <= 5.0f) {
          act.add(z, a_dev, hd::activate(a, z));
          grad.add(z, g_dev, hd::activate_grad(a, z));
        }
        act_wide.add(z, a_dev, act_ref(a, z));
        grad_wide.add(z, g_dev, grad_ref(a, z));
      }
      const std::string what = std::string(name(a)) + (sign > 0 ? ", exp high" : ", exp low");
      EXPECT_LE(act.excess, 0.0) << what << " activation vs host: " << act.describe();
      EXPECT_LE(grad.excess, 0.0) << what << " derivative vs host: " << grad.describe();
      EXPECT_LE(act_wide.excess, 0.0) << what << " activation vs reference: " << act_wide.describe();
      EXPECT_LE(grad_wide.excess, 0.0) << what << " derivative vs reference: " << grad_wide.describe();
    }
  }
}

// Saturation and non-finite inputs: no NaN from inf/inf, and NaN propagates.
TEST(Activations, SaturateAndPropagateNaN) {
  for (Activation a : {Activation::SiLU, Activation::GELU}) {
    EXPECT_EQ(hd::activate(a, 1e6f), 1e6f) << name(a);
    EXPECT_NEAR(hd::activate(a, -1e6f), 0.0f, 1e-20) << name(a);
    EXPECT_EQ(hd::activate_grad(a, 1e6f), 1.0f) << name(a);
    EXPECT_NEAR(hd::activate_grad(a, -1e6f), 0.0f, 1e-20) << name(a);
    EXPECT_TRUE(std::isnan(hd::activate(a, NAN))) << name(a);
    EXPECT_TRUE(std::isnan(hd::activate_grad(a, NAN))) << name(a);
  }
}

}  // namespace
