// The deterministic grid-wide sum the fused kernels share (the MSE loss, the gradient norm for
// clipping, Dormand-Prince's error norm): each block reduces its threads' values with CUB in
// double, publishes its sum, and the last block to finish adds the block sums in block order, so
// the bits never depend on scheduling and no float atomics are involved.
#pragma once

#include <cub/block/block_reduce.cuh>

namespace cufm::cuda {

// Every thread of every block must call it (no early return before). partials holds gridDim.x
// doubles; counter is zero on entry and left at zero for the next launch (and graph replay).
// Returns true in thread 0 of the last block to finish, with the grid's total in *total.
template <int kThreads>
__device__ __forceinline__ bool grid_sum(double value, unsigned int* counter, double* partials,
                                         double* total) {
  using BlockReduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  __shared__ bool is_last;
  const double block_sum = BlockReduce(temp).Sum(value);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = block_sum;
    __threadfence();  // publish the partial before counting this block as done
    is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return false;
  __threadfence();
  // Every thread sums a fixed strided subset, then a fixed-shape block reduction.
  double s = 0.0;
  for (unsigned int i = threadIdx.x; i < gridDim.x; i += blockDim.x) {
    s += *static_cast<volatile double*>(partials + i);
  }
  __syncthreads();  // temp is reused
  const double all = BlockReduce(temp).Sum(s);
  if (threadIdx.x != 0) return false;
  *counter = 0u;
  *total = all;
  return true;
}

}  // namespace cufm::cuda
