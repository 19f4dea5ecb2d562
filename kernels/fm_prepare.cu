// fm_prepare: per row of a training batch, draws t, the data index, the label dropout (block 0 of
// the row's Philox counter) and eps (blocks 1..), and writes the first layer's input row
// [x_t | time features | context and its null indicator | one-hot | zero padding], the context read
// straight from the device dataset at the row's data index (context dropout: block 0xFFFFFFFF of the
// counter). Launch: one thread per (row, 4 columns), 256 per
// block, grid-stride. Cost: B*(D/4 + 1) Philox calls (~100 integer ops each) plus B*D floats
// read and B*ld values written: for B = 4096, D = 2, ld = 8 that is ~0.2 MB, a few microseconds.
#include <cuda_bf16.h>

#include <algorithm>

#include "cufm/detail/math.hpp"
#include "cufm/kernels.hpp"
#include "kernels/common.cuh"
#include "kernels/cuda_check.hpp"
#include "kernels/fm_draws.cuh"

namespace cufm::kernels {

namespace {

using cuda::store;
constexpr int kThreads = 256;

struct PrepareArgs {
  FmBatch b;
  int time_features, context_dim, num_classes, ld;
  int noise_groups;  // ceil(D / 4): threads that draw eps
  int tail_chunks;   // ceil((ld - D) / 4): threads that write the rest of the row
  float* t_out;
  uint32_t* index_out;
  int32_t* label_out;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) fm_prepare_kernel(PrepareArgs a, T* __restrict__ input) {
  const uint64_t step = fm_step(a.b);
  const int per_row = a.noise_groups + a.tail_chunks;
  const int64_t total = static_cast<int64_t>(a.b.batch) * per_row;
  const int D = a.b.dim;
  for (const int64_t w : cuda::grid_stride(total)) {
    const uint32_t row = static_cast<uint32_t>(w / per_row);
    const int slot = static_cast<int>(w - static_cast<int64_t>(row) * per_row);
    const hd::SampleDraw d = fm_row_draw(a.b, step, row);
    T* out = input + static_cast<size_t>(row) * a.ld;
    int32_t label = -1;
    if (a.num_classes > 0) {
      label = (d.drop_label || a.b.labels == nullptr) ? a.num_classes : a.b.labels[d.data_index];
    }
    if (slot < a.noise_groups) {
      float eps[4];
      fm_row_eps(a.b, step, row, slot, eps);
      const float* x1 = a.b.data + static_cast<size_t>(d.data_index) * D;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int col = 4 * slot + k;
        if (col < D) store(out + col, hd::path_xt(d.t, x1[col], eps[k], a.b.sigma_min));
      }
      if (slot == 0) {
        if (a.t_out) a.t_out[row] = d.t;
        if (a.index_out) a.index_out[row] = d.data_index;
        if (a.label_out) a.label_out[row] = label;
      }
    } else {
      const float* context = nullptr;
      if (a.context_dim > 0) {
        const bool drop = a.b.given_t ? (a.b.given_context_null && a.b.given_context_null[row])
                                      : hd::draw_context_drop(a.b.seed, step, row, a.b.context_dropout);
        if (!drop) context = a.b.context + static_cast<size_t>(d.data_index) * a.context_dim;
      }
      const int first = D + 4 * (slot - a.noise_groups);
      for (int col = first; col < first + 4 && col < a.ld; ++col) {
        store(out + col, hd::input_tail_value(d.t, a.time_features, a.context_dim, context, a.num_classes,
                                              label, col - D));
      }
    }
  }
}

}  // namespace

void check_draws(const FmBatch& batch, const char* who) {
  CUFM_REQUIRE((batch.given_t == nullptr) == (batch.given_eps == nullptr),
               who << ": set both given_t and given_eps (the caller's draws) or neither");
  CUFM_REQUIRE(batch.given_t || batch.step, who << ": step must point to the step index in device memory");
  CUFM_REQUIRE(
      !(batch.given_t && batch.rows_in_order),
      who << ": rows_in_order takes Philox's draws; the caller's draws (given_t) are in order already");
  CUFM_REQUIRE(
      !(batch.given_t && batch.noise_row),
      who << ": noise_row pairs Philox's noise; with the caller's draws (given_t) pair the given eps");
  CUFM_REQUIRE(!batch.rows_in_order || batch.n_data == static_cast<uint32_t>(batch.batch),
               who << ": with rows_in_order, row i is data row i: n_data (" << batch.n_data
                   << ") must equal batch (" << batch.batch << ")");
  CUFM_REQUIRE(!batch.given_t || batch.n_data == static_cast<uint32_t>(batch.batch),
               who << ": with the caller's draws, row i is data row i: n_data (" << batch.n_data
                   << ") must equal batch (" << batch.batch << ")");
}

int fm_input_dim(int dim, const FmInputLayout& layout) {
  return hd::input_width(dim, layout.time_features, layout.context_dim, layout.num_classes);
}

void fm_prepare(const FmBatch& batch, const FmInputLayout& layout, const FmPrepareOutputs& out,
                cudaStream_t stream) {
  CUFM_REQUIRE(batch.batch >= 1, "fm_prepare: batch must be >= 1, got " << batch.batch);
  CUFM_REQUIRE(batch.dim >= 1 && batch.dim <= 65536,
               "fm_prepare: dim must be in [1, 65536], got " << batch.dim);
  CUFM_REQUIRE(
      batch.time_sampling == TimeSampling::Uniform || batch.time_sampling == TimeSampling::LogitNormal,
      "fm_prepare: unknown time_sampling " << static_cast<int>(batch.time_sampling));
  CUFM_REQUIRE(batch.n_data >= 1 && batch.data,
               "fm_prepare: data must be a device array of n_data >= 1 rows");
  check_draws(batch, "fm_prepare");
  CUFM_REQUIRE(layout.time_features >= 0 && layout.time_features % 2 == 0 && layout.time_features <= 64,
               "fm_prepare: time_features must be 0 or even up to 64, got " << layout.time_features);
  CUFM_REQUIRE(layout.num_classes >= 0 && layout.num_classes <= 100000,
               "fm_prepare: num_classes must be in [0, 100000], got " << layout.num_classes);
  const int in = fm_input_dim(batch.dim, layout);
  CUFM_REQUIRE(layout.ld >= in && layout.ld <= (1 << 24), "fm_prepare: layout.ld ("
                                                              << layout.ld << ") must be >= the input width "
                                                              << in << " and at most 2^24");
  CUFM_REQUIRE((out.input == nullptr) != (out.input_bf16 == nullptr),
               "fm_prepare: set exactly one of out.input (fp32) and out.input_bf16");
  CUFM_REQUIRE(!out.label || layout.num_classes > 0, "fm_prepare: out.label needs num_classes > 0");
  CUFM_REQUIRE(layout.num_classes == 0 || batch.labels, "fm_prepare: a conditional layout (num_classes "
                                                            << layout.num_classes
                                                            << ") needs batch.labels, the data's labels");
  CUFM_REQUIRE(batch.label_dropout >= 0.0f && batch.label_dropout <= 1.0f,
               "fm_prepare: label_dropout must be in [0, 1], got " << batch.label_dropout);
  CUFM_REQUIRE(layout.context_dim >= 0 && layout.context_dim <= 65536,
               "fm_prepare: context_dim must be in [0, 65536], got " << layout.context_dim);
  CUFM_REQUIRE(layout.context_dim == 0 || batch.context, "fm_prepare: a layout with a context (context_dim "
                                                             << layout.context_dim
                                                             << ") needs batch.context, the data's contexts");
  CUFM_REQUIRE(batch.context_dropout >= 0.0f && batch.context_dropout <= 1.0f,
               "fm_prepare: context_dropout must be in [0, 1], got " << batch.context_dropout);
  CUFM_REQUIRE(!batch.given_context_null || batch.given_t,
               "fm_prepare: given_context_null goes with the caller's draws (given_t)");
  PrepareArgs a{batch,
                layout.time_features,
                layout.context_dim,
                layout.num_classes,
                layout.ld,
                (batch.dim + 3) / 4,
                (layout.ld - batch.dim + 3) / 4,
                out.t,
                out.index,
                out.label};
  const int64_t total = static_cast<int64_t>(batch.batch) * (a.noise_groups + a.tail_chunks);
  const int blocks = cuda::grid_for(total, kThreads, 65535);
  if (out.input) {
    fm_prepare_kernel<float><<<blocks, kThreads, 0, stream>>>(a, out.input);
  } else {
    fm_prepare_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(a, out.input_bf16);
  }
  CUFM_CUDA_CHECK_LAUNCH("fm_prepare_kernel");
}

}  // namespace cufm::kernels
