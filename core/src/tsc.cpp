#include "iovirt/core/tsc.hpp"

#include <ctime>

namespace iovirt {

namespace {

uint64_t measure() {
#if defined(__x86_64__) || defined(__i386__)
  constexpr uint64_t kWindowNs = 20'000'000;
  const uint64_t n0 = monotonic_raw_ns();
  const uint64_t t0 = tsc_now();
  uint64_t n1 = n0;
  while (n1 - n0 < kWindowNs) {
    const timespec nap{0, 1'000'000};
    ::nanosleep(&nap, nullptr);
    n1 = monotonic_raw_ns();
  }
  const uint64_t t1 = tsc_now();
  return static_cast<uint64_t>(static_cast<double>(t1 - t0) * 1e9 / static_cast<double>(n1 - n0));
#else
  return 1000000000ULL;  // tsc_now() counts nanoseconds here
#endif
}

}  // namespace

uint64_t tsc_hz() {
  static const uint64_t hz = measure();
  return hz;
}

}  // namespace iovirt
