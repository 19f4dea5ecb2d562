// cufm_bench_kernels (CUDA builds only): the fused flow-matching kernels' achieved bandwidth
// against device-to-device cudaMemcpy, and the cuBLAS GEMM ceilings (fp32, tf32, bf16) at the
// workloads' layer shapes. Everything is timed with CUDA events on one stream after warm-up, the
// median of the repeats reported; before each timed kernel a 256 MiB memset evicts L2 (outside the
// events), so a working set that fits in L2 is not served from it.
// Exits 77 (ctest's skip code) when no GPU is visible.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <iostream>
#include <string>
#include <vector>

#include "bench/bench_common.hpp"
#include "bench/gpu_ceiling.hpp"
#include "cufm/error.hpp"
#include "cufm/kernels.hpp"
#include "host/cuda/device_buffer.hpp"
#include "kernels/cuda_check.hpp"

namespace cufm::bench {
namespace {

const char* kUsage =
    "cufm_bench_kernels: fm_prepare / fm_loss_grad bandwidth vs cudaMemcpy, and cuBLAS GEMM ceilings.\n"
    "  --repeats N          timed launches per row (default 50)\n"
    "  --smoke              small sizes, 3 repeats (timings meaningless)\n"
    "  --out FILE / --json FILE\n";

constexpr size_t kFlushBytes = size_t{256} << 20;  // > L2 of any current GPU (H100/H200: 50 MB)

struct KernelCase {
  std::string name;  // "R1", ...
  int batch, dim, time_features, num_classes;
  bool bf16;  // bf16 output (the BF16 backend's input / gradient)
};

int pad8(int x) {
  return (x + 7) / 8 * 8;
}

void run_kernels(Report& rep, double memcpy_gbs, int repeats) {
  const bool smoke = rep.opt.smoke;
  std::vector<KernelCase> cases = {
      {"R1", 4096, 2, 0, 0, false},          {"R1", 4096, 2, 0, 0, true},
      {"R2 b2^18", 1 << 18, 2, 0, 0, false}, {"R2 b2^18", 1 << 18, 2, 0, 0, true},
      {"R3", 8192, 64, 0, 0, false},         {"R4", 4096, 2, 0, 8, false},
      {"large", 1 << 22, 2, 0, 0, false},    {"large D=64", 1 << 20, 64, 0, 0, false},
  };
  const uint32_t n_data = smoke ? 4096u : (1u << 20);
  const int max_dim = 64;
  cuda::DeviceBuffer data(sizeof(float) * n_data * max_dim, "the bench data");
  cuda::DeviceBuffer labels(sizeof(int32_t) * n_data, "the bench labels");
  CUFM_CUDA_CHECK(cudaMemset(data.get(), 0x3C, data.bytes()));    // ~0.0115: finite, non-zero
  cuda::DeviceBuffer step(sizeof(uint64_t), "the step counter");  // zero-filled: step 0
  cuda::DeviceBuffer flush(kFlushBytes, "the L2 flush buffer");
  auto flush_l2 = [&](cudaStream_t s) { CUFM_CUDA_CHECK(cudaMemsetAsync(flush.get(), 0, flush.bytes(), s)); };

  Table t;
  t.title = "Fused kernels (median of CUDA-event-timed launches, L2 flushed before each)";
  t.header = {"Kernel", "Case",       "B", "D", "ld", "Output", "MB moved", "us median [min, max]",
              "GB/s",   "% of memcpy"};
  nlohmann::json rows = nlohmann::json::array();
  GpuTimer timer;
  for (KernelCase c : cases) {
    if (smoke) c.batch = std::min(c.batch, 4096);
    kernels::FmBatch b;
    b.seed = 0;
    b.step = static_cast<const uint64_t*>(step.get());
    b.batch = c.batch;
    b.dim = c.dim;
    b.data = data.as<float>();
    b.labels = c.num_classes > 0 ? labels.as<int32_t>() : nullptr;
    b.n_data = n_data;
    b.label_dropout = c.num_classes > 0 ? 0.1f : 0.0f;
    kernels::FmInputLayout layout;
    layout.time_features = c.time_features;
    layout.num_classes = c.num_classes;
    layout.ld = pad8(kernels::fm_input_dim(c.dim, layout));
    const size_t elem = c.bf16 ? 2 : 4;
    const size_t rows_b = static_cast<size_t>(c.batch);

    // fm_prepare: gathers B*D floats of data (and B labels), writes B*ld input values.
    {
      cuda::DeviceBuffer input(elem * rows_b * layout.ld, "fm_prepare's input");
      kernels::FmPrepareOutputs out;
      if (c.bf16) {
        out.input_bf16 = input.as<__nv_bfloat16>();
      } else {
        out.input = input.as<float>();
      }
      const double bytes = 4.0 * rows_b * c.dim + (c.num_classes > 0 ? 4.0 * rows_b : 0.0) +
                           static_cast<double>(elem) * rows_b * layout.ld;
      const Stats st =
          timer.time(3, repeats, flush_l2, [&](cudaStream_t s) { kernels::fm_prepare(b, layout, out, s); });
      const double gbs = bytes / st.median * 1e-9;
      t.rows.push_back(
          {"fm_prepare", c.name, std::to_string(c.batch), std::to_string(c.dim), std::to_string(layout.ld),
           c.bf16 ? "bf16" : "fp32", fmt(bytes * 1e-6, 3),
           fmt(st.median * 1e6, 4) + " [" + fmt(st.min * 1e6, 4) + ", " + fmt(st.max * 1e6, 4) + "]",
           fmt(gbs, 4), fmt(gbs / memcpy_gbs * 100.0, 3) + "%"});
      rows.push_back({{"kernel", "fm_prepare"},
                      {"case", c.name},
                      {"batch", c.batch},
                      {"dim", c.dim},
                      {"ld", layout.ld},
                      {"bf16", c.bf16},
                      {"bytes", bytes},
                      {"median_s", st.median},
                      {"min_s", st.min},
                      {"max_s", st.max},
                      {"gbs", gbs},
                      {"memcpy_fraction", gbs / memcpy_gbs}});
    }
    // fm_loss_grad: reads B*D of v and gathers B*D of x1, writes B*D gradient values.
    {
      const int ld = c.dim;
      cuda::DeviceBuffer v(sizeof(float) * rows_b * c.dim, "fm_loss_grad's v");
      CUFM_CUDA_CHECK(cudaMemset(v.get(), 0x3C, v.bytes()));
      cuda::DeviceBuffer grad(elem * rows_b * ld, "fm_loss_grad's gradient");
      cuda::DeviceBuffer loss(sizeof(float), "fm_loss_grad's loss");
      const size_t ws_bytes = kernels::fm_loss_grad_workspace_bytes(c.batch, c.dim);
      cuda::DeviceBuffer ws(ws_bytes, "fm_loss_grad's workspace");  // zero-filled, as the launcher needs
      kernels::FmLossOutputs out;
      if (c.bf16) {
        out.grad_bf16 = grad.as<__nv_bfloat16>();
      } else {
        out.grad = grad.as<float>();
      }
      out.ld = ld;
      out.loss = loss.as<float>();
      const double bytes = 8.0 * rows_b * c.dim + static_cast<double>(elem) * rows_b * ld;
      const Stats st = timer.time(3, repeats, flush_l2, [&](cudaStream_t s) {
        kernels::fm_loss_grad(b, v.as<float>(), c.dim, out, ws.get(), ws_bytes, s);
      });
      const double gbs = bytes / st.median * 1e-9;
      t.rows.push_back(
          {"fm_loss_grad", c.name, std::to_string(c.batch), std::to_string(c.dim), std::to_string(ld),
           c.bf16 ? "bf16" : "fp32", fmt(bytes * 1e-6, 3),
           fmt(st.median * 1e6, 4) + " [" + fmt(st.min * 1e6, 4) + ", " + fmt(st.max * 1e6, 4) + "]",
           fmt(gbs, 4), fmt(gbs / memcpy_gbs * 100.0, 3) + "%"});
      rows.push_back({{"kernel", "fm_loss_grad"},
                      {"case", c.name},
                      {"batch", c.batch},
                      {"dim", c.dim},
                      {"ld", ld},
                      {"bf16", c.bf16},
                      {"bytes", bytes},
                      {"median_s", st.median},
                      {"min_s", st.min},
                      {"max_s", st.max},
                      {"gbs", gbs},
                      {"memcpy_fraction", gbs / memcpy_gbs}});
    }
  }
  t.notes.push_back(
      "MB moved: the compulsory DRAM traffic (data gathered, v read, outputs written); the Philox draws "
      "are compute. Small batches (B = 4096) are launch-bound: their GB/s is not a bandwidth figure.");
  rep.json["kernels"] = rows;
  rep.tables.push_back(t);
}

void run_gemms(Report& rep, int repeats) {
  struct Shape {
    std::string where;
    int m, n, k;
  };
  std::vector<Shape> shapes = {{"R1/R4 hidden layer", 4096, 512, 512},
                               {"R2 w128 b2^18 hidden layer", 1 << 18, 128, 128},
                               {"R3 hidden layer", 8192, 1024, 1024},
                               {"peak (square)", 8192, 8192, 8192}};
  Table t;
  t.title = "cuBLAS GEMM ceilings (row-major C[M,N] = A[M,K] B[N,K]^T)";
  t.header = {"Shape", "M x N x K", "Precision", "ms median", "TFLOP/s"};
  nlohmann::json rows = nlohmann::json::array();
  for (Shape s : shapes) {
    if (rep.opt.smoke) {
      s.m = std::min(s.m, 1024);
      s.n = std::min(s.n, 1024);
      s.k = std::min(s.k, 1024);
    }
    for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16}) {
      const Ceiling c = gpu_gemm_ceiling(p, s.m, s.n, s.k, repeats);
      const std::string shape =
          std::to_string(s.m) + " x " + std::to_string(s.n) + " x " + std::to_string(s.k);
      t.rows.push_back({s.where, shape, to_string(p), c.ok ? fmt(c.time.median * 1e3, 4) : "-",
                        c.ok ? fmt(c.tflops, 4) : "failed: " + c.reason});
      rows.push_back({{"where", s.where},
                      {"m", s.m},
                      {"n", s.n},
                      {"k", s.k},
                      {"precision", to_string(p)},
                      {"ok", c.ok},
                      {"reason", c.reason},
                      {"median_s", c.time.median},
                      {"tflops", c.tflops}});
    }
  }
  rep.json["gemm"] = rows;
  rep.tables.push_back(t);
}

}  // namespace
}  // namespace cufm::bench

int main(int argc, char** argv) {
  using namespace cufm::bench;
  return bench_main(argc, argv, "cufm_bench_kernels", kUsage, [](Report& rep) {
    const Options& opt = rep.opt;
    if (cufm::cuda_devices().empty()) {
      std::cout << "cufm_bench_kernels: skipped, no GPU visible to the CUDA runtime\n";
      return 77;
    }
    const int repeats = opt.steps > 0 ? opt.steps : (opt.smoke ? 3 : 50);
    double memcpy_gbs = 0.0;
    const size_t copy_bytes = opt.smoke ? (size_t{64} << 20) : (size_t{1} << 30);
    const Stats copy = gpu_memcpy_d2d(copy_bytes, repeats, &memcpy_gbs);
    rep.preamble.push_back("cudaMemcpy device-to-device, " + std::to_string(copy_bytes >> 20) +
                           " MiB: " + fmt(copy.median * 1e3, 4) + " ms median, " + fmt(memcpy_gbs, 4) +
                           " GB/s (read + write), the bandwidth ceiling below");
    rep.json["memcpy_d2d"] = {{"bytes", copy_bytes}, {"median_s", copy.median}, {"gbs", memcpy_gbs}};
    run_kernels(rep, memcpy_gbs, repeats);
    run_gemms(rep, repeats);
    return 0;
  });
}
