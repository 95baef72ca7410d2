#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "iovirt/core/tsc.hpp"

namespace iovirt {
namespace {

// The calibrated rate turns a later interval's TSC count into the same length the kernel's clock
// gives it (both clocks read over one interval, so a loaded machine stretches both alike).
TEST(Tsc, CountsAtTheCalibratedRate) {
  const uint64_t hz = tsc_hz();
  ASSERT_GT(hz, 0u);
  EXPECT_EQ(tsc_hz(), hz) << "measured once";
  const uint64_t n0 = monotonic_raw_ns();
  const uint64_t t0 = tsc_now();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const uint64_t t1 = tsc_now();
  const uint64_t n1 = monotonic_raw_ns();
  const double by_tsc = static_cast<double>(t1 - t0) / static_cast<double>(hz);
  const double by_clock = static_cast<double>(n1 - n0) / 1e9;
  EXPECT_NEAR(by_tsc, by_clock, by_clock * 0.01);
}

}  // namespace
}  // namespace iovirt
