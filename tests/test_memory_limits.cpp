// Requests that would exhaust memory are refused up front, with the figure needed and the memory
// available, instead of ending in std::bad_alloc (or the OOM killer) half-way. CUFM_MEMORY_LIMIT
// stands in for a small machine, so each case is decided the same way everywhere.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "cufm/cufm.hpp"
#include "host/memory.hpp"
#include "test_util.hpp"

namespace {

using cufm::test::error_of;
using ::testing::HasSubstr;

class MemoryLimits : public ::testing::Test {
 protected:
  void SetUp() override { ::setenv("CUFM_MEMORY_LIMIT", "64M", 1); }
  void TearDown() override { ::unsetenv("CUFM_MEMORY_LIMIT"); }
};

TEST_F(MemoryLimits, TheLimitIsReadWithItsSuffix) {
  EXPECT_EQ(cufm::detail::available_memory(), uint64_t{64} << 20);
  ::setenv("CUFM_MEMORY_LIMIT", "3K", 1);
  EXPECT_EQ(cufm::detail::available_memory(), 3072u);
  ::setenv("CUFM_MEMORY_LIMIT", "12x", 1);
  EXPECT_THAT(error_of([] { cufm::detail::available_memory(); }), HasSubstr("CUFM_MEMORY_LIMIT"));
  EXPECT_EQ(cufm::detail::mul_sat(uint64_t{1} << 40, uint64_t{1} << 40), UINT64_MAX);
  EXPECT_EQ(cufm::detail::add_sat(UINT64_MAX - 1, 5), UINT64_MAX);
}

TEST_F(MemoryLimits, AHugeToyDatasetIsRefused) {
  // --n-data 4294967296 (the toys' maximum): 48 GiB of points and labels.
  const std::string msg = error_of([] { cufm::make_toy("moons", int64_t{1} << 32, 0); });
  EXPECT_THAT(msg, HasSubstr("toy dataset 'moons' of 4294967296 points needs about 48.0 GiB"));
  EXPECT_THAT(msg, HasSubstr("only 64 MiB are available"));
}

TEST_F(MemoryLimits, AHugeModelIsRefused) {
  cufm::MlpConfig m;  // --hidden 65536,65536: 4.3 billion parameters
  m.data_dim = 2;
  m.hidden = {65536, 65536};
  EXPECT_THAT(error_of([&] { cufm::Model(m, 0); }), HasSubstr("needs about 16.0 GiB"));
}

TEST_F(MemoryLimits, AHugeBatchIsRefused) {
  cufm::MlpConfig m;
  m.data_dim = 2;
  m.hidden = {512, 512};
  cufm::TrainConfig tc;
  tc.batch_size = 1 << 26;  // --batch 67108864
  const cufm::Dataset data = cufm::make_toy("moons", 1000, 0);
  const std::string msg = error_of([&] { cufm::Trainer(cufm::Model(m, 0), data, tc, cufm::test::on_cpu()); });
  EXPECT_THAT(msg,
              HasSubstr("training (model, optimiser, dataset copy and a batch's activations) needs about"));
}

TEST_F(MemoryLimits, AHugeSampleCountIsRefused) {
  cufm::MlpConfig m;
  m.data_dim = 2;
  m.hidden = {8};
  cufm::SampleConfig sc;
  sc.count = int64_t{1} << 31;  // --count 2147483648
  sc.device = cufm::Device::CPU;
  EXPECT_THAT(error_of([&] { cufm::sample(cufm::Model(m, 0), sc); }),
              HasSubstr("sampling 2147483648 points"));
}

TEST_F(MemoryLimits, TooManyProjectionsAreRefused) {
  const std::vector<float> a = {0.0f, 1.0f}, b = {1.0f, 0.0f};
  EXPECT_THAT(error_of([&] { cufm::sliced_wasserstein2(a.data(), 1, b.data(), 1, 2, 2000000000, 0); }),
              HasSubstr("projections must be in [1, 1000000]"));
}

}  // namespace
