// Which cuBLASLt epilogues the GPU's MLP plans ask for (host/cuda/epilogue_policy.hpp): plain
// host logic, so it is settled here without a GPU. The GPU tests (test_gpu_mlp) check that the
// built plans follow it, fused and unfused.
#include <gtest/gtest.h>

#include "host/cuda/epilogue_policy.hpp"
#include "test_util.hpp"

namespace {

using namespace cufm;
using cuda::Epilogues;
using cuda::plan_epilogues;

// cuBLASLt's GELU epilogues use tanh.approx.f32 (relative error ~2^-11): never at FP32.
TEST(EpiloguePolicy, GeluEpilogueOnlyBelowFp32) {
  EXPECT_FALSE(plan_epilogues(Activation::GELU, Precision::FP32, Epilogues::Fused).activation);
  EXPECT_TRUE(plan_epilogues(Activation::GELU, Precision::TF32, Epilogues::Fused).activation);
  EXPECT_TRUE(plan_epilogues(Activation::GELU, Precision::BF16, Epilogues::Fused).activation);
  // The bias epilogues stay: they are exact.
  EXPECT_TRUE(plan_epilogues(Activation::GELU, Precision::FP32, Epilogues::Fused).bias);
}

TEST(EpiloguePolicy, ReluFusedAtEveryPrecisionSiluNever) {
  for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
    EXPECT_TRUE(plan_epilogues(Activation::ReLU, p, Epilogues::Fused).activation) << to_string(p);
    EXPECT_FALSE(plan_epilogues(Activation::SiLU, p, Epilogues::Fused).activation) << to_string(p);
    EXPECT_TRUE(plan_epilogues(Activation::SiLU, p, Epilogues::Fused).bias) << to_string(p);
  }
}

TEST(EpiloguePolicy, UnfusedTurnsEveryEpilogueOff) {
  for (Activation a : {Activation::SiLU, Activation::ReLU, Activation::GELU}) {
    for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
      const cuda::EpiloguePlan plan = plan_epilogues(a, p, Epilogues::Unfused);
      EXPECT_FALSE(plan.bias);
      EXPECT_FALSE(plan.activation);
      EXPECT_FALSE(plan.derivative);
    }
  }
}

TEST(EpiloguePolicy, ForwardOnlyFusesTheForwardButNoDerivative) {
  for (Precision p : {Precision::TF32, Precision::BF16}) {
    for (Activation a : {Activation::ReLU, Activation::GELU}) {
      const cuda::EpiloguePlan fwd = plan_epilogues(a, p, Epilogues::ForwardOnly);
      EXPECT_TRUE(fwd.activation);
      EXPECT_FALSE(fwd.derivative);
      EXPECT_TRUE(plan_epilogues(a, p, Epilogues::Fused).derivative);
    }
  }
  EXPECT_FALSE(plan_epilogues(Activation::GELU, Precision::FP32, Epilogues::Fused).derivative);
}

TEST(EpiloguePolicy, EnvironmentValueIsParsedStrictly) {
  EXPECT_EQ(cuda::parse_epilogues(nullptr), Epilogues::Fused);
  EXPECT_EQ(cuda::parse_epilogues(""), Epilogues::Fused);
  EXPECT_EQ(cuda::parse_epilogues("fused"), Epilogues::Fused);
  EXPECT_EQ(cuda::parse_epilogues("unfused"), Epilogues::Unfused);
  EXPECT_EQ(cuda::parse_epilogues("forward-only"), Epilogues::ForwardOnly);
  const std::string msg = test::error_of([] { cuda::parse_epilogues("off"); });
  EXPECT_NE(msg.find("CUFM_LT_EPILOGUES"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'off'"), std::string::npos) << msg;
}

}  // namespace
