// The order in which kernels/activation.cu's column_sum adds (plain C++: the CPU tests check the
// geometry and the GPU test compares the kernel with column_sum_host bit for bit).
#pragma once

#include <cstddef>
#include <cstdint>

namespace cufm::cuda {

// column_sum: the bias gradient db[j] = sum_i g[i, j], deterministic.
// The rows are cut into splits of rows_per_split; a block sums 32 columns of one split with 8 row
// lanes (lane y adds rows y, y + 8, ... of the split in order, then the 8 lane sums are added in
// lane order), and when there is more than one split a second pass adds the splits' sums in split
// order. The geometry depends on rows only, never on the GPU, so the bits are the same everywhere;
// column_sum_host is the same order on the CPU. R1's 4096 x 512 is 16 x 16 = 256 blocks.
struct ColumnSumShape {
  int64_t rows_per_split;
  int64_t splits;
};
constexpr int kColumnSumTile = 32;  // columns per block
constexpr int kColumnSumLanes = 8;  // row lanes per block
constexpr int64_t kColumnSumMaxSplits = 256;
inline ColumnSumShape column_sum_shape(int64_t rows) {
  int64_t per = 256;
  if ((rows + per - 1) / per > kColumnSumMaxSplits) {
    per = (rows + kColumnSumMaxSplits - 1) / kColumnSumMaxSplits;
    per = (per + kColumnSumLanes - 1) / kColumnSumLanes * kColumnSumLanes;
  }
  return {per, (rows + per - 1) / per};
}
// Floats of workspace column_sum needs (0 when one split writes db directly).
inline size_t column_sum_workspace_floats(int64_t rows, int width) {
  const ColumnSumShape s = column_sum_shape(rows);
  return s.splits > 1 ? static_cast<size_t>(s.splits) * static_cast<size_t>(width) : 0;
}
// column_sum's order on the CPU (g as fp32: a bf16 input's values converted exactly).
inline void column_sum_host(const float* g, int64_t rows, int width, float* db) {
  const ColumnSumShape s = column_sum_shape(rows);
  for (int c = 0; c < width; ++c) {
    float total = 0.0f;
    for (int64_t k = 0; k < s.splits; ++k) {
      const int64_t r0 = k * s.rows_per_split,
                    r1 = r0 + s.rows_per_split < rows ? r0 + s.rows_per_split : rows;
      float part = 0.0f;
      for (int y = 0; y < kColumnSumLanes; ++y) {
        float lane = 0.0f;
        for (int64_t r = r0 + y; r < r1; r += kColumnSumLanes) lane += g[r * width + c];
        part += lane;
      }
      total += part;
    }
    db[c] = total;
  }
}

}  // namespace cufm::cuda
