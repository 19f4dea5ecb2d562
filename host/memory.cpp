// See memory.hpp.
#include "host/memory.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "cufm/error.hpp"

namespace cufm::detail {
namespace {

constexpr uint64_t kUnknown = std::numeric_limits<uint64_t>::max();

// The first number in a file ("max" and unreadable files: kUnknown).
uint64_t read_number(const char* path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word.empty() || !std::isdigit(static_cast<unsigned char>(word[0]))) return kUnknown;
  try {
    return std::stoull(word);
  } catch (const std::exception&) {
    return kUnknown;
  }
}

uint64_t mem_available() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, 13, "MemAvailable:") != 0) continue;
    std::istringstream fields(line.substr(13));
    uint64_t kib = 0;
    if (fields >> kib) return mul_sat(kib, 1024);
  }
  return kUnknown;
}

// A counter from a memory.stat file ("inactive_file 123"), 0 when absent.
uint64_t stat_field(const std::string& path, const char* key) {
  std::ifstream in(path);
  std::string k;
  uint64_t v = 0;
  while (in >> k >> v) {
    if (k == key) return v;
  }
  return 0;
}

// The headroom of one cgroup folder: its limit less what it uses that cannot be reclaimed (the
// page cache's inactive files are); kUnknown without a limit.
uint64_t folder_headroom(const std::string& dir, bool v2) {
  const uint64_t limit = read_number((dir + (v2 ? "/memory.max" : "/memory.limit_in_bytes")).c_str());
  if (limit == kUnknown || limit >= (uint64_t{1} << 60)) return kUnknown;  // v1 writes "no limit" as ~2^63
  uint64_t used = read_number((dir + (v2 ? "/memory.current" : "/memory.usage_in_bytes")).c_str());
  if (used == kUnknown) used = 0;
  const uint64_t cache = stat_field(dir + "/memory.stat", v2 ? "inactive_file" : "total_inactive_file");
  used = used > cache ? used - cache : 0;
  return limit > used ? limit - used : 0;
}

// The least headroom of this process's cgroup and its ancestors (v2: the unified hierarchy; v1:
// the memory controller's), found through /proc/self/cgroup; the mount's root when the process's
// own folder is not visible (a container's namespaced view).
uint64_t cgroup_headroom() {
  std::ifstream in("/proc/self/cgroup");
  std::string line, v2_path, v1_path;
  while (std::getline(in, line)) {
    const size_t a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    if (line.compare(0, a, "0") == 0 && controllers.empty()) v2_path = path;
    std::stringstream list(controllers);
    for (std::string c; std::getline(list, c, ',');) {
      if (c == "memory") v1_path = path;
    }
  }
  uint64_t best = kUnknown;
  const auto walk = [&](const std::string& root, std::string path, bool v2) {
    bool seen = false;
    for (;;) {
      const std::string dir = root + (path == "/" ? "" : path);
      std::ifstream probe(dir + (v2 ? "/memory.current" : "/memory.usage_in_bytes"));
      if (probe.good()) {
        seen = true;
        best = std::min(best, folder_headroom(dir, v2));
      }
      if (path.empty() || path == "/") break;
      const size_t slash = path.find_last_of('/');
      path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
    }
    if (!seen) best = std::min(best, folder_headroom(root, v2));
  };
  if (!v2_path.empty()) walk("/sys/fs/cgroup", v2_path, true);
  if (!v1_path.empty()) walk("/sys/fs/cgroup/memory", v1_path, false);
  if (v2_path.empty() && v1_path.empty())
    best = std::min(folder_headroom("/sys/fs/cgroup", true), folder_headroom("/sys/fs/cgroup/memory", false));
  return best;
}

// CUFM_MEMORY_LIMIT: "1073741824", "512M", "2G".
uint64_t environment_cap() {
  const char* v = std::getenv("CUFM_MEMORY_LIMIT");
  if (v == nullptr || *v == '\0') return kUnknown;
  const std::string text = v;
  size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  const std::string suffix = text.substr(digits);
  uint64_t scale = 1;
  if (suffix == "K" || suffix == "k") scale = uint64_t{1} << 10;
  if (suffix == "M" || suffix == "m") scale = uint64_t{1} << 20;
  if (suffix == "G" || suffix == "g") scale = uint64_t{1} << 30;
  CUFM_REQUIRE(
      digits > 0 && digits <= 19 && (suffix.empty() || scale > 1),
      "CUFM_MEMORY_LIMIT must be a number of bytes with an optional K, M or G suffix, got '" << text << "'");
  return mul_sat(std::stoull(text.substr(0, digits)), scale);
}

std::string mib(uint64_t bytes) {
  std::ostringstream os;
  if (bytes >= (uint64_t{10} << 30)) {
    os.setf(std::ios::fixed);
    os.precision(1);
    os << static_cast<double>(bytes) / static_cast<double>(uint64_t{1} << 30) << " GiB";
  } else {
    os << (bytes + (uint64_t{1} << 20) - 1) / (uint64_t{1} << 20) << " MiB";
  }
  return os.str();
}

}  // namespace

uint64_t mul_sat(uint64_t a, uint64_t b) {
  if (a != 0 && b > kUnknown / a) return kUnknown;
  return a * b;
}

uint64_t add_sat(uint64_t a, uint64_t b) {
  return a > kUnknown - b ? kUnknown : a + b;
}

uint64_t available_memory() {
  uint64_t avail = mem_available();
  const uint64_t cg = cgroup_headroom();
  if (cg < avail) avail = cg;
  const uint64_t cap = environment_cap();
  return cap < avail ? cap : avail;
}

void require_memory(uint64_t need, const std::string& what, const std::string& advice) {
  const uint64_t avail = available_memory();
  if (need <= avail) return;
  CUFM_FAIL(what << " needs about " << (need == kUnknown ? std::string("more than 2^64 bytes") : mib(need))
                 << " of memory but only " << mib(avail) << " are available; " << advice);
}

}  // namespace cufm::detail
