// The fuzz targets' input as a file: the readers under test take paths. One file per process,
// rewritten for each input (fuzzers run one input at a time).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace cufm::fuzz {

// The path, in a private folder (mkdtemp: a name planted in /tmp is never opened), removed again
// with its folder when the process exits.
struct InputFile {
  std::string dir, path;
  ~InputFile() {
    ::unlink(path.c_str());
    ::rmdir(dir.c_str());
  }
};

inline const std::string& input_path(const char* suffix) {
  static const InputFile file = [&] {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/cufm-fuzz-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) std::abort();
    return InputFile{templ, templ + "/input" + suffix};
  }();
  return file.path;
}

// Writes the bytes to the process's input file and returns its path.
inline const std::string& as_file(const uint8_t* data, size_t size, const char* suffix) {
  const std::string& path = input_path(suffix);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) std::abort();
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) std::abort();
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return path;
}

}  // namespace cufm::fuzz
