// The CPU backend's GEMM: OpenBLAS, or oneDNN's sgemm where the build has it and it is the faster
// one. Measured on the project's Intel Xeon (AVX-512, 2 threads; cufm_bench_gemm, two runs, the
// later in bench/results/2026-11-30-intel-xeon-2cpu-gemm-providers.md): oneDNN 0.9-1.4x OpenBLAS on
// R1's 512-wide layers, 1.1-1.35x on R5's 256-wide ones, 2.0-2.2x on the narrow models' (width 64)
// and 1.3-2.7x on the first and last layers' weight gradients, while OpenBLAS wins on products below
// about 2^20 multiply-adds. So oneDNN runs products of at least 2^20 multiply-adds on CPUs with
// AVX-512; everything else, and every CPU without AVX-512 (where oneDNN has not been measured
// against OpenBLAS), runs OpenBLAS. CUFM_GEMM=openblas or onednn overrides the choice. The choice is
// a function of the machine, the shape and the environment, never of the thread count or the run,
// and both libraries give the same bits on 1 thread as on 2 on these shapes (the benchmark checks),
// so a run still repeats bit for bit.
#include <cblas.h>

#include <cstdlib>
#include <mutex>
#include <string>

#if defined(CUFM_WITH_ONEDNN)
#include <dnnl.h>
#endif

#include "cufm/error.hpp"
#include "host/cpu/cpu_ops.hpp"

namespace cufm::cpu {

namespace {

enum class Provider { OpenBlas, OneDnnLarge, OneDnnAll };
constexpr double kOneDnnMin = 1 << 20;  // multiply-adds: smaller products run OpenBLAS

// The provider for this process, from CUFM_GEMM (openblas, onednn, auto or unset) and the CPU;
// a value it cannot honour is an error, at the first GEMM or `cufm info`.
Provider provider() {
  static const Provider p = [] {
    const char* env = std::getenv("CUFM_GEMM");
    const std::string v = env ? env : "";
    CUFM_REQUIRE(v.empty() || v == "auto" || v == "openblas" || v == "onednn",
                 "CUFM_GEMM='" << v << "': expected openblas, onednn or auto");
    if (v == "openblas") return Provider::OpenBlas;
#if defined(CUFM_WITH_ONEDNN)
    if (v == "onednn") return Provider::OneDnnAll;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? Provider::OneDnnLarge : Provider::OpenBlas;
#else
    CUFM_REQUIRE(v != "onednn",
                 "CUFM_GEMM=onednn, but this build of cuFM has no oneDNN (its configure "
                 "step did not find libdnnl-dev)");
    return Provider::OpenBlas;
#endif
  }();
  return p;
}

}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  CUFM_REQUIRE(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX,
               "a GEMM of " << M << " x " << N << " x " << K << " is beyond the BLAS's 32-bit sizes");
#if defined(CUFM_WITH_ONEDNN)
  const Provider p = provider();
  if (p == Provider::OneDnnAll ||
      (p == Provider::OneDnnLarge && static_cast<double>(M) * N * K >= kOneDnnMin)) {
    const dnnl_status_t st =
        dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    CUFM_REQUIRE(st == dnnl_success, "oneDNN's sgemm failed (status "
                                         << static_cast<int>(st) << ") on a " << M << " x " << N << " x " << K
                                         << " product; CUFM_GEMM=openblas avoids it");
    return;
  }
#endif
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda),
              B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

const char* gemm_provider_for(int64_t M, int64_t N, int64_t K) {
  const Provider p = provider();
  if (p == Provider::OneDnnAll ||
      (p == Provider::OneDnnLarge && static_cast<double>(M) * N * K >= kOneDnnMin)) {
    return "oneDNN";
  }
  return "OpenBLAS";
}

std::string gemm_providers() {
  switch (provider()) {
    case Provider::OneDnnAll:
      return "oneDNN sgemm for every product (CUFM_GEMM=onednn)";
    case Provider::OneDnnLarge:
      return "oneDNN sgemm for products of 2^20 multiply-adds and more, OpenBLAS below";
    default:
#if defined(CUFM_WITH_ONEDNN)
      return std::getenv("CUFM_GEMM") && std::string(std::getenv("CUFM_GEMM")) == "openblas"
                 ? "OpenBLAS sgemm (CUFM_GEMM=openblas)"
                 : "OpenBLAS sgemm (oneDNN is built in, and used only on CPUs with AVX-512)";
#else
      return "OpenBLAS sgemm (this build has no oneDNN)";
#endif
  }
}

}  // namespace cufm::cpu
