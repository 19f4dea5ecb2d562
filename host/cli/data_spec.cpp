// See data_spec.hpp.
#include "host/cli/data_spec.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "cufm/error.hpp"
#include "host/safetensors.hpp"

namespace cufm::cli {
namespace fs = std::filesystem;
using json = nlohmann::json;

std::string toy_list() {
  std::string names;
  for (const auto& t : toy_names()) names += (names.empty() ? "" : ", ") + t;
  return names;
}

namespace {

json stamp_json(const FileStamp& s) {
  return {{"path", s.path}, {"size", s.size}, {"crc32", s.crc32}};
}

FileStamp stamp_from_json(const json& j, const std::string& what) {
  CUFM_REQUIRE(j.is_object() && j.contains("path") && j["path"].is_string() && j.contains("size") &&
                   j["size"].is_number_unsigned() && j.contains("crc32") && j["crc32"].is_number_unsigned(),
               "the checkpoint's data descriptor has a malformed " << what << " entry");
  FileStamp s;
  s.path = j["path"].get<std::string>();
  s.size = j["size"].get<uint64_t>();
  s.crc32 = static_cast<uint32_t>(j["crc32"].get<uint64_t>());
  s.known = true;
  return s;
}

}  // namespace

FileStamp stamp_file(const std::string& path) {
  FileStamp s;
  std::error_code ec;
  const fs::path abs = fs::absolute(path, ec);
  s.path = ec ? path : abs.lexically_normal().string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // a FIFO must not block
  CUFM_REQUIRE(fd >= 0, "cannot open '" << path << "': " << std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    CUFM_FAIL("cannot read '" << path << "': not a regular file");
  }
  std::vector<unsigned char> buf(size_t{1} << 20);
  uLong crc = ::crc32(0L, Z_NULL, 0);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      CUFM_FAIL("cannot read '" << path << "': " << std::strerror(err));
    }
    if (n == 0) break;
    crc = ::crc32(crc, buf.data(), static_cast<uInt>(n));
    s.size += static_cast<uint64_t>(n);
  }
  ::close(fd);
  s.crc32 = static_cast<uint32_t>(crc);
  s.known = true;
  return s;
}

bool DataSpec::is_toy() const {
  for (const auto& t : toy_names()) {
    if (t == source) return true;
  }
  return false;
}

void DataSpec::validate() const {
  CUFM_REQUIRE(!source.empty(), "--data is empty: give a toy name (" << toy_list() << ") or a .npy file");
  if (is_toy()) {
    CUFM_REQUIRE(labels.empty(), "--labels '" << labels << "' is for .npy data; the toy '" << source
                                              << "' carries its own labels");
    CUFM_REQUIRE(context.empty(),
                 "--context '" << context << "' is for .npy data; the toy '" << source << "' has no context");
    CUFM_REQUIRE(n >= 1 && n <= (int64_t{1} << 32), "--n-data must be in [1, 2^32], got " << n);
    return;
  }
  CUFM_REQUIRE(fs::path(source).extension() == ".npy",
               "--data '" << source << "' is neither a toy dataset (" << toy_list() << ") nor a .npy file");
  CUFM_REQUIRE(labels.empty() || fs::path(labels).extension() == ".npy",
               "--labels '" << labels << "' is not a .npy file");
  CUFM_REQUIRE(context.empty() || fs::path(context).extension() == ".npy",
               "--context '" << context << "' is not a .npy file");
}

Dataset DataSpec::load() const {
  validate();
  if (is_toy()) return make_toy(source, n, seed);
  return load_npy_dataset(source, labels, 0, context);
}

std::string DataSpec::describe() const {
  json j;
  if (is_toy()) {
    j = {{"kind", "toy"}, {"name", source}, {"n", n}, {"seed", std::to_string(seed)}};
  } else {
    j = {{"kind", "npy"},
         {"data", stamp_json(source_stamp.known ? source_stamp : stamp_file(source))},
         {"labels", nullptr}};
    if (!labels.empty()) j["labels"] = stamp_json(labels_stamp.known ? labels_stamp : stamp_file(labels));
    if (!context.empty())
      j["context"] = stamp_json(context_stamp.known ? context_stamp : stamp_file(context));
  }
  return j.dump();
}

DataSpec DataSpec::parse(const std::string& d, FileStamp* data_stamp, FileStamp* labels_stamp,
                         FileStamp* context_stamp) {
  DataSpec s;
  if (data_stamp) *data_stamp = FileStamp{};
  if (labels_stamp) *labels_stamp = FileStamp{};
  if (context_stamp) *context_stamp = FileStamp{};
  if (!d.empty() && d[0] == '{') {
    json j;
    try {
      j = detail::parse_json_bounded(d);
    } catch (const json::exception&) {
      CUFM_FAIL("the checkpoint's data descriptor is not valid JSON: pass --data");
    }
    CUFM_REQUIRE(j.is_object() && j.contains("kind") && j["kind"].is_string(),
                 "the checkpoint's data descriptor has no kind: pass --data");
    const std::string kind = j["kind"].get<std::string>();
    if (kind == "toy") {
      CUFM_REQUIRE(j.contains("name") && j["name"].is_string() && j.contains("n") &&
                       j["n"].is_number_integer() && j.contains("seed") && j["seed"].is_string(),
                   "the checkpoint's toy data descriptor is malformed: pass --data");
      s.source = j["name"].get<std::string>();
      s.n = j["n"].get<int64_t>();
      try {
        s.seed = std::stoull(j["seed"].get<std::string>());
      } catch (const std::exception&) {
        CUFM_FAIL("the checkpoint's toy data descriptor has a bad seed: pass --data");
      }
      return s;
    }
    CUFM_REQUIRE(kind == "npy", "the checkpoint names data of kind '"
                                    << kind << "', which cufm cannot rebuild: pass --data");
    const FileStamp data = stamp_from_json(j.value("data", json()), "data");
    s.source = data.path;
    if (data_stamp) *data_stamp = data;
    if (j.contains("labels") && !j["labels"].is_null()) {
      const FileStamp lab = stamp_from_json(j["labels"], "labels");
      s.labels = lab.path;
      if (labels_stamp) *labels_stamp = lab;
    }
    if (j.contains("context") && !j["context"].is_null()) {
      const FileStamp ctx = stamp_from_json(j["context"], "context");
      s.context = ctx.path;
      if (context_stamp) *context_stamp = ctx;
    }
    return s;
  }
  // The descriptors of checkpoints written before this format (no stamps).
  if (d.rfind("toy:", 0) == 0) {
    std::stringstream ss(d.substr(4));
    std::string n, seed;
    std::getline(ss, s.source, ':');
    std::getline(ss, n, ':');
    std::getline(ss, seed, ':');
    try {
      s.n = std::stoll(n);
      s.seed = std::stoull(seed);
    } catch (const std::exception&) {
      CUFM_FAIL("the checkpoint names its data as '" << d << "', which cufm cannot read: pass --data");
    }
    return s;
  }
  if (d.rfind("npy:", 0) == 0) {
    const std::string rest = d.substr(4);
    const size_t colon = rest.find(':');
    s.source = rest.substr(0, colon);
    if (colon != std::string::npos) s.labels = rest.substr(colon + 1);
    return s;
  }
  CUFM_FAIL("the checkpoint names its data as '" << d << "', which cufm cannot rebuild: pass --data");
}

std::string spec_text(const DataSpec& spec) {
  std::ostringstream os;
  if (spec.is_toy()) {
    os << "toy '" << spec.source << "' (" << spec.n << " points, seed " << spec.seed << ")";
  } else {
    os << "'" << spec.source << "'" << (spec.labels.empty() ? "" : " with labels '" + spec.labels + "'")
       << (spec.context.empty() ? "" : " with context '" + spec.context + "'");
  }
  return os.str();
}

}  // namespace cufm::cli
