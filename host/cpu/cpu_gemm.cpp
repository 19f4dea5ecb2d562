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
//
// Precision::BF16 runs oneDNN's matmul primitive on bf16 inputs with fp32 accumulation and fp32
// outputs: AMX tiles where the CPU has them, AVX512_BF16's vdpbf16ps otherwise. Nothing else does it
// fast (OpenBLAS 0.3.21 has no bf16 GEMM), so BF16 needs a build with oneDNN and one of those CPUs.
#include <cblas.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#if defined(CUFM_WITH_ONEDNN)
#include <dnnl.h>

#include <dnnl.hpp>
#endif
#include <omp.h>

#include "cufm/error.hpp"
#include "host/cpu/cpu_ops.hpp"

namespace cufm::cpu {

namespace {

enum class Provider { OpenBlas, OneDnnLarge, OneDnnAll };
// sgemm's tiles: blocks of C's rows, each the full width (cutting the columns of a transposed B
// slowed OpenBLAS's x W^T by 1.7x on the AMD EPYC), of 256 rows, or 64 below 512 rows (so that a
// weight gradient of 128 rows still makes two tiles).
constexpr int64_t kGemmTileRows = 256, kGemmSmallTileRows = 64, kGemmSmallBelow = 512;
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

namespace {
// One library call on the calling thread's share of the work.
void sgemm_call(bool onednn, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
                int& status) {
#if defined(CUFM_WITH_ONEDNN)
  if (onednn) {
    const dnnl_status_t st =
        dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (st != dnnl_success) status = static_cast<int>(st);
    return;
  }
#else
  (void)onednn;
  (void)status;
#endif
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda),
              B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}
}  // namespace

// Left to themselves, both libraries computed other bits on 1 thread than on 2 (OpenBLAS and oneDNN,
// on an AMD EPYC with AVX2: a product's partition across threads changes which kernel, and so which
// order of operations, an element gets), so C is cut into blocks of rows whose bounds depend on the
// shape alone, and each block is one library call on one thread of the OpenMP team (inside the
// team's region the libraries run sequentially). Every element of C is then computed as that
// block's single-thread call computes it, whatever the thread count. Measured on the AMD EPYC, 2
// threads, against the libraries' own threading: R1's three products within the machine's noise,
// R2's 128-wide weight gradient the same, its forward 10-20% faster.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  CUFM_REQUIRE(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX,
               "a GEMM of " << M << " x " << N << " x " << K << " is beyond the BLAS's 32-bit sizes");
  if (M <= 0 || N <= 0) return;
  const bool onednn = std::string(gemm_provider_for(M, N, K)) == "oneDNN";
  const int64_t rows = M < kGemmSmallBelow ? kGemmSmallTileRows : kGemmTileRows;
  const int64_t tiles = (M + rows - 1) / rows;
  int status = 0;
#pragma omp parallel for schedule(static)
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t i0 = tile * rows, m = std::min(rows, M - i0);
    const float* a = trans_a ? A + i0 : A + i0 * lda;  // rows i0.. of op(A)
    int st = 0;
    sgemm_call(onednn, trans_a, trans_b, m, N, K, alpha, a, lda, B, ldb, beta, C + i0 * ldc, ldc, st);
    if (st != 0) {
#pragma omp atomic write
      status = st;
    }
  }
  CUFM_REQUIRE(status == 0, "oneDNN's sgemm failed (status " << status << ") on a " << M << " x " << N << " x "
                                                               << K << " product; CUFM_GEMM=openblas avoids it");
}

const char* gemm_provider_for(int64_t M, int64_t N, int64_t K) {
  const Provider p = provider();
  if (p == Provider::OneDnnAll ||
      (p == Provider::OneDnnLarge && static_cast<double>(M) * N * K >= kOneDnnMin)) {
    return "oneDNN";
  }
  return "OpenBLAS";
}

std::string bf16_unavailable_reason() {
#if defined(CUFM_WITH_ONEDNN)
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16")) return "";
  return "this CPU has no AVX512_BF16 (nor AMX), so a bf16 GEMM would be emulated, slower than fp32";
#else
  return "bf16 on the CPU backend is built for x86-64 CPUs with AVX512_BF16 or AMX only";
#endif
#else
  return "this build of cuFM has no oneDNN (its configure step did not find libdnnl-dev), and the CPU "
         "backend's bf16 GEMM is oneDNN's";
#endif
}

void check_cpu_precision(Precision p, const char* who) {
  CUFM_REQUIRE(p != Precision::TF32, who << ": precision tf32 needs the CUDA backend; the CPU backend runs "
                                            "fp32, and bf16 on CPUs with AVX512_BF16 or AMX");
  if (p != Precision::BF16) return;
  const std::string why = bf16_unavailable_reason();
  CUFM_REQUIRE(why.empty(), who << ": precision bf16 on the CPU backend: " << why << "; use fp32");
}

#if defined(CUFM_WITH_ONEDNN)
namespace {

// One bf16 matmul shape, created once per process (a primitive's creation costs more than a small
// product) and run with a scratchpad of the calling thread's, so that threads may share it.
struct Bf16Matmul {
  dnnl::matmul prim;
  dnnl::memory::desc a, b, c, scratch;
  size_t scratch_bytes = 0;
};

using MatmulKey = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool>;

dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

const Bf16Matmul& bf16_matmul(const MatmulKey& key) {
  static std::mutex mu;
  static std::map<MatmulKey, std::unique_ptr<Bf16Matmul>> cache;
  const std::lock_guard<std::mutex> lock(mu);
  std::unique_ptr<Bf16Matmul>& slot = cache[key];
  if (slot) return *slot;
  const auto [ta, tb, M, N, K, lda, ldb, ldc, accumulate] = key;
  using dt = dnnl::memory::data_type;
  using dims = dnnl::memory::dims;
  auto m = std::make_unique<Bf16Matmul>();
  // Row-major op(A) [M, K] and op(B) [K, N] as strided views of the stored matrices.
  m->a = dnnl::memory::desc({M, K}, dt::bf16, ta ? dims{1, lda} : dims{lda, 1});
  m->b = dnnl::memory::desc({K, N}, dt::bf16, tb ? dims{1, ldb} : dims{ldb, 1});
  m->c = dnnl::memory::desc({M, N}, dt::f32, dims{ldc, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
#if DNNL_VERSION_MAJOR >= 3
  const dnnl::matmul::primitive_desc pd(cpu_engine(), m->a, m->b, m->c, attr);
#else
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(m->a, m->b, m->c), attr, cpu_engine());
#endif
  m->scratch = pd.scratchpad_desc();
  m->scratch_bytes = m->scratch.get_size();
  m->prim = dnnl::matmul(pd);
  slot = std::move(m);
  return *slot;
}

}  // namespace
#endif

#if defined(CUFM_WITH_ONEDNN)
namespace {

// Runs f with OpenMP's thread count for the calling task set to 1, restored after: oneDNN sizes a
// primitive's work split (and so its sums' order) by the thread count when it is created and runs
// it on as many when executed.
template <typename F>
void on_one_thread(F&& f) {
  struct Restore {
    int saved = omp_get_max_threads();
    ~Restore() { omp_set_num_threads(saved); }
  } restore;
  omp_set_num_threads(1);
  f();
}

void run_matmul(const MatmulKey& key, const uint16_t* A, const uint16_t* B, float* C) {
  const Bf16Matmul& mm = bf16_matmul(key);
  thread_local std::vector<uint8_t> scratch;
  if (scratch.size() < mm.scratch_bytes) scratch.resize(mm.scratch_bytes);
  dnnl::engine& eng = cpu_engine();
  dnnl::stream strm(eng);
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, dnnl::memory(mm.a, eng, const_cast<uint16_t*>(A))},
      {DNNL_ARG_WEIGHTS, dnnl::memory(mm.b, eng, const_cast<uint16_t*>(B))},
      {DNNL_ARG_DST, dnnl::memory(mm.c, eng, C)}};
  if (mm.scratch_bytes > 0) args.emplace(DNNL_ARG_SCRATCHPAD, dnnl::memory(mm.scratch, eng, scratch.data()));
  mm.prim.execute(strm, args);
  strm.wait();
}

}  // namespace
#endif

// The product runs as fixed tiles of C (kBf16Tile x kBf16Tile), each one single-threaded oneDNN
// matmul, spread over the OpenMP team: each element's sum then runs in an order that depends on
// the shape alone, never on the thread count (left to itself, oneDNN splits a long K, as in the
// weight gradients' products over the batch, across however many threads there are, and the bits
// of a run would depend on the machine). Edge tiles are smaller; each tile shape is created once.
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
               const uint16_t* B, int64_t ldb, bool accumulate, float* C, int64_t ldc) {
#if defined(CUFM_WITH_ONEDNN)
  constexpr int64_t kBf16Tile = 256;
  const int64_t tiles_m = (M + kBf16Tile - 1) / kBf16Tile, tiles_n = (N + kBf16Tile - 1) / kBf16Tile;
  const int64_t tiles = tiles_m * tiles_n;
  std::string error;
#pragma omp parallel for schedule(dynamic) if (tiles > 1)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t i0 = t / tiles_n * kBf16Tile, j0 = t % tiles_n * kBf16Tile;
    const int64_t m = std::min(kBf16Tile, M - i0), n = std::min(kBf16Tile, N - j0);
    const uint16_t* a = trans_a ? A + i0 : A + i0 * lda;
    const uint16_t* b = trans_b ? B + j0 * ldb : B + j0;
    try {
      on_one_thread([&] {
        run_matmul(MatmulKey{trans_a, trans_b, m, n, K, lda, ldb, ldc, accumulate}, a, b, C + i0 * ldc + j0);
      });
    } catch (const std::exception& e) {
#pragma omp critical(cufm_gemm_bf16_error)
      if (error.empty()) error = e.what();
    } catch (...) {
#pragma omp critical(cufm_gemm_bf16_error)
      if (error.empty()) error = "an unknown error";
    }
  }
  CUFM_REQUIRE(error.empty(),
               "oneDNN's bf16 matmul failed on a " << M << " x " << N << " x " << K << " product: " << error);
#else
  (void)trans_a, (void)trans_b, (void)A, (void)lda, (void)B, (void)ldb, (void)accumulate, (void)C, (void)ldc;
  CUFM_FAIL("a bf16 GEMM of " << M << " x " << N << " x " << K
                              << " on the CPU: " << bf16_unavailable_reason());
#endif
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
