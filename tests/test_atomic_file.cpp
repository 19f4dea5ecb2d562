// Writing files safely (host/atomic_file.hpp): never through a planted link, never over what is not
// a regular file, never a torn target, and no temporaries left by dead runs.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "cufm/cufm.hpp"
#include "host/atomic_file.hpp"
#include "test_util.hpp"

namespace {

using cufm::test::error_of;
using cufm::test::read_bytes;
using cufm::test::TempDir;
using cufm::test::write_bytes;
using ::testing::HasSubstr;

bool is_link(const std::string& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
}

// The old scheme named the temporary "<path>.tmp.<pid>" and opened it with fopen("wb"): a link
// planted there made cuFM overwrite the link's target. The temporary is now created with O_EXCL
// under a random name, so no planted name is ever opened.
TEST(AtomicFile, PlantedLinksAreNeverFollowed) {
  TempDir dir;
  const std::string victim = dir.file("victim.txt"), out = dir.file("out.npy");
  write_bytes(victim, "precious");
  const std::string planted = out + ".tmp." + std::to_string(static_cast<long>(::getpid()));
  ASSERT_EQ(0, ::symlink(victim.c_str(), planted.c_str()));
  const std::vector<float> x = {1.0f, 2.0f, 3.0f};
  cufm::write_npy(out, x.data(), {3});
  EXPECT_EQ(read_bytes(victim), "precious");
  EXPECT_EQ(cufm::read_npy(out).values.size(), 3u);
  EXPECT_TRUE(is_link(planted));
  // The temporary itself is a fresh regular file in the target's folder, never a link.
  {
    cufm::detail::AtomicFile f(dir.file("t.bin"));
    struct stat st;
    ASSERT_EQ(0, ::lstat(f.temp_path().c_str(), &st));
    EXPECT_TRUE(S_ISREG(st.st_mode));
    EXPECT_THAT(f.temp_path(), HasSubstr("/.t.bin.cufm-tmp."));
  }
  EXPECT_EQ(::access(dir.file("t.bin").c_str(), F_OK), -1);  // never committed: nothing written
}

// A symlink, FIFO or folder given as the output is refused and left as it is.
TEST(AtomicFile, SpecialTargetsAreRefusedNotReplaced) {
  TempDir dir;
  const std::string victim = dir.file("victim.txt");
  write_bytes(victim, "precious");
  const std::vector<float> x = {1.0f};
  const std::string link = dir.file("link.npy");
  ASSERT_EQ(0, ::symlink(victim.c_str(), link.c_str()));
  EXPECT_THAT(error_of([&] { cufm::write_npy(link, x.data(), {1}); }), HasSubstr("is a symbolic link"));
  EXPECT_TRUE(is_link(link));
  EXPECT_EQ(read_bytes(victim), "precious");
  const std::string fifo = dir.file("fifo.npy");
  ASSERT_EQ(0, ::mkfifo(fifo.c_str(), 0600));
  EXPECT_THAT(error_of([&] { cufm::write_npy(fifo, x.data(), {1}); }), HasSubstr("is a FIFO"));
  struct stat st;
  ASSERT_EQ(0, ::lstat(fifo.c_str(), &st));
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  // A device node: /dev/null is one on every Linux machine.
  EXPECT_THAT(error_of([] { cufm::detail::require_writable_target("/dev/null", "--out"); }),
              HasSubstr("is a device node"));
}

// A killed run leaves its temporary; the next write of that target removes it. Never removed: a
// temporary whose writer lives (its pid, and the flock it holds), a planted link with the same
// name pattern (nor its target), another target's temporary.
TEST(AtomicFile, TemporariesOfDeadRunsAreRemoved) {
  TempDir dir;
  const std::string target = dir.file("c.safetensors");
  const std::string prefix = cufm::detail::temp_prefix_for(target);
  const pid_t dead = ::fork();
  ASSERT_GE(dead, 0);
  if (dead == 0) ::_exit(0);
  ASSERT_EQ(dead, ::waitpid(dead, nullptr, 0));  // its pid now names no process
  // A live writer: a child holding its temporary open and locked until told to go. Two pipes
  // (ready: child to parent; go: parent to child), each end closed where it is not used, so a
  // child that dies early gives the parent end-of-file, never a hang.
  int ready[2], go[2];
  ASSERT_EQ(0, ::pipe(ready));
  ASSERT_EQ(0, ::pipe(go));
  const pid_t writer = ::fork();
  ASSERT_GE(writer, 0);
  const std::string live_named =
      dir.file(prefix + std::to_string(writer > 0 ? writer : ::getpid()) + ".XyZ789");
  if (writer == 0) {
    ::close(ready[0]);
    ::close(go[1]);
    const int fd = ::open(live_named.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || ::flock(fd, LOCK_EX) != 0) ::_exit(1);
    char c;
    if (::write(ready[1], "r", 1) != 1) ::_exit(1);
    (void)::read(go[0], &c, 1);  // until the parent writes, or closes its end
    ::_exit(0);
  }
  ::close(ready[1]);
  ::close(go[0]);
  char r = 0;
  ASSERT_EQ(1, ::read(ready[0], &r, 1)) << "the writer child did not start";
  ::close(ready[0]);
  const std::string stale = dir.file(prefix + std::to_string(dead) + ".AbC123");
  const std::string other = dir.file(".other.cufm-tmp." + std::to_string(dead) + ".AbC123");
  const std::string victim = dir.file("victim.txt");
  const std::string link = dir.file(prefix + std::to_string(dead) + ".LiNk00");
  write_bytes(stale, std::string(1000, 'x'));
  write_bytes(other, std::string(1000, 'x'));
  write_bytes(victim, "precious");
  ASSERT_EQ(0, ::symlink(victim.c_str(), link.c_str()));
  const std::vector<float> x = {1.0f};
  cufm::write_npy(target, x.data(), {1});
  ::close(go[1]);  // the child reads end-of-file and exits
  int status = 0;
  ASSERT_EQ(writer, ::waitpid(writer, &status, 0));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(::access(stale.c_str(), F_OK), -1) << "a dead run's temporary stayed";
  EXPECT_EQ(::access(live_named.c_str(), F_OK), 0) << "a live writer's temporary was removed";
  EXPECT_EQ(::access(other.c_str(), F_OK), 0) << "another target's temporary was removed";
  EXPECT_TRUE(is_link(link)) << "a link with a temporary's name was removed";
  EXPECT_EQ(read_bytes(victim), "precious");
}

// A replaced file keeps its permissions (a private 0600 checkpoint stays private).
TEST(AtomicFile, ReplacedFilesKeepTheirMode) {
  TempDir dir;
  const std::string f = dir.file("c.npy");
  write_bytes(f, "old");
  ASSERT_EQ(0, ::chmod(f.c_str(), 0600));
  const std::vector<float> x = {1.0f};
  cufm::write_npy(f, x.data(), {1});
  struct stat st;
  ASSERT_EQ(0, ::stat(f.c_str(), &st));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(AtomicFile, NewFilesFollowTheUmask) {
  TempDir dir;
  const mode_t old = ::umask(022);
  const std::vector<float> x = {1.0f};
  cufm::write_npy(dir.file("a.npy"), x.data(), {1});
  ::umask(old);
  struct stat st;
  ASSERT_EQ(0, ::stat(dir.file("a.npy").c_str(), &st));
  EXPECT_EQ(st.st_mode & 0777, 0644u);
}

}  // namespace
