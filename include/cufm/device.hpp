// Where work runs: the CPU backend, or the CUDA backend when it is built and a GPU is present.
#pragma once

#include <string>
#include <vector>

namespace cufm {

enum class Device : int { Auto = 0, CPU = 1, CUDA = 2 };

// Math precision of the layers' GEMMs. Master weights, optimiser state and accumulation are always
// FP32. TF32 needs the CUDA backend; BF16 runs on the CUDA backend and on the CPU backend where
// cpu_bf16_unavailable_reason() is empty (bf16 GEMM inputs, fp32 accumulation, as on the GPU).
enum class Precision : int { FP32 = 0, TF32 = 1, BF16 = 2 };

// Where and how a call runs, apart from what it computes (the recipe).
struct RunOptions {
  Device device = Device::Auto;
  Precision precision = Precision::FP32;  // TF32: CUDA only; BF16: CUDA, or a CPU that has it
  int threads = 0;                        // CPU backend threads (0: all cores)
};

struct DeviceInfo {
  int index = 0;
  std::string name;
  int sm_major = 0, sm_minor = 0;
  size_t total_memory = 0;
  bool usable = true;  // this build has code for it (an architecture it was built for, or an older
                       // one whose PTX the driver compiles for it)
};

// True when this build contains the CUDA backend.
bool cuda_built();
// The GPUs the CUDA runtime sees (empty without the CUDA backend, a driver or a device).
std::vector<DeviceInfo> cuda_devices();
// Auto -> CUDA when built and the current GPU is usable, else CPU. CUDA without one throws
// cufm::Error naming why.
Device resolve_device(Device requested);

const char* to_string(Device d);
const char* to_string(Precision p);
Device parse_device(const std::string& s);
Precision parse_precision(const std::string& s);

// Empty when the CPU backend runs Precision::BF16 here, else why not. It needs a build with oneDNN
// (Debian's libdnnl-dev at configure time) and an x86-64 CPU with AVX512_BF16 (AMX's tiles are used
// where the CPU has them too). Where the CPU has AVX512_BF16 but no AMX, bf16 GEMMs need not be
// faster than fp32 ones (cufm_bench_gemm measures both; bench/results/*-gemm-providers.md).
std::string cpu_bf16_unavailable_reason();

// The most CPU threads a `threads` option takes (4x the cores): more are capped to it.
int max_threads();

// Version and build options, for `cufm info`.
std::string version();
std::string build_summary();

// The CPU backend's threads (its own loops' and OpenBLAS's, both GNU OpenMP) wait for work by
// spinning before they sleep: 300,000 spins by default, long enough that on a machine busy with
// other work the spinning waiters take the cores from the threads that have work (a small model's
// training measured 10x slower with one of two cores busy). GNU OpenMP reads its wait policy from
// the environment once, when it loads, so a program calls this first thing in main(): when neither
// OMP_WAIT_POLICY nor GOMP_SPINCOUNT is set it sets GOMP_SPINCOUNT=1000 and executes the program
// again (the same process, /proc/self/exe, the same arguments). It returns when there was nothing
// to do, or when the re-execution failed (the program then runs with the default policy). The cufm
// CLI, the benchmarks and the Python package (on import) do this themselves. Linux only; elsewhere
// it returns at once.
void bound_cpu_thread_spinning(int argc, char** argv);
// How the CPU backend's threads wait, as this process's environment set it: "GOMP_SPINCOUNT=1000",
// "OMP_WAIT_POLICY=passive", or "GNU OpenMP's default (spin 300,000 times, then sleep)".
std::string cpu_thread_wait_policy();

}  // namespace cufm
