// VelocityField: the model's field on a batch of points, checked here and computed by the device's
// backend (host/backend.hpp: the CPU's evaluate_model, the GPU's CudaField).
#include "cufm/velocity.hpp"

#include <cmath>
#include <vector>

#include "cufm/error.hpp"
#include "host/backend.hpp"
#include "host/field_checks.hpp"

namespace cufm {

struct VelocityField::Impl {
  MlpConfig config;
  FieldOptions options;
  Device device = Device::CPU;
  std::unique_ptr<detail::FieldBackend> field;
};

VelocityField::VelocityField(const Model& model, const FieldOptions& options)
    : impl_(std::make_unique<Impl>()) {
  const MlpConfig& m = model.config();
  CUFM_REQUIRE(!options.guidance || m.num_classes > 0 || m.context_dim > 0,
               "guidance needs a conditional model (num_classes > 0 or context_dim > 0)");
  CUFM_REQUIRE(!options.guidance || std::isfinite(*options.guidance),
               "guidance scale must be finite, got " << *options.guidance);
  CUFM_REQUIRE(options.threads >= 0, "threads must be >= 0, got " << options.threads);
  CUFM_REQUIRE(options.max_rows >= 0, "max_rows must be >= 0 (0: sized by memory), got " << options.max_rows);
  impl_->config = m;
  impl_->options = options;
  impl_->device = resolve_device(options.device);
  impl_->field = detail::backend(impl_->device).make_field(model, options);
}

VelocityField::~VelocityField() = default;
VelocityField::VelocityField(VelocityField&&) noexcept = default;
VelocityField& VelocityField::operator=(VelocityField&&) noexcept = default;

namespace {
void check_call(const MlpConfig& m, const FieldOptions& o, float t, const void* x, const int32_t* labels,
                const void* context, int64_t n, const void* v) {
  CUFM_REQUIRE(n >= 0, "VelocityField: the number of points must be >= 0, got " << n);
  CUFM_REQUIRE(n == 0 || (x && v), "VelocityField: x and v must not be null");
  CUFM_REQUIRE(std::isfinite(t), "VelocityField: t must be finite, got " << t);
  CUFM_REQUIRE(!labels || m.num_classes > 0, "VelocityField: labels given, but the model is unconditional");
  CUFM_REQUIRE(!context || m.context_dim > 0,
               "VelocityField: a context given, but the model has none (context_dim = 0)");
  CUFM_REQUIRE(!o.guidance || labels || context || n == 0,
               "VelocityField: guidance needs a condition to guide towards: labels or a context");
}
}  // namespace

void VelocityField::evaluate(float t, const float* x, const int32_t* labels, int64_t n, float* v) {
  evaluate(t, x, labels, nullptr, n, v);
}

void VelocityField::evaluate(float t, const float* x, const int32_t* labels, const float* context, int64_t n,
                             float* v) {
  CUFM_REQUIRE(impl_, "VelocityField: used after being moved from");
  check_call(impl_->config, impl_->options, t, x, labels, context, n, v);
  if (n == 0) return;
  // Checked here, once, on both devices (the device cannot say which value was bad).
  detail::check_field_labels(impl_->config, labels, n);
  detail::check_field_context(impl_->config, context, n, "VelocityField");
  impl_->field->evaluate(t, x, labels, context, n, v);
}

void VelocityField::evaluate_device(float t, const float* x, const int32_t* labels, int64_t n, float* v,
                                    void* stream) {
  evaluate_device(t, x, labels, nullptr, n, v, stream);
}

void VelocityField::evaluate_device(float t, const float* x, const int32_t* labels, const float* context,
                                    int64_t n, float* v, void* stream) {
  CUFM_REQUIRE(impl_, "VelocityField: used after being moved from");
  check_call(impl_->config, impl_->options, t, x, labels, context, n, v);
  impl_->field->evaluate_device(t, x, labels, context, n, v, stream);  // a CPU field refuses
}

void VelocityField::set_weights(const Model& model) {
  CUFM_REQUIRE(impl_, "VelocityField: used after being moved from");
  CUFM_REQUIRE(model.config() == impl_->config,
               "VelocityField::set_weights: the model's configuration differs "
               "from the field's; build a new field for it");
  impl_->field->set_weights(model);
}

Device VelocityField::device() const {
  CUFM_REQUIRE(impl_, "VelocityField: used after being moved from");
  return impl_->device;
}

const MlpConfig& VelocityField::config() const {
  CUFM_REQUIRE(impl_, "VelocityField: used after being moved from");
  return impl_->config;
}

}  // namespace cufm
