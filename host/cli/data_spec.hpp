// Where a run's data comes from, as the CLI records it in checkpoints so that --resume can rebuild
// it: a toy (name, size, seed) or .npy files (absolute paths, with each file's size and CRC-32, so a
// resumed run notices a file that changed).
#pragma once

#include <cstdint>
#include <string>

#include "cufm/dataset.hpp"

namespace cufm::cli {

struct FileStamp {
  std::string path;  // absolute
  uint64_t size = 0;
  uint32_t crc32 = 0;
  bool known = false;  // false for descriptors written before stamps were recorded
};

struct DataSpec {
  std::string source;   // toy name or .npy path, as given
  std::string labels;   // labels .npy (optional)
  std::string context;  // context .npy [N, K] (optional)
  int64_t n = 100000;   // toy size
  uint64_t seed = 0;    // toy seed
  // The .npy files' stamps when already computed (a resume checks them): describe() reuses them
  // instead of reading the files again.
  FileStamp source_stamp, labels_stamp, context_stamp;

  bool is_toy() const;
  // Throws unless the combination is meaningful: a known toy or a .npy path; --labels and --context
  // only for .npy.
  void validate() const;
  Dataset load() const;

  // The checkpoint's descriptor: JSON {"kind": "toy", "name", "n", "seed"} or {"kind": "npy", "data":
  // {"path", "size", "crc32"}, "labels": {...} or null[, "context": {...}]}. Stamps the .npy files
  // (reads them once).
  std::string describe() const;
  // Reads a descriptor: this JSON, or the older "toy:<name>:<n>:<seed>" / "npy:<path>[:<labels>]".
  // stamps receive the recorded stamps of the data and label files (unknown for old descriptors).
  static DataSpec parse(const std::string& descriptor, FileStamp* data_stamp = nullptr,
                        FileStamp* labels_stamp = nullptr, FileStamp* context_stamp = nullptr);
};

// The file's absolute path, size and CRC-32 (zlib).
FileStamp stamp_file(const std::string& path);

// "checkerboard, 8gaussians, ...": the toy datasets' names, for messages and help.
std::string toy_list();

// "toy 'checkerboard' (100000 points, seed 0)" or "'/abs/x.npy'": for messages.
std::string spec_text(const DataSpec& spec);

}  // namespace cufm::cli
