// Where work runs: the CPU backend, or the CUDA backend when it is built and a GPU is present.
#pragma once

#include <string>
#include <vector>

namespace cufm {

enum class Device : int { Auto = 0, CPU = 1, CUDA = 2 };

// Math precision of the layers on the CUDA backend. Master weights, optimiser state and
// accumulation are always FP32; the CPU backend runs FP32 only.
enum class Precision : int { FP32 = 0, TF32 = 1, BF16 = 2 };

// Where and how a call runs, apart from what it computes (the recipe).
struct RunOptions {
  Device device = Device::Auto;
  Precision precision = Precision::FP32;  // TF32 and BF16 need the CUDA backend
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

// Version and build options, for `cufm info`.
std::string version();
std::string build_summary();

}  // namespace cufm
