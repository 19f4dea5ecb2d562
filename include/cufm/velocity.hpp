// The learned velocity field v(x, t, class, context) as an object to evaluate on a batch of points, on the
// CPU or the GPU, with optional classifier-free guidance: what a caller plugs into an ODE solver of
// their own (cufm::integrate runs cuFM's). The GPU keeps the weights, the cuBLASLt plan and its
// buffers between calls.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "cufm/device.hpp"
#include "cufm/model.hpp"

namespace cufm {

struct FieldOptions {
  // Set: v = v(x, t, null) + w * (v(x, t, c) - v(x, t, null)), the null field having the null class
  // and the null context; every call then needs labels or a context.
  std::optional<float> guidance;
  Device device = Device::Auto;
  Precision precision = Precision::FP32;  // TF32: the GPU only; BF16: the GPU, or a CPU that has it
  int threads = 0;                        // CPU threads (0: all cores)
  int64_t max_rows = 0;                   // GPU: points per model pass (0: sized by memory)
};

class VelocityField {
 public:
  // Copies the model's weights (to the device on the GPU). Throws for bad options.
  explicit VelocityField(const Model& model, const FieldOptions& options = {});
  ~VelocityField();
  VelocityField(VelocityField&&) noexcept;
  VelocityField& operator=(VelocityField&&) noexcept;
  VelocityField(const VelocityField&) = delete;
  VelocityField& operator=(const VelocityField&) = delete;

  // v [n, D] at the HOST points x [n, D] and time t, for classes labels [n] (nullptr: the null
  // class of a conditional model; an unconditional one takes none). Returns when v is written.
  void evaluate(float t, const float* x, const int32_t* labels, int64_t n, float* v);
  // The same for a model with a context: context [n, context_dim] (nullptr: the null context).
  void evaluate(float t, const float* x, const int32_t* labels, const float* context, int64_t n, float* v);

  // The GPU field only: x, labels and v are DEVICE pointers, the work is enqueued on `stream` (a
  // cudaStream_t; nullptr: the legacy default stream) and the call returns without waiting. Labels
  // are not range-checked on the device: one outside [0, num_classes) reads as no class at all.
  // Calls share the field's buffers, so each call's work waits on the device for the previous
  // call's, whatever streams they were given. A call with more points than any before it (the
  // first, too) builds its plan and synchronises the device: make one such call before capturing
  // calls into a CUDA graph.
  void evaluate_device(float t, const float* x, const int32_t* labels, int64_t n, float* v, void* stream);
  // The same with a DEVICE context [n, context_dim] (nullptr: the null context), not checked for
  // finiteness on the device.
  void evaluate_device(float t, const float* x, const int32_t* labels, const float* context, int64_t n,
                       float* v, void* stream);

  // Replaces the weights with another model's of the same configuration (keeps the GPU's plans).
  void set_weights(const Model& model);

  Device device() const;
  const MlpConfig& config() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cufm
