// What the binding's files share: the array types, the conversions between numpy (or DLPack)
// arrays and the C++ API's pointers and vectors, the argument checks they all make, and one
// bind_* function per concept, which module.cpp calls in order. Arrays come in as numpy float32
// C-contiguous arrays (nanobind converts anything else once, or refuses it with a TypeError naming
// the expected type) and go out as numpy arrays that own their memory.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
// Every type caster any part uses, in every part: nanobind's casters are templates, so a file that
// lacked one would convert (or fail to convert) that type differently from the others.
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cufm/cufm.hpp"
#include "cufm/names.hpp"  // enum_help, enum_choices: the docstrings' lists of names

namespace nb = nanobind;
using namespace nb::literals;

namespace cufm::python {

// The module's parts, in the order module.cpp binds them (a later part may name an earlier one's
// types in its defaults: Trainer's config defaults to a TrainConfig).
void bind_configs(nb::module_& m);     // configs.cpp: MlpConfig, TrainConfig
void bind_training(nb::module_& m);    // training.cpp: Dataset, Model, Trainer, checkpoints
void bind_sampling(nb::module_& m);    // sampling.cpp: sample, integrate, Sampler, VelocityField
void bind_likelihood(nb::module_& m);  // likelihood.cpp: log_prob, the sample distances
void bind_loss(nb::module_& m);        // loss.cpp: loss_and_grad, prepare_flow, flow_mse, couple
void bind_kernels(nb::module_& m);     // kernels.cpp: fm_prepare, fm_couple, fm_loss_grad

using FloatIn = nb::ndarray<const float, nb::numpy, nb::c_contig, nb::device::cpu>;
using LabelsIn = nb::ndarray<const int32_t, nb::numpy, nb::c_contig, nb::device::cpu, nb::ndim<1>>;
using FloatOut = nb::ndarray<nb::numpy, float>;
// Any framework's array (numpy, or a PyTorch tensor through DLPack) on the CPU or a CUDA device:
// the kernels' entry points take these and write their outputs in place.
using Floats = nb::ndarray<float, nb::c_contig>;
using ConstFloats = nb::ndarray<const float, nb::c_contig>;
using ConstLabels = nb::ndarray<const int32_t, nb::c_contig, nb::ndim<1>>;
using Labels = nb::ndarray<int32_t, nb::c_contig, nb::ndim<1>>;
using Steps = nb::ndarray<const int64_t, nb::c_contig>;  // the kernels' step: an int64 [1] on the device
using Bytes = nb::ndarray<uint8_t, nb::c_contig>;        // a kernel's workspace

// A numpy array that owns `v`, shaped `shape`.
template <class T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T> v, std::vector<size_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  nb::capsule free_it(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(owned->data(), shape.size(), shape.data(), free_it);
}

// A docstring assembled when the module loads (from the enum tables' names and help, say), kept
// for the life of the process.
const char* doc(std::string text);

template <typename A>
bool on_cuda(const A& a) {
  return a.device_type() == nb::device::cuda::value;
}

template <typename A>
void require_cpu(const A& a, const char* what) {
  if (a.device_type() != nb::device::cpu::value) {
    throw cufm::Error(std::string(what) + ": expected an array in host memory (the CPU)");
  }
}

// Every array a call gets must live where x1 (the first) does: on the CPU, or on cuda:device_id.
template <typename A>
void require_same_device(const A& a, bool cuda, int device_id, const char* what) {
  if (on_cuda(a) != cuda || (cuda && a.device_id() != device_id)) {
    throw cufm::Error(std::string(what) + ": on another device than x1 (every array of the call must be on " +
                      (cuda ? "cuda:" + std::to_string(device_id) : std::string("the CPU")) + ")");
  }
}

void require_shape(size_t ndim, const size_t* shape, const std::vector<int64_t>& want, const char* what);
template <typename A>
void require_shape(const A& a, const std::vector<int64_t>& want, const char* what) {
  std::vector<size_t> shape(a.ndim());
  for (size_t k = 0; k < a.ndim(); ++k) shape[k] = a.shape(k);
  require_shape(a.ndim(), shape.data(), want, what);
}

// Rows of a [n, dim] array, checked against the model's dim.
int64_t rows_of(const FloatIn& a, int dim, const char* what);
// The labels' pointer (nullptr for None), checked to hold n.
const int32_t* labels_of(const std::optional<LabelsIn>& labels, int64_t n, const char* what);
// A context argument as flat floats: [K] (one row) or [N, K]; the library checks the sizes.
std::vector<float> context_arg(const std::optional<FloatIn>& c, const char* who);
// A per-row context [n, K] for a model with a context of K (nullptr for None).
const float* context_rows(const std::optional<FloatIn>& c, int64_t n, int K, const char* who);

cufm::RunOptions run_options(const std::string& device, const std::string& precision, int threads);
cufm::StepDraws step_draws(uint64_t seed, uint64_t step, int num_classes, float label_dropout,
                           float sigma_min, const std::string& time_sampling, float logit_mean,
                           float logit_std, float context_dropout = 0.0f);

}  // namespace cufm::python
