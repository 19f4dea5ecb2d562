// Writes a file whole or not at all: the bytes go to "<path>.tmp.<pid>" in the target's folder
// (so the final rename stays on one filesystem and is atomic), are flushed to disk, and only then
// replace the target. Any failure removes the temporary and leaves an existing target untouched.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "cufm/error.hpp"

namespace cufm::detail {

class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path)
      : path_(path), temp_(path + ".tmp." + std::to_string(static_cast<long>(::getpid()))) {
    CUFM_REQUIRE(!path.empty(), "cannot write a file with an empty path");
    file_ = std::fopen(temp_.c_str(), "wb");
    CUFM_REQUIRE(file_ != nullptr, "cannot write '" << path_ << "': creating '" << temp_ << "' failed ("
                                                    << std::strerror(errno)
                                                    << "); check that the folder exists and is writable");
  }

  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // An uncommitted file (an exception on the way) is discarded; the target was never touched.
  ~AtomicFile() {
    if (file_ != nullptr) std::fclose(file_);
    if (!committed_) std::remove(temp_.c_str());
  }

  void write(const void* data, size_t bytes) {
    if (bytes == 0) return;
    if (std::fwrite(data, 1, bytes, file_) != bytes) {
      fail("writing " + std::to_string(bytes) + " bytes failed");
    }
  }

  // Flushes to disk and renames over the target.
  void commit() {
    if (std::fflush(file_) != 0) fail("flushing failed");
    if (::fsync(::fileno(file_)) != 0) fail("fsync failed");
    std::FILE* f = file_;
    file_ = nullptr;
    if (std::fclose(f) != 0) fail("closing failed");
    if (std::rename(temp_.c_str(), path_.c_str()) != 0) fail("renaming the temporary over the target failed");
    committed_ = true;
  }

  const std::string& temp_path() const { return temp_; }

 private:
  [[noreturn]] void fail(const std::string& what) {
    const int err = errno;
    CUFM_FAIL("cannot write '" << path_ << "': " << what << " (" << std::strerror(err)
                               << "); the existing file, if any, is unchanged");
  }

  std::string path_;
  std::string temp_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

}  // namespace cufm::detail
