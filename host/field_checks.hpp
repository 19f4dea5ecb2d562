// The argument checks every backend's field evaluations share (internal): the API's entry points
// check labels and contexts once, whichever device then runs (a device cannot say which value was
// bad), and the backends take them as checked.
#pragma once

#include <cstdint>

#include "cufm/model.hpp"

namespace cufm::detail {

// A field evaluation's labels, checked: each in [0, num_classes] (the last is the null class).
void check_field_labels(const MlpConfig& model, const int32_t* labels, int64_t n);
// A context [n, context_dim], checked: finite, and only for a model with one; `who` begins the
// message.
void check_field_context(const MlpConfig& model, const float* context, int64_t n, const char* who);

}  // namespace cufm::detail
