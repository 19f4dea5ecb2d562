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

namespace detail {
// The lowest compute capability (x10) among CUFM_CUDA_ARCHITECTURES ("80;90", "90-real",
// "80-virtual", ...), whose PTX newer GPUs can run; 0 when it cannot be read ("native", "all").
int lowest_built_architecture(const std::string& archs) {
  int lowest = 0;
  size_t i = 0;
  while (i < archs.size()) {
    const size_t end = archs.find_first_of(";, ", i);
    const std::string item = archs.substr(i, end == std::string::npos ? std::string::npos : end - i);
    i = end == std::string::npos ? archs.size() : end + 1;
    if (item.empty()) continue;
    size_t digits = 0;
    while (digits < item.size() && std::isdigit(static_cast<unsigned char>(item[digits]))) ++digits;
    if (digits == 0) return 0;  // "native", "all", "all-major": the build chose for the machine
    const int cc = std::stoi(item.substr(0, digits));
    lowest = lowest == 0 ? cc : std::min(lowest, cc);
  }
  return lowest;
}
}  // namespace detail

std::vector<DeviceInfo> cuda_devices() {
#if defined(CUFM_WITH_CUDA)
  std::vector<DeviceInfo> list = detail::cuda_device_list();
  const int lowest = detail::lowest_built_architecture(CUFM_CUDA_ARCHITECTURES);
  for (DeviceInfo& d : list) d.usable = lowest == 0 || d.sm_major * 10 + d.sm_minor >= lowest;
  return list;
#else
  return {};
#endif
}

Device resolve_device(Device requested) {
  if (requested == Device::CPU) return Device::CPU;
  CUFM_REQUIRE(requested == Device::Auto || cuda_built(),
               "device 'cuda' requested, but this build of cuFM has no CUDA backend: rebuild with "
               "-DCUFM_ENABLE_CUDA=ON, or use device 'cpu'");
  if (!cuda_built()) return Device::CPU;
  const std::vector<DeviceInfo> gpus = cuda_devices();
  CUFM_REQUIRE(requested == Device::Auto || !gpus.empty(),
               "device 'cuda' requested, but the CUDA runtime finds no GPU (check the driver and "
               "CUDA_VISIBLE_DEVICES), or use device 'cpu'");
  if (gpus.empty()) return Device::CPU;
#if defined(CUFM_WITH_CUDA)
  const int current = detail::cuda_current_device();
#else
  const int current = 0;
#endif
  for (const DeviceInfo& d : gpus) {
    if (d.index != current) continue;
    if (d.usable) return Device::CUDA;
    CUFM_REQUIRE(requested == Device::Auto, "device 'cuda' requested, but GPU "
                                                << d.index << " (" << d.name << ", sm_" << d.sm_major
                                                << d.sm_minor << ") is older than every architecture "
                                                << "this build has code for (" << CUFM_CUDA_ARCHITECTURES
                                                << "): rebuild with -DCMAKE_CUDA_ARCHITECTURES=" << d.sm_major
                                                << d.sm_minor << ", or use device 'cpu'");
    return Device::CPU;
  }
  return Device::CUDA;
}

std::string version() {
  return CUFM_VERSION_STRING;
}

std::string cpu_bf16_unavailable_reason() {
  return detail::backend(Device::CPU).unavailable_reason(Precision::BF16);
}

int max_threads() {
  return detail::backend(Device::CPU).max_threads();
}

std::string build_summary() {
  std::ostringstream os;
  os << "cuFM " << CUFM_VERSION_STRING << " (" << CUFM_BUILD_TYPE << ", " << CUFM_CXX_COMPILER << ", commit "
     << CUFM_SOURCE_COMMIT << ")\n";
  os << detail::backend(Device::CUDA).describe() << "\n";
  os << detail::backend(Device::CPU).describe();
  return os.str();
}

}  // namespace cufm
