// Host memory checks before large allocations (internal): a run that cannot fit is refused with
// the figure it needs and the memory available, instead of failing with std::bad_alloc (or being
// killed) halfway through.
#pragma once

#include <cstdint>
#include <string>

namespace cufm::detail {

// Bytes this process can still allocate: the least of /proc/meminfo's MemAvailable and the cgroup's
// limit less its usage (v2 or v1); UINT64_MAX when neither can be read. The environment variable
// CUFM_MEMORY_LIMIT (bytes, or with a K/M/G suffix) lowers it: a cap for users who share a machine,
// and what the tests use to exercise these checks.
uint64_t available_memory();

// Throws cufm::Error "<what> needs about N MiB of memory but only M MiB are available; <advice>"
// when need > available_memory().
void require_memory(uint64_t need, const std::string& what, const std::string& advice);

// a * b and a + b that stop at UINT64_MAX instead of wrapping: estimates of absurd requests stay
// absurd.
uint64_t mul_sat(uint64_t a, uint64_t b);
uint64_t add_sat(uint64_t a, uint64_t b);

}  // namespace cufm::detail
