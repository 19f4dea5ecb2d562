// The layers' elementwise work where cuBLASLt runs no fused epilogue (SiLU always; GELU at FP32;
// ReLU/GELU when an epilogue is unavailable or turned off): z += bias, a = act(z) forward;
// g *= act'(z) backward; z += bias alone (the output layer); and the deterministic bias-gradient
// column sum. Elementwise launch: 4 elements per thread, 256 threads per block, grid-stride. Cost:
// memory-bound; forward reads z, writes z and a (12 bytes/element in fp32): 4096 x 512 is 25 MB,
// ~6 us at 4.8 TB/s on an H200. column_sum: see kernels/activation.hpp.
#include <cuda_bf16.h>

#include <algorithm>
#include <initializer_list>

#include "cufm/detail/math.hpp"
#include "kernels/activation.hpp"
#include "kernels/common.cuh"
#include "kernels/cuda_check.hpp"

namespace cufm::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 65535;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    activation_forward_kernel(Activation act, T* __restrict__ z, T* __restrict__ a,
                              const float* __restrict__ bias, int64_t quads, int width) {
  for (const int64_t q : grid_stride(quads)) {
    const int64_t i = 4 * q;
    float4 v = load4(z + i);
    if (bias) {
      const int col = static_cast<int>(i % width);  // width % 4 == 0: the 4 share a row
      const float4 b = *reinterpret_cast<const float4*>(bias + col);
      v.x += b.x;
      v.y += b.y;
      v.z += b.z;
      v.w += b.w;
      store4(z + i, v);
    }
    store4(a + i, make_float4(hd::activate(act, v.x), hd::activate(act, v.y), hd::activate(act, v.z),
                              hd::activate(act, v.w)));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    activation_backward_kernel(Activation act, T* __restrict__ g, const T* __restrict__ z, int64_t quads) {
  for (const int64_t q : grid_stride(quads)) {
    const int64_t i = 4 * q;
    const float4 gv = load4(g + i), zv = load4(z + i);
    store4(g + i, make_float4(gv.x * hd::activate_grad(act, zv.x), gv.y * hd::activate_grad(act, zv.y),
                              gv.z * hd::activate_grad(act, zv.z), gv.w * hd::activate_grad(act, zv.w)));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    bias_add_kernel(T* __restrict__ z, const float* __restrict__ bias, int64_t quads, int width) {
  for (const int64_t q : grid_stride(quads)) {
    const int64_t i = 4 * q;
    const float4 b = *reinterpret_cast<const float4*>(bias + i % width);
    float4 v = load4(z + i);
    v.x += b.x;
    v.y += b.y;
    v.z += b.z;
    v.w += b.w;
    store4(z + i, v);
  }
}

// Block (x, y) sums columns 32x .. 32x + 31 over split y's rows: lane (tx, ty) adds rows
// r0 + ty, r0 + ty + 8, ... in order (a warp reads one row's 32 columns: coalesced), then thread
// (tx, 0) adds the 8 lane sums in ty order. out: db (one split) or the [splits, width] partials.
template <typename T>
__global__ void __launch_bounds__(kColumnSumTile* kColumnSumLanes)
    column_sum_split_kernel(const T* __restrict__ g, int64_t rows, int width, int64_t rows_per_split,
                            float* __restrict__ out) {
  __shared__ float lane_sum[kColumnSumLanes][kColumnSumTile + 1];
  const int col = blockIdx.x * kColumnSumTile + threadIdx.x;
  const int64_t r0 = blockIdx.y * rows_per_split;
  const int64_t r1 = r0 + rows_per_split < rows ? r0 + rows_per_split : rows;
  float s = 0.0f;
  if (col < width) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kColumnSumLanes) s += to_float(g[r * width + col]);
  }
  lane_sum[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < width) {
    float part = 0.0f;
#pragma unroll
    for (int k = 0; k < kColumnSumLanes; ++k) part += lane_sum[k][threadIdx.x];
    out[static_cast<int64_t>(blockIdx.y) * width + col] = part;
  }
}

// db[c] = the splits' sums of column c added in split order.
__global__ void __launch_bounds__(kThreads)
    column_sum_finish_kernel(const float* __restrict__ partials, int64_t splits, int width,
                             float* __restrict__ db) {
  for (const int64_t c : grid_stride(width)) {
    float total = 0.0f;
    for (int64_t k = 0; k < splits; ++k) total += partials[k * width + c];
    db[c] = total;
  }
}

void check_shape(const char* what, int64_t rows, int width) {
  CUFM_REQUIRE(rows >= 1 && width >= 4 && width % 4 == 0,
               what << ": rows must be >= 1 and width a positive multiple of 4, got rows " << rows
                    << " width " << width);
}

// The kernels load and store four elements at a time.
void check_aligned(const char* what, DType type, std::initializer_list<const void*> data, const float* bias) {
  const size_t need = 4 * dtype_size(type);
  for (const void* p : data) {
    CUFM_REQUIRE(aligned_to(p, need),
                 what << ": every array must be " << need << "-byte aligned (cudaMalloc's are)");
  }
  CUFM_REQUIRE(!bias || aligned_to(bias, 16), what << ": the bias must be 16-byte aligned");
}

}  // namespace

void activation_forward(Activation act, DType type, void* z, void* a, const float* bias, int64_t rows,
                        int width, cudaStream_t stream) {
  check_shape("activation_forward", rows, width);
  CUFM_REQUIRE(z && a, "activation_forward: z and a must be device arrays");
  check_aligned("activation_forward", type, {z, a}, bias);
  const int64_t quads = rows * width / 4;
  const int blocks = grid_for(quads, kThreads, kMaxBlocks);
  if (type == DType::F32) {
    activation_forward_kernel<float><<<blocks, kThreads, 0, stream>>>(
        act, static_cast<float*>(z), static_cast<float*>(a), bias, quads, width);
  } else {
    activation_forward_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(
        act, static_cast<__nv_bfloat16*>(z), static_cast<__nv_bfloat16*>(a), bias, quads, width);
  }
  CUFM_CUDA_CHECK_LAUNCH("activation_forward_kernel");
}

void activation_backward(Activation act, DType type, void* g, const void* z, int64_t rows, int width,
                         cudaStream_t stream) {
  check_shape("activation_backward", rows, width);
  CUFM_REQUIRE(g && z, "activation_backward: g and z must be device arrays");
  check_aligned("activation_backward", type, {g, z}, nullptr);
  const int64_t quads = rows * width / 4;
  const int blocks = grid_for(quads, kThreads, kMaxBlocks);
  if (type == DType::F32) {
    activation_backward_kernel<float>
        <<<blocks, kThreads, 0, stream>>>(act, static_cast<float*>(g), static_cast<const float*>(z), quads);
  } else {
    activation_backward_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(
        act, static_cast<__nv_bfloat16*>(g), static_cast<const __nv_bfloat16*>(z), quads);
  }
  CUFM_CUDA_CHECK_LAUNCH("activation_backward_kernel");
}

void bias_add(DType type, void* z, const float* bias, int64_t rows, int width, cudaStream_t stream) {
  check_shape("bias_add", rows, width);
  CUFM_REQUIRE(z && bias, "bias_add: z and bias must be device arrays");
  check_aligned("bias_add", type, {z}, bias);
  const int64_t quads = rows * width / 4;
  const int blocks = grid_for(quads, kThreads, kMaxBlocks);
  if (type == DType::F32) {
    bias_add_kernel<float><<<blocks, kThreads, 0, stream>>>(static_cast<float*>(z), bias, quads, width);
  } else {
    bias_add_kernel<__nv_bfloat16>
        <<<blocks, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(z), bias, quads, width);
  }
  CUFM_CUDA_CHECK_LAUNCH("bias_add_kernel");
}

void column_sum(DType type, const void* g, int64_t rows, int width, float* db, float* workspace,
                cudaStream_t stream) {
  CUFM_REQUIRE(rows >= 1 && width >= 1 && g && db,
               "column_sum: bad arguments (rows " << rows << ", width " << width << ")");
  const ColumnSumShape shape = column_sum_shape(rows);
  CUFM_REQUIRE(shape.splits == 1 || workspace,
               "column_sum: " << rows << " rows need a workspace of column_sum_workspace_floats() = "
                              << column_sum_workspace_floats(rows, width) << " floats");
  float* out = shape.splits == 1 ? db : workspace;
  const dim3 block(kColumnSumTile, kColumnSumLanes);
  const dim3 grid((width + kColumnSumTile - 1) / kColumnSumTile, static_cast<unsigned>(shape.splits));
  if (type == DType::F32) {
    column_sum_split_kernel<float>
        <<<grid, block, 0, stream>>>(static_cast<const float*>(g), rows, width, shape.rows_per_split, out);
  } else {
    column_sum_split_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(g), rows, width, shape.rows_per_split, out);
  }
  CUFM_CUDA_CHECK_LAUNCH("column_sum_split_kernel");
  if (shape.splits > 1) {
    column_sum_finish_kernel<<<grid_for(width, kThreads, kMaxBlocks), kThreads, 0, stream>>>(
        workspace, shape.splits, width, db);
    CUFM_CUDA_CHECK_LAUNCH("column_sum_finish_kernel");
  }
}

}  // namespace cufm::cuda
