// Device selection's host logic: which GPUs a build can run on (its CMAKE_CUDA_ARCHITECTURES).
#include <gtest/gtest.h>

#include "cufm/device.hpp"
#include "host/backend.hpp"

namespace {

using cufm::detail::lowest_built_architecture;

TEST(Device, LowestBuiltArchitectureReadsCMakeLists) {
  EXPECT_EQ(lowest_built_architecture("80;90"), 80);
  EXPECT_EQ(lowest_built_architecture("90"), 90);
  EXPECT_EQ(lowest_built_architecture("90-real;86-virtual"), 86);
  EXPECT_EQ(lowest_built_architecture("90a"), 90);
  EXPECT_EQ(lowest_built_architecture("native"), 0);  // unknown: every GPU is taken as usable
  EXPECT_EQ(lowest_built_architecture("all-major"), 0);
  EXPECT_EQ(lowest_built_architecture(""), 0);
}

TEST(Device, AutoIsCpuWithoutAGpu) {
  EXPECT_EQ(cufm::resolve_device(cufm::Device::CPU), cufm::Device::CPU);
  if (!cufm::cuda_built() || cufm::cuda_devices().empty()) {
    EXPECT_EQ(cufm::resolve_device(cufm::Device::Auto), cufm::Device::CPU);
  } else {
    GTEST_SKIP() << "a GPU is visible: Auto's CPU fallback is not reachable here";
  }
}

}  // namespace
