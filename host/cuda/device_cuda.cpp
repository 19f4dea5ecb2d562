// The GPUs the CUDA runtime sees, read once per process (the set cannot change once the runtime
// has started). Never throws: no driver, no device or a broken install all read as "no GPU", so
// that Device::Auto falls back to the CPU.
#include <cuda_runtime.h>

#include <vector>

#include "host/backend.hpp"

namespace cufm::detail {

namespace {
std::vector<DeviceInfo> read_device_list() {
  std::vector<DeviceInfo> list;
  try {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count <= 0) {
      (void)cudaGetLastError();  // leave no sticky error for later calls
      return list;
    }
    for (int i = 0; i < count; ++i) {
      cudaDeviceProp prop{};
      if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
        (void)cudaGetLastError();
        continue;
      }
      DeviceInfo info;
      info.index = i;
      info.name = prop.name;
      info.sm_major = prop.major;
      info.sm_minor = prop.minor;
      info.total_memory = prop.totalGlobalMem;
      list.push_back(info);
    }
  } catch (...) {
    list.clear();  // std::bad_alloc or similar: report no GPU rather than abort
  }
  return list;
}
}  // namespace

std::vector<DeviceInfo> cuda_device_list() {
  static const std::vector<DeviceInfo> list = read_device_list();
  return list;
}

int cuda_current_device() {
  int d = 0;
  if (cudaGetDevice(&d) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return d;
}

}  // namespace cufm::detail
