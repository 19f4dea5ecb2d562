// cuFM reports every failure as a cufm::Error: what failed, where, and what to do about it.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace cufm {

// what() is the message followed by the source location ("... [npy.cpp:300]"), for logs and bug
// reports; message() is the sentence alone, for a user (the CLI prints it, and the location only
// with --verbose).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message), message_(message) {}
  Error(const std::string& message, const std::string& location)
      : std::runtime_error(location.empty() ? message : message + " [" + location + "]"),
        message_(message),
        location_(location) {}
  const std::string& message() const { return message_; }
  const std::string& location() const { return location_; }  // "file.cpp:line", or empty

 private:
  std::string message_;
  std::string location_;
};

namespace detail {
[[noreturn]] void throw_error(const char* file, int line, const std::string& message);
}  // namespace detail

}  // namespace cufm

// Throws cufm::Error with the file, the line and a message built with operator<<.
#define CUFM_FAIL(msg_stream)                                             \
  do {                                                                    \
    std::ostringstream cufm_fail_os_;                                     \
    cufm_fail_os_ << msg_stream;                                          \
    ::cufm::detail::throw_error(__FILE__, __LINE__, cufm_fail_os_.str()); \
  } while (0)

// Checks a precondition; the message names the argument and its value.
#define CUFM_REQUIRE(cond, msg_stream)  \
  do {                                  \
    if (!(cond)) CUFM_FAIL(msg_stream); \
  } while (0)
