// The safetensors container (internal): an 8-byte little-endian header length N, N bytes of JSON
// (padded with spaces so the data starts 8-byte aligned) mapping each tensor name to {dtype, shape,
// data_offsets} plus a "__metadata__" map of strings, then the tensors' bytes.
//
// Reading checks the container against the file before a byte of data is read or allocated: the
// header's length against the file's size and a 100 MB cap, every entry's offsets against the data
// section, and (require_tiled) that the tensors tile the data section exactly.
// The data is then read tensor by tensor straight into the caller's buffers: the file is never held
// in memory whole. What the tensors must be (names, dtypes, shapes) is the schema's business
// (checkpoint.cpp).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "host/atomic_file.hpp"

namespace cufm::detail {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;            // "F32", ...
  std::vector<int64_t> shape;   // as the header gives it (integers; the schema checks the values)
  uint64_t begin = 0, end = 0;  // byte offsets within the data section
};

class SafetensorsReader {
 public:
  // Opens and validates the container; `where` names the file in messages ("checkpoint 'x'").
  SafetensorsReader(const std::string& path, const std::string& where);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const nlohmann::json& metadata() const { return metadata_; }  // an object (possibly empty)
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  uint64_t data_size() const { return data_size_; }
  // Throws unless the entries tile the data section exactly (no overlap, gap or trailing bytes).
  // Separate, so that a schema can first name a missing or misshapen tensor.
  void require_tiled() const;
  // Reads one entry's bytes (end - begin of them) into dst.
  void read(const SafetensorsEntry& e, void* dst) const;

 private:
  std::string where_;
  int fd_ = -1;
  uint64_t data_begin_ = 0, data_size_ = 0;
  nlohmann::json metadata_;
  std::vector<SafetensorsEntry> entries_;
};

// One tensor to write: its header entry (begin/end are filled in) and its bytes.
struct SafetensorsTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  uint64_t bytes = 0;
};

// Parses JSON whose nesting is at most max_depth deep (cuFM's own headers and configurations are
// 3 deep): deeper input throws cufm::Error before a deep structure is built (a crafted header
// cannot exhaust the stack in later recursive code); text that is not JSON throws
// nlohmann::json::exception.
nlohmann::json parse_json_bounded(const std::string& text, int max_depth = 16);

// Writes the container through an AtomicFile (a temporary renamed into place).
void write_safetensors(const std::string& path, const nlohmann::json& metadata,
                       const std::vector<SafetensorsTensor>& tensors);

}  // namespace cufm::detail
