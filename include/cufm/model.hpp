// The velocity model: an MLP over [x_t, time features, context, class one-hot].
//
// Layer l maps in_l -> out_l with weight W_l [out_l, in_l] (row-major, PyTorch's nn.Linear
// layout) and bias b_l [out_l]; an activation follows every layer but the last. All parameters
// live in one flat float buffer, layer after layer (W_0, b_0, W_1, b_1, ...), which the
// optimisers update in one pass and checkpoints store tensor by tensor.
//
// Conditioning: the input ends with a one-hot of num_classes + 1 entries (the last is the null
// class used for classifier-free guidance), so the class embedding is the block of W_0's columns
// that the one-hot selects: a learned embedding of width hidden[0] added before the first activation.
//
// Context (a vector per point: an observation to condition on, as in simulation-based inference):
// with context_dim = K > 0 the input carries the K context values and then a null indicator, 0 for
// a given context and 1 for the null context (K zeros), which context dropout trains and guidance
// uses. Row layout: [x_t (D) | time features | context (K) | null indicator | one-hot (C + 1)].
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cufm/math.hpp"

namespace cufm {

struct MlpConfig {
  int data_dim = 2;                                // D
  std::vector<int> hidden = {512, 512, 512, 512};  // widths of the hidden layers
  Activation activation = Activation::SiLU;
  int time_features = 0;  // 0: raw t; K > 0 (even): K sinusoids
  int num_classes = 0;    // 0: unconditional
  int context_dim = 0;    // K > 0: conditioned on a context vector of K floats

  // Throws cufm::Error naming the first bad field.
  void validate() const;
  // D + time features + (context_dim > 0 ? context_dim + 1 : 0) + (num_classes > 0 ? num_classes + 1 : 0)
  int input_dim() const;
  int num_layers() const { return static_cast<int>(hidden.size()) + 1; }
  int layer_in(int l) const;
  int layer_out(int l) const;
  int null_class() const { return num_classes; }
  bool operator==(const MlpConfig& o) const;
  bool operator!=(const MlpConfig& o) const { return !(*this == o); }
};

const char* to_string(Activation a);
Activation parse_activation(const std::string& s);

// Where each tensor lives in the flat parameter buffer.
struct TensorSlot {
  std::string name;            // "layers.<l>.weight" or "layers.<l>.bias"
  std::vector<int64_t> shape;  // [out, in] or [out]
  size_t offset = 0;           // in floats
  size_t size = 0;             // in floats
};

class ParamLayout {
 public:
  explicit ParamLayout(const MlpConfig& config);
  size_t total() const { return total_; }
  const std::vector<TensorSlot>& tensors() const { return tensors_; }
  size_t weight_offset(int layer) const { return tensors_[2 * layer].offset; }
  size_t bias_offset(int layer) const { return tensors_[2 * layer + 1].offset; }

 private:
  std::vector<TensorSlot> tensors_;
  size_t total_ = 0;
};

class Model {
 public:
  // PyTorch's nn.Linear initialisation (weights and biases uniform in +-1/sqrt(in)), drawn from
  // Philox with the seed, so the same seed gives the same model on every machine.
  Model(const MlpConfig& config, uint64_t seed);
  // Wraps existing parameters; throws if params.size() does not match the layout.
  Model(const MlpConfig& config, std::vector<float> params);

  const MlpConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  const std::vector<float>& params() const { return params_; }
  std::vector<float>& params() { return params_; }
  size_t num_params() const { return params_.size(); }

  // v = model(x, t, label, context) on the CPU in float32 for a batch of n rows: x [n, D], t [n],
  // labels [n] (or nullptr: the null class when conditional), context [n, context_dim] (or nullptr:
  // the null context); v [n, D].
  void forward(const float* x, const float* t, const int32_t* labels, int64_t n, float* v) const;
  void forward(const float* x, const float* t, const int32_t* labels, const float* context, int64_t n,
               float* v) const;

 private:
  MlpConfig config_;
  ParamLayout layout_;
  std::vector<float> params_;
};

}  // namespace cufm
