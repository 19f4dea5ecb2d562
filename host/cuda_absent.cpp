// The CUDA backend's entry points in a build without it (CUFM_ENABLE_CUDA=OFF): the same seam
// (host/backend.hpp), so the front end dispatches without #ifdefs. resolve_device() never picks
// the GPU in such a build, so these are reached only by a caller of the internal seam; each says
// why it cannot run.
#include "cufm/error.hpp"
#include "host/backend.hpp"

namespace cufm::detail {

namespace {
[[noreturn]] void absent(const char* what) {
  CUFM_FAIL(what << " needs the CUDA backend, and this build has none (configure with CUFM_ENABLE_CUDA=ON)");
}
}  // namespace

class CudaSampler {};
class CudaField {};
class CudaDivergence {};

void CudaSamplerDeleter::operator()(CudaSampler* s) const {
  delete s;
}
void CudaFieldDeleter::operator()(CudaField* f) const {
  delete f;
}
void CudaDivergenceDeleter::operator()(CudaDivergence* d) const {
  delete d;
}

std::unique_ptr<TrainBackend> make_cuda_trainer(const MlpConfig&, const TrainConfig&, const Dataset&,
                                                TrainState, Precision) {
  absent("training on the GPU");
}
CudaSamplerPtr make_cuda_sampler(int64_t) {
  absent("sampling on the GPU");
}
SampleResult cuda_sample(CudaSampler&, const Model&, const SampleConfig&, const float*) {
  absent("sampling on the GPU");
}
SampleResult cuda_sample(const Model&, const SampleConfig&, const float*) {
  absent("sampling on the GPU");
}
CudaFieldPtr make_cuda_field(const Model&, const FieldOptions&) {
  absent("a velocity field on the GPU");
}
void cuda_field_evaluate(CudaField&, float, const float*, const int32_t*, const float*, int64_t, float*,
                         void*, bool) {
  absent("a velocity field on the GPU");
}
void cuda_field_set_weights(CudaField&, const Model&) {
  absent("a velocity field on the GPU");
}
CudaDivergencePtr make_cuda_divergence(const Model&) {
  absent("a divergence on the GPU");
}
void cuda_divergence_evaluate(CudaDivergence&, float, const float*, const int32_t*, const float*, int64_t,
                              const float*, const float*, int, float*, float*) {
  absent("a divergence on the GPU");
}
LossGrad cuda_loss_and_grad(const Model&, const FlowBatch&, float, Precision) {
  absent("a loss and gradient on the GPU");
}
std::vector<DeviceInfo> cuda_device_list() {
  return {};
}
int cuda_current_device() {
  return 0;
}

}  // namespace cufm::detail
