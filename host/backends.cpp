// The registry of backends: one line per backend (host/backend.hpp).
#include "cufm/error.hpp"
#include "host/backend.hpp"

namespace cufm::detail {

namespace {
struct Registered {
  Device device;
  const Backend& (*instance)();
};
constexpr Registered kBackends[] = {
    {Device::CPU, cpu_backend},
    {Device::CUDA, cuda_backend},
};
}  // namespace

const Backend& backend(Device device) {
  for (const Registered& r : kBackends) {
    if (r.device == device) return r.instance();
  }
  CUFM_FAIL("no backend runs device '" << to_string(device) << "': resolve it first (resolve_device)");
}

}  // namespace cufm::detail
