// cuFM reports every failure as a cufm::Error: what failed, where, and what to do about it.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace cufm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
[[noreturn]] void throw_error(const char* file, int line, const std::string& message);
}  // namespace detail

}  // namespace cufm

// Throws cufm::Error with the file, the line and a message built with operator<<.
#define CUFM_FAIL(msg_stream)                                         \
  do {                                                                \
    std::ostringstream cufm_fail_os_;                                 \
    cufm_fail_os_ << msg_stream;                                      \
    ::cufm::detail::throw_error(__FILE__, __LINE__, cufm_fail_os_.str()); \
  } while (0)

// Checks a precondition; the message names the argument and its value.
#define CUFM_REQUIRE(cond, msg_stream) \
  do {                                 \
    if (!(cond)) CUFM_FAIL(msg_stream);\
  } while (0)
