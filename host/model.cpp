#include "cufm/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cufm/detail/math.hpp"
#include "cufm/detail/philox.hpp"
#include "cufm/error.hpp"
#include "host/backend.hpp"
#include "host/field_checks.hpp"
#include "host/memory.hpp"

namespace cufm {

void MlpConfig::validate() const {
  CUFM_REQUIRE(data_dim >= 1 && data_dim <= 65536, "model data_dim must be in [1, 65536], got " << data_dim);
  CUFM_REQUIRE(!hidden.empty() && hidden.size() <= 64,
               "model needs 1 to 64 hidden layers, got " << hidden.size());
  for (size_t i = 0; i < hidden.size(); ++i) {
    CUFM_REQUIRE(hidden[i] >= 1 && hidden[i] <= 65536,
                 "model hidden width " << i << " must be in [1, 65536], got " << hidden[i]);
  }
  CUFM_REQUIRE(time_features >= 0 && time_features <= 64 && time_features % 2 == 0,
               "model time_features must be 0 (raw t) or an even number up to 64, got " << time_features);
  CUFM_REQUIRE(num_classes >= 0 && num_classes <= 100000,
               "model num_classes must be in [0, 100000], got " << num_classes);
  CUFM_REQUIRE(context_dim >= 0 && context_dim <= 65536,
               "model context_dim must be in [0, 65536], got " << context_dim);
  CUFM_REQUIRE(
      activation == Activation::SiLU || activation == Activation::ReLU || activation == Activation::GELU,
      "model activation must be silu, relu or gelu");
}

int MlpConfig::input_dim() const {
  return hd::input_width(data_dim, time_features, context_dim, num_classes);
}

int MlpConfig::layer_in(int l) const {
  return l == 0 ? input_dim() : hidden[l - 1];
}
int MlpConfig::layer_out(int l) const {
  return l == static_cast<int>(hidden.size()) ? data_dim : hidden[l];
}

bool MlpConfig::operator==(const MlpConfig& o) const {
  return data_dim == o.data_dim && hidden == o.hidden && activation == o.activation &&
         time_features == o.time_features && num_classes == o.num_classes && context_dim == o.context_dim;
}

ParamLayout::ParamLayout(const MlpConfig& config) {
  config.validate();
  for (int l = 0; l < config.num_layers(); ++l) {
    const int in = config.layer_in(l), out = config.layer_out(l);
    const std::string prefix = "layers." + std::to_string(l);
    const size_t w = static_cast<size_t>(in) * out;
    tensors_.push_back({prefix + ".weight", {out, in}, total_, w});
    total_ += w;
    tensors_.push_back({prefix + ".bias", {out}, total_, static_cast<size_t>(out)});
    total_ += out;
  }
}

Model::Model(const MlpConfig& config, uint64_t seed) : config_(config), layout_(config) {
  detail::require_memory(detail::mul_sat(layout_.total(), sizeof(float)),
                         "a model of " + std::to_string(layout_.total()) + " parameters",
                         "use smaller widths");
  params_.resize(layout_.total());
  const auto& tensors = layout_.tensors();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int layer = static_cast<int>(i / 2);
    const float bound = 1.0f / std::sqrt(static_cast<float>(config.layer_in(layer)));
    for (size_t k = tensors[i].offset; k < tensors[i].offset + tensors[i].size; ++k) {
      const Philox4x32 r =
          rng::draw(seed, rng::kInitStream, static_cast<uint32_t>(k >> 34), static_cast<uint32_t>(k >> 2));
      params_[k] = (2.0f * hd::uniform01(r.v[k & 3]) - 1.0f) * bound;
    }
  }
}

Model::Model(const MlpConfig& config, std::vector<float> params)
    : config_(config), layout_(config), params_(std::move(params)) {
  CUFM_REQUIRE(params_.size() == layout_.total(), "model parameters: expected "
                                                      << layout_.total() << " floats for this config, got "
                                                      << params_.size());
}

void Model::forward(const float* x, const float* t, const int32_t* labels, int64_t n, float* v) const {
  forward(x, t, labels, nullptr, n, v);
}

void Model::forward(const float* x, const float* t, const int32_t* labels, const float* context, int64_t n,
                    float* v) const {
  CUFM_REQUIRE(n >= 0, "forward: batch size must be >= 0, got " << n);
  if (n == 0) return;
  CUFM_REQUIRE(x && t && v, "forward: x, t and v must not be null");
  detail::check_field_labels(config_, labels, n);
  detail::check_field_context(config_, context, n, "forward");
  detail::backend(Device::CPU).forward(*this, x, t, labels, context, n, v);
}

}  // namespace cufm
