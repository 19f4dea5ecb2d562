// How the CPU backend's threads wait (cufm/device.hpp): GNU OpenMP's spin count, bounded for a
// program by re-executing it with GOMP_SPINCOUNT set, since libgomp reads its environment once, in
// its load-time constructor, before any of the program's code runs.
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "cufm/device.hpp"

namespace cufm {

namespace {
// Measured on 2 cores with one kept busy by another process (200 steps of a 64x64 model; the
// numbers in docs/CPU.md's "CPU threads" section): the default spin count 1.15 s, 1000 spins 0.16 s,
// against 0.115 s and 0.122 s on the quiet machine.
constexpr const char* kSpinCount = "1000";
constexpr const char* kMarker = "CUFM_SPIN_BOUNDED";  // set across the re-execution: never loop
}  // namespace

void bound_cpu_thread_spinning(int argc, char** argv) {
#if defined(__linux__)
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT") || std::getenv(kMarker)) return;
  if (argc < 1 || !argv || !argv[0]) return;
  if (::setenv("GOMP_SPINCOUNT", kSpinCount, 0) != 0 || ::setenv(kMarker, "1", 1) != 0) return;
  ::execv("/proc/self/exe", argv);
  // exec failed (no /proc, say): carry on with the default policy, and leave the environment as it
  // was found for the program's own children.
  ::unsetenv("GOMP_SPINCOUNT");
  ::unsetenv(kMarker);
#else
  (void)argc, (void)argv;
#endif
}

std::string cpu_thread_wait_policy() {
  if (const char* p = std::getenv("OMP_WAIT_POLICY")) return std::string("OMP_WAIT_POLICY=") + p;
  if (const char* s = std::getenv("GOMP_SPINCOUNT")) return std::string("GOMP_SPINCOUNT=") + s;
  return "GNU OpenMP's default (spin 300,000 times, then sleep)";
}

}  // namespace cufm
