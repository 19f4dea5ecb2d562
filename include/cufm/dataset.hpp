// Training data: N points of dimension D, row-major float32, with optional integer class labels and
// an optional context vector per point (what a model with context_dim = K is conditioned on).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cufm {

struct Dataset {
  std::string name;
  int64_t n = 0;
  int dim = 0;
  std::vector<float> x;         // [n, dim]
  std::vector<int32_t> labels;  // [n] or empty
  int num_classes = 0;          // 0 when unlabelled; labels lie in [0, num_classes)
  int context_dim = 0;          // K: 0 when the points carry no context
  std::vector<float> context;   // [n, context_dim] or empty

  // Throws cufm::Error on an empty set, a size mismatch, NaN or Inf, or a label out of range.
  void validate() const;
  bool labelled() const { return !labels.empty(); }
  bool has_context() const { return context_dim > 0; }
};

// A source of training batches that Trainer::fit(source, ...) pulls from: data streamed, generated
// or read on demand. The caller owns it and keeps it alive during the call.
class DataSource {
 public:
  virtual ~DataSource() = default;
  virtual int dim() const = 0;
  // > 0: the batches are labelled with classes in [0, num_classes()).
  virtual int num_classes() const { return 0; }
  // > 0: every point comes with a context vector of context_dim() floats.
  virtual int context_dim() const { return 0; }
  // The batch of training step `step` (0-based): x1 [batch_size, dim()] row-major and, when
  // labelled, labels [batch_size] (else labels is nullptr). A source without a context overrides
  // this one.
  virtual void next_batch(uint64_t step, int batch_size, float* x1, int32_t* labels);
  // The same with each point's context [batch_size, context_dim()] (nullptr without one). A source
  // with a context overrides this one; by default it calls the one above.
  virtual void next_batch(uint64_t step, int batch_size, float* x1, int32_t* labels, float* context);
};

// An in-memory dataset as a DataSource, without a copy (it must outlive the source). Step s's row
// i is data point uniform_index(Philox(seed, s, i)): the point a Trainer built on the dataset
// draws itself, so fit(DatasetSource(data, config.seed), ...) trains as fit(...) does, bit for bit.
class DatasetSource final : public DataSource {
 public:
  DatasetSource(const Dataset& data, uint64_t seed);  // validates the data
  int dim() const override { return data_.dim; }
  int num_classes() const override { return data_.labelled() ? data_.num_classes : 0; }
  int context_dim() const override { return data_.context_dim; }
  void next_batch(uint64_t step, int batch_size, float* x1, int32_t* labels) override;
  void next_batch(uint64_t step, int batch_size, float* x1, int32_t* labels, float* context) override;

 private:
  const Dataset& data_;
  uint64_t seed_;
};

// The 2D toy sets, each labelled by mode (checkerboard: 8 squares, 8gaussians: 8, moons: 2,
// spirals: 2 arms, rings: 4). Deterministic in (name, n, seed).
Dataset make_toy(const std::string& name, int64_t n, uint64_t seed);
const std::vector<std::string>& toy_names();

// Data from NumPy .npy (float32 or float64, shape [N, D], C order, little-endian) with optional
// labels from an integer .npy of shape [N] and an optional context from a float .npy of shape
// [N, K]. num_classes = max label + 1 unless given (> 0).
Dataset load_npy_dataset(const std::string& data_path, const std::string& labels_path = "",
                         int num_classes = 0, const std::string& context_path = "");

// A float .npy of shape [N, K] (with one_row_ok, also [K]: one row) as float32 values, with
// messages naming `what` (e.g. "context file"): the loader behind the data, the context and the
// CLI's inputs.
std::vector<float> read_npy_matrix(const std::string& path, const char* what, int64_t& rows, int64_t& cols,
                                   bool one_row_ok = false);

// Raw .npy I/O. Writes go to a temporary file that is renamed into place.
struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<double> values;  // converted to double whatever the stored type
  std::string dtype;           // e.g. "<f4", "<i8"
};
NpyArray read_npy(const std::string& path);
void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape);
void write_npy(const std::string& path, const int32_t* data, const std::vector<int64_t>& shape);

}  // namespace cufm
