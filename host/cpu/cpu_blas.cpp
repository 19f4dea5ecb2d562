// OpenBLAS's kernels for this CPU. A DYNAMIC_ARCH OpenBLAS picks its kernels from the CPU's family
// and model number, and a release older than the CPU can fall back to its oldest x86-64 kernels:
// Debian 12's OpenBLAS 0.3.21 runs its Prescott (SSE3) kernels on an Emerald Rapids Xeon, and R1
// then takes 372 ms a step instead of 135 ms with its Cooper Lake kernels. So before the first
// BLAS call, cuFM compares the kernels OpenBLAS chose with the instruction sets the CPU reports;
// when they are older, it asks OpenBLAS to choose again with OPENBLAS_CORETYPE naming the newest
// kernels the CPU can run (its documented override, read by gotoblas_dynamic_init). A user's own
// OPENBLAS_CORETYPE is left alone, as is every OpenBLAS that is not DYNAMIC_ARCH.
#include <dlfcn.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "host/cpu/cpu_ops.hpp"

namespace cufm::cpu {

namespace {

// Rank of a kernel family by the instructions it uses: 0 SSE, 1 AVX, 2 AVX2/FMA, 3 AVX-512,
// 4 AVX-512 with BF16. Unknown names rank as new (left alone).
int kernel_rank(const std::string& core) {
  std::string c;
  for (char ch : core) c += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  for (const char* old :
       {"prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "katmai", "coppermine", "northwood",
        "banias", "athlon", "opteron", "barcelona", "bobcat", "nano"}) {
    if (c == old) return 0;
  }
  for (const char* avx : {"sandybridge", "bulldozer", "piledriver", "steamroller", "excavator"}) {
    if (c == avx) return 1;
  }
  if (c == "haswell" || c == "zen") return 2;
  if (c == "skylakex") return 3;
  if (c == "cooperlake" || c == "sapphirerapids") return 4;
  return 5;
}

// The newest OpenBLAS kernels this CPU runs, and their rank (nullptr, -1: nothing to ask for).
std::pair<const char*, int> best_kernels() {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512cd");
  if (avx512 && __builtin_cpu_supports("avx512bf16")) return {"COOPERLAKE", 4};
  if (avx512) return {"SKYLAKEX", 3};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {"HASWELL", 2};
  return {nullptr, -1};
}

std::string g_note = "not checked yet";

void check_kernels() {
  using CoreName = char* (*)();
  using Hook = void (*)();
  auto corename = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  auto quit = reinterpret_cast<Hook>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit"));
  auto init = reinterpret_cast<Hook>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init"));
  if (!corename) {
    g_note = "kernels unknown (not OpenBLAS)";
    return;
  }
  const std::string chosen = corename();
  const char* user = std::getenv("OPENBLAS_CORETYPE");
  if (user && *user) {
    g_note = chosen + " kernels (OPENBLAS_CORETYPE=" + user + ")";
    return;
  }
  const auto [best, best_rank] = best_kernels();
  if (!best || kernel_rank(chosen) >= best_rank || !quit || !init) {
    g_note = chosen + " kernels";
    return;
  }
  setenv("OPENBLAS_CORETYPE", best, 1);  // unset or empty: ours to set
  quit();
  init();
  const std::string now = corename();
  g_note = now + " kernels (OpenBLAS chose " + chosen + " for this CPU; cuFM asked for " + best + ")";
}

std::once_flag g_once;

}  // namespace

void ensure_blas_kernels() {
  std::call_once(g_once, check_kernels);
}

std::string blas_kernels() {
  ensure_blas_kernels();
  return g_note;
}

std::string cpu_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  std::string isa = "x86-64";
  if (__builtin_cpu_supports("avx2")) isa += " avx2";
  if (__builtin_cpu_supports("fma")) isa += " fma";
  if (__builtin_cpu_supports("avx512f")) isa += " avx512f";
  if (__builtin_cpu_supports("avx512bf16")) isa += " avx512bf16";
  unsigned a = 0, b = 0, c = 0, d = 0;
  // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 22 AMX-BF16 (what the CPU reports; the OS must also
  // grant a process the tile state, which oneDNN asks for).
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    if (d & (1u << 24)) isa += " amx-tile";
    if (d & (1u << 22)) isa += " amx-bf16";
  }
  return isa;
#else
  return "not x86-64";
#endif
}

}  // namespace cufm::cpu
