// The lock a `cufm train` run holds on its output folder (an advisory flock on <out>/.cufm.lock,
// which records the holder's pid), so that two runs never write one folder's checkpoint in turns.
// Creating the lock file is also the first write into the folder: a read-only or missing parent
// folder is reported before any training.
#pragma once

#include <string>

namespace cufm::cli {

class RunLock {
 public:
  // Creates the folder if needed and takes the lock; throws cufm::Error naming the other run's pid
  // when another process holds it, or why the folder cannot be written.
  explicit RunLock(const std::string& folder);
  // Releases the lock. A folder this lock created is removed again, with the lock file, unless
  // keep() was called: a run that failed before writing anything leaves nothing behind. (In a
  // folder that existed, the lock file stays: removing it would race with a new holder.)
  ~RunLock();
  void keep() { keep_ = true; }
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

  static constexpr const char* kFileName = ".cufm.lock";

 private:
  int fd_ = -1;
  std::string folder_;
  bool created_ = false, keep_ = false;
};

}  // namespace cufm::cli
