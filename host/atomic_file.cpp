// See atomic_file.hpp.
#include "host/atomic_file.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>
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

// ".<name>.cufm-tmp.": the name cut to 200 bytes so that the whole temporary name (prefix, pid,
// random part) stays within NAME_MAX (255) for any valid target name.
std::string prefix_of(const std::string& name) {
  return "." + name.substr(0, 200) + ".cufm-tmp.";
}

const char* kind_of(mode_t mode) {
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device node";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

bool process_alive(long pid) {
  return pid == static_cast<long>(::getpid()) || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH;
}

// Removes this target's temporaries whose writer is gone: regular files of ours named
// <prefix><pid>.<random> that no process holds locked (a writer holds an exclusive flock on its
// temporary from creation to the end) and whose pid names no live process here. Both must agree,
// so neither pid reuse nor a writer in another pid namespace loses a live temporary.
void remove_stale_temporaries(const Split& s) {
  const std::string prefix = prefix_of(s.name);
  DIR* d = ::opendir(s.dir.c_str());
  if (d == nullptr) return;
  const int dfd = ::dirfd(d);
  while (const dirent* e = ::readdir(d)) {
    const std::string entry = e->d_name;
    if (entry.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string rest = entry.substr(prefix.size());
    char* end = nullptr;
    const long pid = std::strtol(rest.c_str(), &end, 10);
    if (end == rest.c_str() || *end != '.' || pid <= 0 || process_alive(pid)) continue;
    // O_NOFOLLOW: a link is never opened; O_NONBLOCK: a FIFO never blocks the open.
    const int fd = ::openat(dfd, entry.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st;
    const bool ours = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid();
    if (ours && ::flock(fd, LOCK_EX | LOCK_NB) == 0) ::unlinkat(dfd, entry.c_str(), 0);
    ::close(fd);
  }
  ::closedir(d);
}

// Six characters of [A-Za-z0-9], different on every call in the process.
std::string random_suffix() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t seed = std::random_device{}();
  std::mt19937_64 gen(seed ^ (counter.fetch_add(1) * 0x9E3779B97F4A7C15ull));
  static const char kChars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string s(6, 'x');
  for (char& c : s) c = kChars[gen() % 62];
  return s;
}

}  // namespace

std::string temp_prefix_for(const std::string& path) {
  return prefix_of(split_path(path).name);
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
    const int err = errno;
    CUFM_REQUIRE(err == ENOENT, what << " '" << path << "': " << std::strerror(err));
  }
}

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  require_writable_target(path, "cannot write");
  const Split s = split_path(path);
  remove_stale_temporaries(s);
  // An existing target keeps its permissions; a new file gets what open(..., 0666) and the umask give.
  struct stat target;
  const bool replacing = ::lstat(path.c_str(), &target) == 0;
  const std::string stem =
      s.dir + "/" + prefix_of(s.name) + std::to_string(static_cast<long>(::getpid())) + ".";
  // O_EXCL | O_NOFOLLOW: creation fails on any existing name, a planted link included; a fresh
  // random name is tried then.
  for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
    const std::string candidate = stem + random_suffix();
    fd_ = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd_ >= 0) {
      temp_ = candidate;
    } else if (errno != EEXIST) {
      break;
    }
  }
  if (fd_ < 0) {
    const int err = errno;
    CUFM_FAIL("cannot write '" << path_ << "': creating a temporary file in '" << s.dir << "' failed ("
                               << std::strerror(err) << "); check that the folder exists and is writable");
  }
  (void)::flock(fd_, LOCK_EX);  // held until the descriptor closes: marks the temporary as live
  if (replacing) (void)::fchmod(fd_, target.st_mode & 07777);
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
  // Closing releases the temporary's lock; this process being alive still protects it.
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("closing failed", errno);
  // The target may have changed since the constructor looked: look again just before replacing.
  // (rename() replaces a link at the target rather than following it, so the gap does no harm.)
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
