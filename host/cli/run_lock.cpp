// See run_lock.hpp.
#include "host/cli/run_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

#include "cufm/error.hpp"

namespace cufm::cli {

RunLock::RunLock(const std::string& folder) : folder_(folder) {
  namespace fs = std::filesystem;
  std::error_code ec;
  struct stat st;
  if (::stat(folder.c_str(), &st) == 0) {  // a link to a folder is the user's folder
    CUFM_REQUIRE(S_ISDIR(st.st_mode), "--out '" << folder << "' exists and is not a folder");
  } else {
    created_ = fs::create_directories(folder, ec);
    CUFM_REQUIRE(!ec, "cannot create the output folder '" << folder << "': " << ec.message());
  }
  const std::string path = folder + "/" + kFileName;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  CUFM_REQUIRE(fd_ >= 0, "cannot write to the output folder '" << folder << "': " << std::strerror(errno));
  // Truncated below: it must be a lock file of ours, not a hard link to another file.
  struct stat lock_st;
  if (::fstat(fd_, &lock_st) != 0 || !S_ISREG(lock_st.st_mode) || lock_st.st_nlink != 1 ||
      lock_st.st_uid != ::geteuid()) {
    ::close(fd_);
    fd_ = -1;
    CUFM_FAIL("'" << path
                  << "' is not a lock file cufm made (a link, or another user's file): remove it, or "
                     "choose another --out");
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char buf[32] = {};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    ::close(fd_);
    fd_ = -1;
    CUFM_REQUIRE(err != EWOULDBLOCK,
                 "another cufm train"
                     << (n > 0 ? " (pid " + std::string(buf, static_cast<size_t>(n)) + ")" : "")
                     << " is writing to '" << folder << "': wait for it, or choose another --out");
    CUFM_FAIL("cannot lock the output folder '" << folder << "': " << std::strerror(err));
  }
  const std::string pid = std::to_string(static_cast<long>(::getpid()));
  if (::ftruncate(fd_, 0) != 0 ||
      ::pwrite(fd_, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    CUFM_FAIL("cannot write to the output folder '" << folder << "': " << std::strerror(err));
  }
}

RunLock::~RunLock() {
  if (fd_ < 0) return;
  if (created_ && !keep_) {
    ::unlink((folder_ + "/" + kFileName).c_str());
    ::rmdir(folder_.c_str());  // fails, harmlessly, if anything else was put there
  }
  ::close(fd_);  // releases the flock
}

}  // namespace cufm::cli
