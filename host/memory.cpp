// See memory.hpp.
#include "host/memory.hpp"

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

uint64_t cgroup_headroom() {
  uint64_t limit = read_number("/sys/fs/cgroup/memory.max");  // v2
  uint64_t used = read_number("/sys/fs/cgroup/memory.current");
  if (limit == kUnknown) {
    limit = read_number("/sys/fs/cgroup/memory/memory.limit_in_bytes");  // v1
    used = read_number("/sys/fs/cgroup/memory/memory.usage_in_bytes");
  }
  if (limit == kUnknown || limit >= (uint64_t{1} << 60)) return kUnknown;  // v1 writes "no limit" as ~2^63
  if (used == kUnknown) used = 0;
  return limit > used ? limit - used : 0;
}

// CUFM_MEMORY_LIMIT: "1073741824", "512M", "2G".
uint64_t environment_cap() {
  const char* v = std::getenv("CUFM_MEMORY_LIMIT");
  if (v == nullptr || *v == '\0') return kUnknown;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v, &end, 10);
  uint64_t scale = 1;
  if (end && *end) {
    switch (std::toupper(static_cast<unsigned char>(*end))) {
      case 'K':
        scale = uint64_t{1} << 10;
        break;
      case 'M':
        scale = uint64_t{1} << 20;
        break;
      case 'G':
        scale = uint64_t{1} << 30;
        break;
      default:
        CUFM_FAIL("CUFM_MEMORY_LIMIT must be a number of bytes with an optional K, M or G suffix, got '"
                  << v << "'");
    }
  }
  CUFM_REQUIRE(
      end != v,
      "CUFM_MEMORY_LIMIT must be a number of bytes with an optional K, M or G suffix, got '" << v << "'");
  return mul_sat(n, scale);
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
