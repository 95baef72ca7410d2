// The time-stamp counter: where a polling worker's time goes (rounds that moved frames against
// rounds that found nothing), for the price of one instruction per round. Counts are TSC cycles,
// the unit DPDK's testpmd --record-core-cycles reports, so the two can be set side by side.
#pragma once

#include <cstdint>
#include <ctime>

namespace iovirt {

// CLOCK_MONOTONIC_RAW in nanoseconds: the clock tsc_hz() is measured against.
inline uint64_t monotonic_raw_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

inline uint64_t tsc_now() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_ia32_rdtsc();
#else
  return monotonic_raw_ns();
#endif
}

// tsc_now() ticks per second, measured once against CLOCK_MONOTONIC_RAW over 20 ms (the first call
// takes that long; later calls return the cached figure). Meaningful where the TSC runs at a
// constant rate (the constant_tsc and nonstop_tsc CPU flags; every x86 host KVM serves today).
uint64_t tsc_hz();

}  // namespace iovirt
