// Writes a file whole or not at all, and never through a planted link (internal).
//
// - The target must be absent or a regular file: a symlink, FIFO, device node or folder given as an
//   output is refused, never replaced.
// - The bytes go to a temporary ".<name>.cufm-tmp.<pid>.<random>" in the target's folder, created
//   with O_CREAT | O_EXCL | O_NOFOLLOW, so a link planted at any name is never followed, and on the
//   target's filesystem, so the final rename is atomic. A new file's mode follows the umask, as a
//   plain create's would; a replaced file keeps its mode.
// - commit() flushes the temporary to disk, renames it over the target and then syncs the folder,
//   so after a crash either the old file or the new one is there, complete.
// - Any failure (or destruction without commit) removes the temporary; the target is untouched.
// - Temporaries that killed runs left beside the target are removed when the next write of that
//   target starts: those that no process holds locked (a writer holds a flock on its temporary)
//   and whose pid is gone.
#pragma once

#include <cstddef>
#include <string>

namespace cufm::detail {

class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  void write(const void* data, size_t bytes);
  void commit();

  const std::string& temp_path() const { return temp_; }

 private:
  [[noreturn]] void fail(const std::string& what, int err);

  std::string path_;
  std::string temp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Refuses (cufm::Error) an output path that exists and is not a regular file, naming what it is;
// `what` names the output ("--out", "the checkpoint"). Used before a run's work starts.
void require_writable_target(const std::string& path, const std::string& what);

// The prefix of this target's temporaries, ".<name>.cufm-tmp." (the fault tests look for them).
std::string temp_prefix_for(const std::string& path);

}  // namespace cufm::detail
