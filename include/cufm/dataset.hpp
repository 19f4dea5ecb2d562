// Training data: N points of dimension D, row-major float32, with optional integer class labels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cufm {

struct Dataset {
  std::string name;
  int64_t n = 0;
  int dim = 0;
  std::vector<float> x;          // [n, dim]
  std::vector<int32_t> labels;   // [n] or empty
  int num_classes = 0;           // 0 when unlabelled; labels lie in [0, num_classes)

  // Throws cufm::Error on an empty set, a size mismatch, NaN or Inf, or a label out of range.
  void validate() const;
  bool labelled() const { return !labels.empty(); }
};

// The 2D toy sets, each labelled by mode (checkerboard: 8 squares, 8gaussians: 8, moons: 2,
// spirals: 2 arms, rings: 4). Deterministic in (name, n, seed).
Dataset make_toy(const std::string& name, int64_t n, uint64_t seed);
const std::vector<std::string>& toy_names();

// Data from NumPy .npy (float32 or float64, shape [N, D], C order, little-endian) with optional
// labels from an integer .npy of shape [N]. num_classes = max label + 1 unless given (> 0).
Dataset load_npy_dataset(const std::string& data_path, const std::string& labels_path = "",
                         int num_classes = 0);

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
