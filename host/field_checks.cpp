// The checks every backend's field evaluations share (host/field_checks.hpp).
#include "host/field_checks.hpp"

#include <cmath>

#include "cufm/error.hpp"

namespace cufm::detail {

void check_field_labels(const MlpConfig& model, const int32_t* labels, int64_t n) {
  if (model.num_classes == 0 || !labels) return;
  for (int64_t i = 0; i < n; ++i) {
    CUFM_REQUIRE(labels[i] >= 0 && labels[i] <= model.num_classes,
                 "label " << labels[i] << " at row " << i << " is outside [0, " << model.num_classes
                          << "] (the last is the null class)");
  }
}

void check_field_context(const MlpConfig& model, const float* context, int64_t n, const char* who) {
  if (!context) return;
  CUFM_REQUIRE(model.context_dim > 0, who << ": a context given, but the model has none (context_dim = 0)");
  const int64_t K = model.context_dim;
  for (int64_t j = 0; j < n * K; ++j) {
    CUFM_REQUIRE(std::isfinite(context[j]),
                 who << ": the context at row " << j / K << ", column " << j % K << " is not finite");
  }
}

}  // namespace cufm::detail
