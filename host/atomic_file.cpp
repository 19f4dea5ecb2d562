// See atomic_file.hpp.
#include "host/atomic_file.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cufm/error.hpp"

namespace cufm::detail {
namespace {

struct Split {
  std::string dir;   // "." when the path has no folder
  std::string name;  // the last component
};

Split split_path(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return {".", path};
  return {slash == 0 ? "/" : path.substr(0, slash), path.substr(slash + 1)};
}

const char* kind_of(mode_t mode) {
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device node";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// Removes temporaries of this target whose writer is gone: regular files of ours named
// <prefix><pid>.<random> where no process <pid> exists. A live pid (even an unrelated process that
// reused it) keeps its file: deleting less is the safe side.
void remove_stale_temporaries(const Split& s) {
  const std::string prefix = "." + s.name + ".cufm-tmp.";
  DIR* d = ::opendir(s.dir.c_str());
  if (d == nullptr) return;
  std::vector<std::string> stale;
  while (const dirent* e = ::readdir(d)) {
    const std::string entry = e->d_name;
    if (entry.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string rest = entry.substr(prefix.size());
    const size_t dot = rest.find('.');
    if (dot == std::string::npos || dot == 0) continue;
    char* end = nullptr;
    const long pid = std::strtol(rest.c_str(), &end, 10);
    if (end != rest.c_str() + dot || pid <= 0 || pid == static_cast<long>(::getpid())) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive, or not ours to judge
    stale.push_back(s.dir + "/" + entry);
  }
  ::closedir(d);
  for (const std::string& f : stale) {
    struct stat st;
    if (::lstat(f.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid()) ::unlink(f.c_str());
  }
}

mode_t current_umask() {
  const mode_t m = ::umask(0);
  ::umask(m);
  return m;
}

}  // namespace

std::string temp_prefix_for(const std::string& path) {
  return "." + split_path(path).name + ".cufm-tmp.";
}

void require_writable_target(const std::string& path, const std::string& what) {
  CUFM_REQUIRE(!path.empty(), what << ": the path is empty");
  const Split s = split_path(path);
  CUFM_REQUIRE(!s.name.empty() && s.name != "." && s.name != "..",
               what << " '" << path << "' names a folder; give a file name");
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    CUFM_REQUIRE(S_ISREG(st.st_mode), what << " '" << path << "' exists and is " << kind_of(st.st_mode)
                                           << "; cuFM replaces only regular files: choose another path");
  } else {
    CUFM_REQUIRE(errno == ENOENT, what << " '" << path << "': " << std::strerror(errno));
  }
}

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  require_writable_target(path, "cannot write");
  const Split s = split_path(path);
  remove_stale_temporaries(s);
  std::string templ =
      s.dir + "/." + s.name + ".cufm-tmp." + std::to_string(static_cast<long>(::getpid())) + ".XXXXXX";
  fd_ = ::mkstemp(templ.data());  // O_CREAT | O_EXCL: fails on any existing name, a link included
  if (fd_ < 0) {
    const int err = errno;
    CUFM_FAIL("cannot write '" << path_ << "': creating a temporary file in '" << s.dir << "' failed ("
                               << std::strerror(err) << "); check that the folder exists and is writable");
  }
  temp_ = templ;
  (void)::fchmod(fd_, 0666 & ~current_umask());  // mkstemp's 0600 -> what open(..., 0666) would give
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_.empty()) ::unlink(temp_.c_str());
}

void AtomicFile::write(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("writing failed", errno);
    }
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) fail("flushing to disk failed", errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("closing failed", errno);
  // The target may have changed since the constructor looked: look again just before replacing.
  require_writable_target(path_, "cannot write");
  if (std::rename(temp_.c_str(), path_.c_str()) != 0)
    fail("renaming the temporary over the target failed", errno);
  committed_ = true;
  // The rename is durable once the folder's entry is on disk.
  const int dir = ::open(split_path(path_).dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    (void)::fsync(dir);
    ::close(dir);
  }
}

void AtomicFile::fail(const std::string& what, int err) {
  CUFM_FAIL("cannot write '" << path_ << "': " << what << " (" << std::strerror(err)
                             << "); the existing file, if any, is unchanged");
}

}  // namespace cufm::detail
