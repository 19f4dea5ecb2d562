// The CUDA backend in a build without it (CUFM_ENABLE_CUDA=OFF): the same seam (host/backend.hpp),
// so the front end dispatches without #ifdefs. resolve_device() never picks the GPU in such a
// build, so these are reached only by a caller of the internal seam; each factory says why it
// cannot run.
#include "cufm/error.hpp"
#include "host/backend.hpp"

namespace cufm::detail {

namespace {

[[noreturn]] void absent(const char* what) {
  CUFM_FAIL(what << " needs the CUDA backend, and this build has none (configure with CUFM_ENABLE_CUDA=ON)");
}

class AbsentCudaBackend final : public Backend {
 public:
  Device device() const override { return Device::CUDA; }
  std::string unavailable_reason(Precision) const override {
    return "this build has no CUDA backend (configure with CUFM_ENABLE_CUDA=ON)";
  }
  void check_precision(Precision, const char* who) const override { absent(who); }
  int max_threads() const override { return cpu_backend().max_threads(); }
  uint64_t host_step_floats(const MlpConfig&, int64_t, Precision) const override { return 0; }
  uint64_t host_sampling_floats(const MlpConfig&, const SampleConfig&) const override { return 0; }
  uint64_t host_divergence_floats(const MlpConfig&) const override { return 0; }
  bool copies_dataset_to_host() const override { return false; }
  std::unique_ptr<TrainBackend> make_trainer(const MlpConfig&, const TrainConfig&, const Dataset&, TrainState,
                                             const RunOptions&) const override {
    absent("training on the GPU");
  }
  std::unique_ptr<SampleBackend> make_sampler() const override { absent("sampling on the GPU"); }
  std::unique_ptr<FieldBackend> make_field(const Model&, const FieldOptions&) const override {
    absent("a velocity field on the GPU");
  }
  std::unique_ptr<DivergenceBackend> make_divergence(const Model&, int) const override {
    absent("a divergence on the GPU");
  }
  void forward(const Model&, const float*, const float*, const int32_t*, const float*, int64_t,
               float*) const override {
    absent("a forward pass on the GPU");
  }
  LossGrad loss_and_grad(const Model&, const FlowBatch&, float, const RunOptions&) const override {
    absent("a loss and gradient on the GPU");
  }
  void couple(const CouplingConfig&, int64_t, int, const float*, const float*, const int32_t*, int,
              uint32_t*) const override {
    absent("coupling on the GPU");
  }
  std::string describe() const override { return "CUDA backend: not built"; }
};

}  // namespace

const Backend& cuda_backend() {
  static const AbsentCudaBackend instance;
  return instance;
}

std::vector<DeviceInfo> cuda_device_list() {
  return {};
}
int cuda_current_device() {
  return 0;
}

}  // namespace cufm::detail
