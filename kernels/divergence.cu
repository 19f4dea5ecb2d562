// The divergence's elementwise kernels (kernels/divergence.hpp): one thread per element, a
// grid-stride loop; the activation and its derivative are the CPU's (cufm/detail/math.hpp).
#include "cufm/detail/math.hpp"
#include "cufm/detail/path.hpp"
#include "cufm/error.hpp"
#include "kernels/common.cuh"
#include "kernels/cuda_check.hpp"
#include "kernels/divergence.hpp"

namespace cufm::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 65535;

__global__ void input_kernel(const float* x, const int32_t* labels, const float* context, int64_t n,
                             int passes, int dim, int tf, int context_dim, int classes, float t, int in,
                             float* out) {
  const int64_t total = static_cast<int64_t>(passes) * n * in;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / in;
    const int c = static_cast<int>(i % in);
    const int pass = static_cast<int>(row / n);
    const int64_t r = row % n;
    if (c < dim) {
      out[i] = x[r * dim + c];
    } else {
      const int32_t label = classes > 0 ? (pass == 0 && labels ? labels[r] : classes) : -1;
      const float* ctx = pass == 0 && context ? context + r * context_dim : nullptr;
      out[i] = hd::input_tail_value(t, tf, context_dim, ctx, classes, label, c - dim);
    }
  }
}

__global__ void bias_act_kernel(Activation act, float* z, float* a, const float* bias, int64_t rows,
                                int width) {
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = z[i] + bias[i % width];
    z[i] = v;
    if (a) a[i] = hd::activate(act, v);
  }
}

__global__ void first_tangents_kernel(Activation act, const float* w0, int in, const float* z0, int64_t n,
                                      int dim, int width, float* t) {
  const int64_t total = n * dim * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int k = static_cast<int>(i % width);
    const int64_t tr = i / width;
    const int p = static_cast<int>(tr % dim);
    const int64_t r = tr / dim;
    t[i] = w0[static_cast<int64_t>(k) * in + p] * hd::activate_grad(act, z0[r * width + k]);
  }
}

__global__ void scale_tangents_kernel(Activation act, float* t, const float* z, int64_t n, int P, int width) {
  const int64_t total = n * P * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int k = static_cast<int>(i % width);
    const int64_t r = i / width / P;
    t[i] *= hd::activate_grad(act, z[r * width + k]);
  }
}

__global__ void trace_kernel(const float* u, const float* dirs, int64_t n, int P, int dim, float* div) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < n;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double sum = 0.0;
    for (int p = 0; p < P; ++p) {
      const float* row = u + (r * P + p) * dim;
      if (!dirs) {
        sum += row[p];
      } else {
        const float* e = dirs + (r * P + p) * dim;
        for (int d = 0; d < dim; ++d) sum += static_cast<double>(e[d]) * row[d];
      }
    }
    div[r] = static_cast<float>(sum) * (dirs ? 1.0f / static_cast<float>(P) : 1.0f);
  }
}

__global__ void guided_kernel(const float* cond, const float* null, float w, int64_t n, float* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = hd::guided(null[i], cond[i], w);
  }
}

void require_rows(int64_t rows, int width, const char* who) {
  CUFM_REQUIRE(rows >= 1 && width >= 1,
               who << ": needs rows >= 1 and width >= 1, got " << rows << " x " << width);
}

}  // namespace

void divergence_input(const float* x, const int32_t* labels, const float* context, int64_t n, int passes,
                      int dim, int time_features, int context_dim, int num_classes, float t, float* out,
                      cudaStream_t stream) {
  require_rows(n, dim, "divergence_input");
  CUFM_REQUIRE(passes == 1 || passes == 2, "divergence_input: passes must be 1 or 2, got " << passes);
  CUFM_REQUIRE(context_dim >= 0 && (context_dim > 0 || !context),
               "divergence_input: a context needs context_dim > 0, got " << context_dim);
  const int in = hd::input_width(dim, time_features, context_dim, num_classes);
  input_kernel<<<grid_for(passes * n * in, kThreads, kMaxBlocks), kThreads, 0, stream>>>(
      x, labels, context, n, passes, dim, time_features, context_dim, num_classes, t, in, out);
  CUFM_CUDA_CHECK_LAUNCH("divergence input_kernel");
}

void divergence_bias_act(Activation act, float* z, float* a, const float* bias, int64_t rows, int width,
                         cudaStream_t stream) {
  require_rows(rows, width, "divergence_bias_act");
  bias_act_kernel<<<grid_for(rows * width, kThreads, kMaxBlocks), kThreads, 0, stream>>>(act, z, a, bias,
                                                                                         rows, width);
  CUFM_CUDA_CHECK_LAUNCH("divergence bias_act_kernel");
}

void divergence_first_tangents(Activation act, const float* w0, int in, const float* z0, int64_t n, int dim,
                               int width, float* t, cudaStream_t stream) {
  require_rows(n, width, "divergence_first_tangents");
  CUFM_REQUIRE(dim >= 1 && dim <= in,
               "divergence_first_tangents: dim " << dim << " outside [1, " << in << "]");
  first_tangents_kernel<<<grid_for(n * dim * width, kThreads, kMaxBlocks), kThreads, 0, stream>>>(
      act, w0, in, z0, n, dim, width, t);
  CUFM_CUDA_CHECK_LAUNCH("divergence first_tangents_kernel");
}

void divergence_scale_tangents(Activation act, float* t, const float* z, int64_t n, int P, int width,
                               cudaStream_t stream) {
  require_rows(n * P, width, "divergence_scale_tangents");
  scale_tangents_kernel<<<grid_for(n * P * width, kThreads, kMaxBlocks), kThreads, 0, stream>>>(act, t, z, n,
                                                                                                P, width);
  CUFM_CUDA_CHECK_LAUNCH("divergence scale_tangents_kernel");
}

void divergence_trace(const float* u, const float* dirs, int64_t n, int P, int dim, float* div,
                      cudaStream_t stream) {
  require_rows(n * P, dim, "divergence_trace");
  CUFM_REQUIRE(dirs || P == dim, "divergence_trace: the exact trace takes P = dim tangents, got " << P);
  trace_kernel<<<grid_for(n, kThreads, kMaxBlocks), kThreads, 0, stream>>>(u, dirs, n, P, dim, div);
  CUFM_CUDA_CHECK_LAUNCH("divergence trace_kernel");
}

void divergence_guided(const float* cond, const float* null, float w, int64_t n, float* out,
                       cudaStream_t stream) {
  require_rows(n, 1, "divergence_guided");
  guided_kernel<<<grid_for(n, kThreads, kMaxBlocks), kThreads, 0, stream>>>(cond, null, w, n, out);
  CUFM_CUDA_CHECK_LAUNCH("divergence guided_kernel");
}

}  // namespace cufm::cuda
