#include "cufm/device.hpp"

#include <algorithm>
#include <cctype>
#include <sstream>

#include "cufm/error.hpp"
#include "cufm_build_info.hpp"
#include "host/backend.hpp"

namespace cufm {

bool cuda_built() {
#if defined(CUFM_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

std::vector<DeviceInfo> cuda_devices() {
#if defined(CUFM_WITH_CUDA)
  return detail::cuda_device_list();
#else
  return {};
#endif
}

Device resolve_device(Device requested) {
  if (requested == Device::CPU) return Device::CPU;
  const bool have_gpu = cuda_built() && !cuda_devices().empty();
  if (requested == Device::CUDA) {
    CUFM_REQUIRE(cuda_built(),
                 "device 'cuda' requested, but this build of cuFM has no CUDA backend: rebuild with "
                 "-DCUFM_ENABLE_CUDA=ON, or use device 'cpu'");
    CUFM_REQUIRE(have_gpu,
                 "device 'cuda' requested, but the CUDA runtime finds no GPU (check the driver and "
                 "CUDA_VISIBLE_DEVICES), or use device 'cpu'");
    return Device::CUDA;
  }
  return have_gpu ? Device::CUDA : Device::CPU;
}

const char* to_string(Device d) {
  switch (d) {
    case Device::CPU: return "cpu";
    case Device::CUDA: return "cuda";
    default: return "auto";
  }
}

const char* to_string(Precision p) {
  switch (p) {
    case Precision::TF32: return "tf32";
    case Precision::BF16: return "bf16";
    default: return "fp32";
  }
}

namespace {
std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}
}  // namespace

Device parse_device(const std::string& s) {
  const std::string v = lower(s);
  if (v == "auto") return Device::Auto;
  if (v == "cpu") return Device::CPU;
  if (v == "cuda" || v == "gpu") return Device::CUDA;
  CUFM_FAIL("unknown device '" << s << "': expected auto, cpu or cuda");
}

Precision parse_precision(const std::string& s) {
  const std::string v = lower(s);
  if (v == "fp32") return Precision::FP32;
  if (v == "tf32") return Precision::TF32;
  if (v == "bf16") return Precision::BF16;
  CUFM_FAIL("unknown precision '" << s << "': expected fp32, tf32 or bf16");
}

std::string version() { return CUFM_VERSION_STRING; }

std::string build_summary() {
  std::ostringstream os;
  os << "cuFM " << CUFM_VERSION_STRING << " (" << CUFM_BUILD_TYPE << ", " << CUFM_CXX_COMPILER << ")\n";
#if defined(CUFM_WITH_CUDA)
  os << "CUDA backend: built (nvcc " << CUFM_CUDA_COMPILER << ", architectures " << CUFM_CUDA_ARCHITECTURES
     << ")\n";
#else
  os << "CUDA backend: not built\n";
#endif
  os << "CPU backend: float32, OpenBLAS sgemm, OpenMP";
  return os.str();
}

}  // namespace cufm
