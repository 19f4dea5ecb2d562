// column_sum's launch geometry and its addition order (kernels/column_sum_order.hpp), settled on
// the CPU: the kernel's grid fills an H200 at the training shapes, every split holds rows, and the
// fixed order stays as accurate as a plain float sum. The GPU test (Activation.
// ColumnSumFollowsItsHostOrderBitForBit) checks the kernel against column_sum_host bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/column_sum_order.hpp"

namespace {

using namespace cufm::cuda;

int64_t blocks_for(int64_t rows, int width) {
  return column_sum_shape(rows).splits * ((width + kColumnSumTile - 1) / kColumnSumTile);
}

// The old kernel launched ceil(width / 32) blocks whatever the rows: 16 blocks at R1's 4096 x 512
// on an H200's 132 SMs. Now every SM gets work at the batch sizes training uses.
TEST(ColumnSum, GridCoversAnH200AtTrainingShapes) {
  constexpr int64_t kSms = 132;
  EXPECT_GE(blocks_for(4096, 512), kSms);   // R1
  EXPECT_GE(blocks_for(16384, 256), kSms);  // R2-sized
  EXPECT_GE(blocks_for(65536, 64), kSms);
  EXPECT_GE(blocks_for(1 << 18, 128), kSms);
}

TEST(ColumnSum, SplitsCoverTheRowsWithNoneEmpty) {
  for (int64_t rows : {1LL, 7LL, 8LL, 255LL, 256LL, 257LL, 4096LL, 65536LL, 65537LL, 100003LL, 1LL << 20,
                       (1LL << 31) - 1, 5000000000LL}) {
    const ColumnSumShape s = column_sum_shape(rows);
    EXPECT_GE(s.splits, 1) << rows;
    EXPECT_LE(s.splits, kColumnSumMaxSplits) << rows;
    EXPECT_LE(s.splits, 65535) << rows;  // gridDim.y's limit
    EXPECT_EQ(s.rows_per_split % kColumnSumLanes, 0) << rows;
    EXPECT_GE(s.splits * s.rows_per_split, rows) << rows;
    EXPECT_LT((s.splits - 1) * s.rows_per_split, rows) << rows << ": an empty split";
    EXPECT_EQ(column_sum_workspace_floats(rows, 100),
              s.splits > 1 ? static_cast<size_t>(s.splits) * 100 : 0u);
  }
}

// The split order is no less accurate than one long float sum: within 1e-6 of sum |g| against a
// double reference, on sums whose terms cancel.
TEST(ColumnSum, HostOrderIsAccurate) {
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int64_t rows : {3LL, 300LL, 4096LL, 70001LL}) {
    const int width = 5;
    std::vector<float> g(static_cast<size_t>(rows) * width);
    for (float& v : g) v = u(gen);
    std::vector<float> got(width);
    column_sum_host(g.data(), rows, width, got.data());
    for (int c = 0; c < width; ++c) {
      double exact = 0.0, mag = 0.0;
      for (int64_t r = 0; r < rows; ++r) {
        exact += g[static_cast<size_t>(r) * width + c];
        mag += std::fabs(g[static_cast<size_t>(r) * width + c]);
      }
      EXPECT_NEAR(got[c], exact, 1e-6 * mag) << rows << " rows, column " << c;
    }
  }
}

}  // namespace
