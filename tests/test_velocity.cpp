// VelocityField on the CPU: the model's field as Model::forward computes it, guidance as the
// combination of the conditional and null fields, chunked calls as one call, and clear refusals.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cufm/detail/math.hpp"
#include "cufm/error.hpp"
#include "cufm/sampler.hpp"
#include "cufm/velocity.hpp"
#include "test_util.hpp"

namespace {

using namespace cufm;
using test::error_of;
using ::testing::HasSubstr;

MlpConfig conditional(int dim = 3) {
  MlpConfig m;
  m.data_dim = dim;
  m.hidden = {40, 24};
  m.time_features = 6;
  m.num_classes = 5;
  return m;
}

std::vector<float> points(int64_t n, int dim, uint64_t seed) {
  std::vector<float> x(static_cast<size_t>(n) * dim);
  sampler_noise(seed, 0, n, dim, x.data());
  return x;
}

FieldOptions on_cpu() {
  FieldOptions o;
  o.device = Device::CPU;
  return o;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(VelocityField, IsTheModelsForward) {
  const Model model(conditional(), 4);
  const int64_t n = 9000;  // two of evaluate_model's chunks
  const std::vector<float> x = points(n, 3, 1);
  std::vector<int32_t> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = static_cast<int32_t>(i % 6);  // the null class too
  const std::vector<float> t(n, 0.37f);
  std::vector<float> want(x.size()), got(x.size());
  model.forward(x.data(), t.data(), labels.data(), n, want.data());
  VelocityField field(model, on_cpu());
  EXPECT_EQ(field.device(), Device::CPU);
  field.evaluate(0.37f, x.data(), labels.data(), n, got.data());
  EXPECT_TRUE(same_bits(got, want));
  // No labels: the null class.
  const std::vector<int32_t> null(n, 5);
  model.forward(x.data(), t.data(), null.data(), n, want.data());
  field.evaluate(0.37f, x.data(), nullptr, n, got.data());
  EXPECT_TRUE(same_bits(got, want));
}

TEST(VelocityField, GuidanceCombinesTheConditionalAndNullFields) {
  const Model model(conditional(), 6);
  const int64_t n = 300;
  const std::vector<float> x = points(n, 3, 2);
  std::vector<int32_t> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = static_cast<int32_t>(i % 5);
  std::vector<float> cond(x.size()), null(x.size()), got(x.size());
  VelocityField plain(model, on_cpu());
  plain.evaluate(0.8f, x.data(), labels.data(), n, cond.data());
  plain.evaluate(0.8f, x.data(), nullptr, n, null.data());
  FieldOptions o = on_cpu();
  o.guidance = 2.5f;
  VelocityField guided(model, o);
  guided.evaluate(0.8f, x.data(), labels.data(), n, got.data());
  // One GEMM of 2n rows against two of n: OpenBLAS may split them differently (an ulp or so).
  for (size_t i = 0; i < got.size(); ++i) {
    const float want = hd::guided(null[i], cond[i], 2.5f);
    EXPECT_NEAR(got[i], want, 1e-5f * (1.0f + std::abs(want))) << i;
  }
}

TEST(VelocityField, SetWeightsAndMove) {
  const Model a(conditional(), 7), b(conditional(), 8);
  const std::vector<float> x = points(50, 3, 3);
  std::vector<float> va(x.size()), vb(x.size()), got(x.size());
  VelocityField fa(a, on_cpu()), fb(b, on_cpu());
  fa.evaluate(0.5f, x.data(), nullptr, 50, va.data());
  fb.evaluate(0.5f, x.data(), nullptr, 50, vb.data());
  ASSERT_FALSE(same_bits(va, vb));
  fa.set_weights(b);
  fa.evaluate(0.5f, x.data(), nullptr, 50, got.data());
  EXPECT_TRUE(same_bits(got, vb));
  VelocityField moved(std::move(fa));
  moved.evaluate(0.5f, x.data(), nullptr, 50, got.data());
  EXPECT_TRUE(same_bits(got, vb));
  EXPECT_THROW(fa.evaluate(0.5f, x.data(), nullptr, 50, got.data()),
               Error);  // NOLINT(bugprone-use-after-move)
}

TEST(VelocityField, RefusesWithTheReason) {
  const Model model(conditional(), 9);
  MlpConfig unc = conditional();
  unc.num_classes = 0;
  const Model unconditional(unc, 9);
  std::vector<float> x = points(4, 3, 4), v(x.size());
  std::vector<int32_t> labels = {0, 1, 6, 2};
  VelocityField field(model, on_cpu());
  EXPECT_THAT(error_of([&] { field.evaluate(0.5f, x.data(), labels.data(), 4, v.data()); }),
              HasSubstr("label 6 at row 2 is outside [0, 5]"));
  EXPECT_THAT(error_of([&] { field.evaluate(std::nanf(""), x.data(), nullptr, 4, v.data()); }),
              HasSubstr("t must be finite"));
  EXPECT_THAT(error_of([&] { field.evaluate(0.5f, nullptr, nullptr, 4, v.data()); }),
              HasSubstr("must not be null"));
  EXPECT_THAT(error_of([&] { field.evaluate_device(0.5f, x.data(), nullptr, 4, v.data(), nullptr); }),
              HasSubstr("runs on the CPU"));
  VelocityField unc_field(unconditional, on_cpu());
  EXPECT_THAT(error_of([&] { unc_field.evaluate(0.5f, x.data(), labels.data(), 4, v.data()); }),
              HasSubstr("the model is unconditional"));
  FieldOptions o = on_cpu();
  o.guidance = 1.0f;
  EXPECT_THAT(error_of([&] { VelocityField f(unconditional, o); }),
              HasSubstr("guidance needs a conditional model"));
  VelocityField guided(model, o);
  EXPECT_THAT(error_of([&] { guided.evaluate(0.5f, x.data(), nullptr, 4, v.data()); }),
              HasSubstr("guidance needs a condition to guide towards"));
  FieldOptions tf32 = on_cpu();
  tf32.precision = Precision::TF32;  // bf16 runs on CPUs that have it (test_cpu_bf16)
  EXPECT_THAT(error_of([&] { VelocityField f(model, tf32); }), HasSubstr("tf32 needs the CUDA backend"));
  EXPECT_THAT(error_of([&] { field.set_weights(unconditional); }), HasSubstr("configuration differs"));
}

}  // namespace
