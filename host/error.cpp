#include "cufm/error.hpp"

#include <cstring>

namespace cufm::detail {

void throw_error(const char* file, int line, const std::string& message) {
  const char* base = std::strrchr(file, '/');
  throw Error(message, std::string(base ? base + 1 : file) + ":" + std::to_string(line));
}

}  // namespace cufm::detail
