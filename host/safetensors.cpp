// See safetensors.hpp.
#include "host/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "cufm/error.hpp"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "cuFM's file formats assume a little-endian host");

namespace cufm::detail {
namespace {

using json = nlohmann::json;

// cuFM's own headers are a few KB (at most 64 layers x 4 buffers x 2 tensors); 16 MB keeps a
// crafted header's parsed form (~20x its text) well inside memory.
constexpr uint64_t kMaxHeaderBytes = 16u << 20;

// pread until done; false at end of file or on an error (errno set).
bool read_at(int fd, void* dst, uint64_t bytes, uint64_t offset) {
  char* p = static_cast<char*>(dst);
  while (bytes > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(bytes, uint64_t{1} << 30));
    const ssize_t n = ::pread(fd, p, chunk, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = 0;
      return false;
    }
    p += n;
    offset += static_cast<uint64_t>(n);
    bytes -= static_cast<uint64_t>(n);
  }
  return true;
}

}  // namespace

json parse_json_bounded(const std::string& text, int max_depth) {
  return json::parse(text, [max_depth](int depth, json::parse_event_t, json&) {
    CUFM_REQUIRE(depth <= max_depth,
                 "holds JSON nested deeper than " << max_depth << " levels, which cuFM never writes");
    return true;
  });
}

SafetensorsReader::SafetensorsReader(const std::string& path, const std::string& where) : where_(where) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // a FIFO must not block the open
  CUFM_REQUIRE(fd_ >= 0, "cannot open " << where << ": " << std::strerror(errno));
  try {
    struct stat st;
    CUFM_REQUIRE(::fstat(fd_, &st) == 0, "cannot read " << where << ": " << std::strerror(errno));
    CUFM_REQUIRE(S_ISREG(st.st_mode), "cannot read " << where << ": not a regular file");
    const uint64_t file_size = static_cast<uint64_t>(st.st_size);
    CUFM_REQUIRE(file_size >= 8,
                 where << " is too short to be a safetensors file (" << file_size << " bytes)");
    unsigned char len[8];
    CUFM_REQUIRE(read_at(fd_, len, 8, 0), "cannot read " << where << ": " << std::strerror(errno));
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len[i];
    CUFM_REQUIRE(header_len <= file_size - 8, where << " is truncated or corrupt: its header length "
                                                    << header_len << " is larger than the " << file_size - 8
                                                    << " bytes that follow");
    CUFM_REQUIRE(header_len <= kMaxHeaderBytes, where << ": header length " << header_len << " exceeds the "
                                                      << kMaxHeaderBytes << "-byte limit");
    std::string text(header_len, '\0');
    CUFM_REQUIRE(read_at(fd_, text.data(), header_len, 8),
                 "cannot read " << where << "'s header: " << std::strerror(errno));
    data_begin_ = 8 + header_len;
    data_size_ = file_size - data_begin_;

    json header;
    try {
      header = parse_json_bounded(text);
    } catch (const json::exception& e) {
      CUFM_FAIL(where << " is corrupt: its header is not valid JSON (" << e.what() << ")");
    } catch (const Error& e) {
      CUFM_FAIL(where << " is corrupt: its header " << e.message());
    }
    CUFM_REQUIRE(header.is_object(), where << " is corrupt: its header is not a JSON object");
    metadata_ = json::object();
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        CUFM_REQUIRE(it->is_object(), where << " is corrupt: its __metadata__ is not a map");
        metadata_ = *it;
        continue;
      }
      const std::string what = where + " tensor '" + it.key() + "'";
      const json& entry = it.value();
      CUFM_REQUIRE(entry.is_object(), what << " has a malformed header entry");
      SafetensorsEntry e;
      e.name = it.key();
      const auto dtype = entry.find("dtype");
      CUFM_REQUIRE(dtype != entry.end() && dtype->is_string(), what << " has no dtype");
      e.dtype = dtype->get<std::string>();
      const auto shape = entry.find("shape");
      CUFM_REQUIRE(shape != entry.end() && shape->is_array() && shape->size() <= 8,
                   what << " has a malformed shape");
      for (const json& d : *shape) {
        CUFM_REQUIRE(d.is_number_integer(), what << " has a malformed shape");
        e.shape.push_back(d.get<int64_t>());
      }
      const auto offsets = entry.find("data_offsets");
      CUFM_REQUIRE(offsets != entry.end() && offsets->is_array() && offsets->size() == 2 &&
                       (*offsets)[0].is_number_unsigned() && (*offsets)[1].is_number_unsigned(),
                   what << " has malformed data_offsets; expected [begin, end]");
      e.begin = (*offsets)[0].get<uint64_t>();
      e.end = (*offsets)[1].get<uint64_t>();
      CUFM_REQUIRE(e.begin <= e.end,
                   what << " has data_offsets [" << e.begin << ", " << e.end << "] with begin > end");
      CUFM_REQUIRE(e.end <= data_size_, where << " is truncated: tensor '" << e.name << "' ends at byte "
                                              << e.end << " of the data section, which has only "
                                              << data_size_ << " bytes");
      entries_.push_back(std::move(e));
    }
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

void SafetensorsReader::require_tiled() const {
  // The tensors must tile the data section exactly: no overlap, no gap, nothing after.
  std::vector<const SafetensorsEntry*> order;
  for (const SafetensorsEntry& e : entries_) order.push_back(&e);
  std::sort(order.begin(), order.end(),
            [](const SafetensorsEntry* a, const SafetensorsEntry* b) { return a->begin < b->begin; });
  uint64_t cursor = 0;
  for (const SafetensorsEntry* e : order) {
    CUFM_REQUIRE(e->begin >= cursor, where_ << " is corrupt: tensor '" << e->name << "' at data_offsets ["
                                            << e->begin << ", " << e->end
                                            << "] overlaps the tensor before it");
    CUFM_REQUIRE(e->begin == cursor, where_ << " is corrupt: a gap of " << e->begin - cursor
                                            << " bytes before tensor '" << e->name << "'");
    cursor = e->end;
  }
  CUFM_REQUIRE(cursor == data_size_,
               where_ << " is corrupt: " << data_size_ - cursor << " bytes after the last tensor");
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) ::close(fd_);
}

void SafetensorsReader::read(const SafetensorsEntry& e, void* dst) const {
  CUFM_REQUIRE(
      read_at(fd_, dst, e.end - e.begin, data_begin_ + e.begin),
      "cannot read " << where_ << " tensor '" << e.name << "': "
                     << (errno ? std::strerror(errno) : "the file ended early (changed while reading?)"));
}

void write_safetensors(const std::string& path, const json& metadata,
                       const std::vector<SafetensorsTensor>& tensors) {
  json header = json::object();
  header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const SafetensorsTensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes}}};
    offset += t.bytes;
  }
  // Invalid UTF-8 in a metadata string is replaced rather than failing the save.
  std::string text = header.dump(-1, ' ', false, json::error_handler_t::replace);
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  AtomicFile out(path);
  out.write(len, sizeof len);
  out.write(text.data(), text.size());
  for (const SafetensorsTensor& t : tensors) out.write(t.data, t.bytes);
  out.commit();
}

}  // namespace cufm::detail
