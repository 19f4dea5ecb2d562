// cufm_bench_gemm: the CPU GEMM providers side by side on the training step's shapes (R1's wide
// layers, R2's narrow ones, the first and last layers' weight gradients, small products), each
// shape's median GFLOP/s over --repeats calls after warm-up, OpenBLAS and (when built) oneDNN, and
// whether each gives the same bits on 1 thread as on --threads. The table behind host/cpu/cpu_gemm.cpp's
// choice. Beside them, cuFM's bf16 GEMM (gemm_bf16: oneDNN's matmul on bf16 inputs, fp32
// accumulation) where the CPU backend runs bf16, and one core's peak rate of the two instructions
// behind fp32 and bf16 products on AVX-512 CPUs: vfmadd231ps (16 multiply-adds) and vdpbf16ps (32).
//   cufm_bench_gemm [--threads N] [--repeats N] [--out FILE.md] [--smoke]
#include <cblas.h>
#include <omp.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#if defined(__has_include)
#if __has_include(<dnnl.h>)
#include <dnnl.h>
#define CUFM_BENCH_ONEDNN 1
#endif
#endif

#include "bench/bench_common.hpp"
#include "cufm/device.hpp"
#include "host/cpu/cpu_ops.hpp"

namespace {

struct Shape {
  const char* what;
  bool ta, tb;
  int m, n, k;
};

// Row-major C = op(A) op(B) through one provider.
void gemm(bool onednn, const Shape& s, const float* a, const float* b, float* c) {
  const int lda = s.ta ? s.m : s.k, ldb = s.tb ? s.k : s.n;
#if defined(CUFM_BENCH_ONEDNN)
  if (onednn) {
    dnnl_sgemm(s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', s.m, s.n, s.k, 1.0f, a, lda, b, ldb, 0.0f, c, s.n);
    return;
  }
#else
  (void)onednn;
#endif
  cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans, s.m, s.n,
              s.k, 1.0f, a, lda, b, ldb, 0.0f, c, s.n);
}

#if defined(__x86_64__)
// One core's rate of an instruction in GFLOP/s: 24 independent accumulator chains (enough to cover
// the latency of either instruction on two ports), n rounds.
#define CUFM_CHAINS(X)                                                                                     \
  X(0)                                                                                                     \
  X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) \
      X(20) X(21) X(22) X(23)
#define CUFM_DECL(i)                        \
  __m512 acc##i = _mm512_set1_ps(1.0f * i); \
  asm volatile("" : "+v"(acc##i));
#define CUFM_SUM(i) s = _mm512_add_ps(s, acc##i);

__attribute__((target("avx512f,fma"))) double fma_rate(long n) {
  CUFM_CHAINS(CUFM_DECL)
  __m512 a = _mm512_set1_ps(1e-3f), b = _mm512_set1_ps(1e-3f);
  asm volatile("" : "+v"(a), "+v"(b));
  const double t0 = cufm::bench::now_s();
  for (long k = 0; k < n; ++k) {
#define CUFM_FMA(i) acc##i = _mm512_fmadd_ps(a, b, acc##i);
    CUFM_CHAINS(CUFM_FMA)
  }
  const double t = cufm::bench::now_s() - t0;
  __m512 s = _mm512_setzero_ps();
  CUFM_CHAINS(CUFM_SUM)
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, s);
  volatile float keep = lanes[0];
  (void)keep;
  return 24.0 * 32.0 * n / t * 1e-9;
}

__attribute__((target("avx512f,avx512bf16"))) double dpbf16_rate(long n) {
  CUFM_CHAINS(CUFM_DECL)
  __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3c00);
  asm volatile("" : "+v"(a), "+v"(b));
  const double t0 = cufm::bench::now_s();
  for (long k = 0; k < n; ++k) {
#define CUFM_DP(i) acc##i = _mm512_dpbf16_ps(acc##i, a, b);
    CUFM_CHAINS(CUFM_DP)
  }
  const double t = cufm::bench::now_s() - t0;
  __m512 s = _mm512_setzero_ps();
  CUFM_CHAINS(CUFM_SUM)
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, s);
  volatile float keep = lanes[0];
  (void)keep;
  return 24.0 * 64.0 * n / t * 1e-9;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  cufm::bound_cpu_thread_spinning(argc, argv);
  int threads = 0, repeats = 10;
  std::string out;
  bool smoke = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc)
      threads = std::stoi(argv[++i]);
    else if (a == "--repeats" && i + 1 < argc)
      repeats = std::stoi(argv[++i]);
    else if (a == "--out" && i + 1 < argc)
      out = argv[++i];
    else if (a == "--smoke")
      smoke = true;
    else if (a == "--json" && i + 1 < argc)
      ++i;  // the smoke test's flag: no JSON here
    else {
      std::fprintf(stderr, "usage: cufm_bench_gemm [--threads N] [--repeats N] [--out FILE.md] [--smoke]\n");
      return 2;
    }
  }
  if (smoke) repeats = 1;
  cufm::cpu::set_threads(threads);
  const int nthreads = omp_get_max_threads();
  const std::vector<Shape> shapes = {{"R1 forward (x W^T)", false, true, 4096, 512, 512},
                                     {"R1 input gradient (dz W)", false, false, 4096, 512, 512},
                                     {"R1 weight gradient (dz^T x)", true, false, 512, 512, 4096},
                                     {"R5 forward", false, true, 4096, 256, 256},
                                     {"R5 weight gradient", true, false, 256, 256, 4096},
                                     {"R2 forward (width 64, 2^14)", false, true, 16384, 64, 64},
                                     {"R2 weight gradient", true, false, 64, 64, 16384},
                                     {"first layer's weight gradient", true, false, 64, 3, 16384},
                                     {"last layer's weight gradient", true, false, 2, 64, 16384},
                                     {"small: 32 x 32 x 256", true, false, 32, 32, 256},
                                     {"small: output 256 x 2 x 32", false, true, 256, 2, 32}};
  std::vector<std::string> lines = {
      "# CPU GEMM providers: " + std::to_string(nthreads) + " threads",
      "",
      "- " + cufm::build_summary(),
      "- GFLOP/s: the median of " + std::to_string(repeats) +
          " calls after 2 warm-up calls; \"same bits\": "
          "the result on 1 thread equals the result on " +
          std::to_string(nthreads) + ".",
      "",
      "| Shape | M x N x K | OpenBLAS GFLOP/s | oneDNN GFLOP/s | oneDNN / "
      "OpenBLAS | same bits (OpenBLAS, oneDNN) | cuFM bf16 GFLOP/s | bf16 same bits |",
      "| --- | --- | ---: | ---: | ---: | --- | ---: | --- |"};
  const std::string no_bf16 = cufm::cpu_bf16_unavailable_reason();
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (const Shape& s : shapes) {
    std::vector<float> a(static_cast<size_t>(s.m) * s.k), b(static_cast<size_t>(s.k) * s.n);
    for (float& v : a) v = nd(rng);
    for (float& v : b) v = nd(rng);
    double gf[2] = {0, 0};
    bool same[2] = {false, false};
    for (int p = 0; p < 2; ++p) {
#if !defined(CUFM_BENCH_ONEDNN)
      if (p == 1) break;
#endif
      std::vector<float> c(static_cast<size_t>(s.m) * s.n), c1(c.size());
      omp_set_num_threads(1);
      gemm(p == 1, s, a.data(), b.data(), c1.data());
      omp_set_num_threads(nthreads);
      for (int w = 0; w < 2; ++w) gemm(p == 1, s, a.data(), b.data(), c.data());
      std::vector<double> t;
      for (int r = 0; r < repeats; ++r) {
        const double t0 = cufm::bench::now_s();
        gemm(p == 1, s, a.data(), b.data(), c.data());
        t.push_back(cufm::bench::now_s() - t0);
      }
      gf[p] = 2.0 * s.m * s.n * static_cast<double>(s.k) / cufm::bench::summarize(t).median * 1e-9;
      same[p] = std::memcmp(c.data(), c1.data(), c.size() * sizeof(float)) == 0;
    }
    std::string bf16_cell = "-", bf16_same = "-";
    if (no_bf16.empty()) {
      std::vector<uint16_t> a16(a.size()), b16(b.size());
      cufm::cpu::round_to_bf16(a.data(), static_cast<int64_t>(a.size()), a16.data());
      cufm::cpu::round_to_bf16(b.data(), static_cast<int64_t>(b.size()), b16.data());
      const int lda = s.ta ? s.m : s.k, ldb = s.tb ? s.k : s.n;
      std::vector<float> c(static_cast<size_t>(s.m) * s.n), c1(c.size());
      auto run = [&](float* dst) {
        cufm::cpu::gemm_bf16(s.ta, s.tb, s.m, s.n, s.k, a16.data(), lda, b16.data(), ldb, false, dst, s.n);
      };
      cufm::cpu::set_threads(1);
      run(c1.data());
      cufm::cpu::set_threads(threads);
      for (int w = 0; w < 2; ++w) run(c.data());
      std::vector<double> t;
      for (int r = 0; r < repeats; ++r) {
        const double t0 = cufm::bench::now_s();
        run(c.data());
        t.push_back(cufm::bench::now_s() - t0);
      }
      bf16_cell = std::to_string(static_cast<int>(
          2.0 * s.m * s.n * static_cast<double>(s.k) / cufm::bench::summarize(t).median * 1e-9 + 0.5));
      bf16_same = std::memcmp(c.data(), c1.data(), c.size() * sizeof(float)) == 0 ? "yes" : "no";
    }
    char row[640];
    std::snprintf(
        row, sizeof row, "| %s | %d x %d x %d | %.0f | %s | %s | %s, %s | %s | %s |", s.what, s.m, s.n, s.k,
        gf[0], gf[1] > 0 ? std::to_string(static_cast<int>(gf[1] + 0.5)).c_str() : "not built",
        gf[1] > 0 ? (std::to_string(gf[1] / gf[0]).substr(0, 4) + "x").c_str() : "", same[0] ? "yes" : "no",
        gf[1] > 0 ? (same[1] ? "yes" : "no") : "-", bf16_cell.c_str(), bf16_same.c_str());
    lines.push_back(row);
  }
  if (!no_bf16.empty()) lines.push_back("\n- cuFM bf16: not run here (" + no_bf16 + ").");
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    const long n = smoke ? 1000000 : 100000000;
    const double fma = fma_rate(n);
    const std::string dp = __builtin_cpu_supports("avx512bf16")
                               ? std::to_string(static_cast<int>(dpbf16_rate(n) + 0.5))
                               : std::string("no AVX512_BF16");
    lines.push_back("");
    lines.push_back(
        "One core's peak (24 independent chains of one instruction, GFLOP/s): vfmadd231ps zmm (fp32) " +
        std::to_string(static_cast<int>(fma + 0.5)) + ", vdpbf16ps zmm (bf16 pairs into fp32) " + dp + ".");
  }
#endif
  std::string text;
  for (const std::string& l : lines) text += l + "\n";
  std::fputs(text.c_str(), stdout);
  if (!out.empty()) {
    FILE* f = std::fopen(out.c_str(), "w");
    if (!f) return 1;
    std::fputs(text.c_str(), f);
    std::fclose(f);
  }
  return 0;
}
