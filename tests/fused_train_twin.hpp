// The fused training step's CPU twin run on a batch with the caller's draws (test helper): random
// rows, their model input and targets as fm_prepare and fm_loss_grad build them, and the step's
// description over the Model's own (unpadded) layout.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "cufm/loss.hpp"
#include "cufm/model.hpp"
#include "host/cpu/cpu_ops.hpp"
#include "kernels/fused_train.hpp"
#include "test_util.hpp"

namespace cufm::test {

// A model shape for the fused step's tests.
struct TrainCase {
  const char* name;
  std::vector<int> hidden;
  Activation activation;
  int dim, time_features, classes, context;
};
inline MlpConfig train_case_model(const TrainCase& k) {
  MlpConfig m;
  m.data_dim = k.dim;
  m.hidden = k.hidden;
  m.activation = k.activation;
  m.time_features = k.time_features;
  m.num_classes = k.classes;
  m.context_dim = k.context;
  return m;
}

// A batch with the caller's draws: x1, t, eps, and labels and contexts (some null) where the model
// takes them.
struct FlowRows {
  int64_t size = 0;
  std::vector<float> x1, t, eps, context;
  std::vector<int32_t> labels;
  std::vector<uint8_t> context_null;
  FlowBatch batch() const {
    FlowBatch b;
    b.size = size;
    b.x1 = x1.data();
    b.t = t.data();
    b.eps = eps.data();
    b.labels = labels.empty() ? nullptr : labels.data();
    b.context = context.empty() ? nullptr : context.data();
    b.context_null = context_null.empty() ? nullptr : context_null.data();
    return b;
  }
};

inline FlowRows random_flow_rows(const MlpConfig& m, int64_t B, unsigned seed) {
  FlowRows r;
  r.size = B;
  const size_t n = static_cast<size_t>(B);
  r.x1 = random_floats(n * m.data_dim, -2.0f, 2.0f, seed);
  r.t = random_floats(n, 0.0f, 1.0f, seed + 1);
  r.eps = random_floats(n * m.data_dim, -2.0f, 2.0f, seed + 2);
  if (m.num_classes > 0) {  // every fifth row the null class, as label dropout gives
    for (int64_t i = 0; i < B; ++i)
      r.labels.push_back(static_cast<int32_t>(i % 5 == 4 ? m.num_classes : i % m.num_classes));
  }
  if (m.context_dim > 0) {
    r.context = random_floats(n * m.context_dim, -1.0f, 1.0f, seed + 3);
    for (int64_t i = 0; i < B; ++i) r.context_null.push_back(static_cast<uint8_t>(i % 3 == 1));
  }
  return r;
}

// The model input [B, input_dim] (x_t, time features, context, one-hot) and the targets [B, D].
inline std::vector<float> flow_rows_input(const MlpConfig& m, const FlowRows& r, float sigma_min) {
  const int D = m.data_dim, in = m.input_dim();
  std::vector<float> input(static_cast<size_t>(r.size) * in), xt(static_cast<size_t>(D));
  for (int64_t i = 0; i < r.size; ++i) {
    for (int d = 0; d < D; ++d) xt[d] = hd::path_xt(r.t[i], r.x1[i * D + d], r.eps[i * D + d], sigma_min);
    const int32_t label = m.num_classes > 0 ? r.labels[i] : -1;
    const float* context =
        m.context_dim > 0 && !r.context_null[i] ? r.context.data() + i * m.context_dim : nullptr;
    cpu::write_input_row(m, xt.data(), r.t[i], label, context, input.data() + i * in);
  }
  return input;
}
inline std::vector<float> flow_rows_targets(const FlowRows& r, float sigma_min) {
  std::vector<float> u(r.x1.size());
  for (size_t e = 0; e < u.size(); ++e) u[e] = hd::path_target(r.x1[e], r.eps[e], sigma_min);
  return u;
}

// The step over the Model's layout (weights [out, in] with rows `in` apart) for B rows; the input
// and the partials are the caller's to set.
inline cuda::FusedTrain fused_train_over(const MlpConfig& m, const float* params, int64_t B, int tile,
                                         int blocks) {
  const ParamLayout layout(m);
  cuda::FusedTrain p = cuda::fused_train_of(m, params, static_cast<int64_t>(layout.total()), [&](int l) {
    return cuda::FusedTrainLayer{m.layer_in(l), static_cast<int64_t>(layout.weight_offset(l)),
                                 static_cast<int64_t>(layout.bias_offset(l))};
  });
  p.batch = B;
  p.input_ld = m.input_dim();
  p.scale = 2.0f / (static_cast<float>(B) * static_cast<float>(m.data_dim));
  p.tile = tile;
  p.blocks = blocks;
  return p;
}

struct TwinStep {
  float loss = 0.0f;
  std::vector<float> grad;  // in the Model's layout
};

// blocks 0: fused_train_blocks(B, tile).
inline TwinStep run_train_twin(const Model& model, const FlowRows& r, float sigma_min, int tile,
                               int blocks = 0, Precision precision = Precision::FP32) {
  const MlpConfig& m = model.config();
  const std::vector<float> input = flow_rows_input(m, r, sigma_min), u = flow_rows_targets(r, sigma_min);
  cuda::FusedTrain p = fused_train_over(m, model.params().data(), r.size, tile,
                                        blocks > 0 ? blocks : cuda::fused_train_blocks(r.size, tile));
  p.precision = precision;
  // NaN in every element a block's first tile must write over (this layout has no padding).
  std::vector<float> partial(static_cast<size_t>(p.blocks) * p.total,
                             std::numeric_limits<float>::quiet_NaN());
  std::vector<double> loss_partial(static_cast<size_t>(p.blocks));
  p.input = input.data();
  p.partial = partial.data();
  p.loss_partial = loss_partial.data();
  TwinStep s;
  s.grad.resize(static_cast<size_t>(p.total));
  cpu::fused_train(p, u.data(), s.grad.data(), &s.loss);
  return s;
}

}  // namespace cufm::test
