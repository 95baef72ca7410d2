// iovirt-cpu-distance: how long one cache line takes to go from one CPU to another and back,
// the cost that decides a vhost-user ring's rate (the driver and the back-end each write lines
// the other reads). deploy/bench/vhost-net-bench.sh prints it with every run: on a virtual
// machine whose vCPUs the host moves around, the same two vCPUs can be 60 ns or 340 ns apart
// from one minute to the next, and every figure moves with it.
//
//   iovirt-cpu-distance [--cpus A,B] [--rounds N]
// Prints the median of 5 measurements of N round trips, in nanoseconds per round trip.
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

namespace {

bool pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  return pthread_setaffinity_np(pthread_self(), sizeof s, &s) == 0;
}

struct alignas(64) Line {
  std::atomic<uint64_t> v{0};
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "iovirt-cpu-distance: %s\nusage: iovirt-cpu-distance [--cpus A,B] [--rounds N]\n",
               why);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  int a = 0, b = 1;
  uint64_t rounds = 100000;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--cpus" && i + 1 < argc) {
      if (std::sscanf(argv[++i], "%d,%d", &a, &b) != 2 || a < 0 || b < 0 || a == b)
        usage("--cpus takes two different CPU numbers, e.g. 0,1");
    } else if (arg == "--rounds" && i + 1 < argc) {
      rounds = std::strtoull(argv[++i], nullptr, 10);
      if (rounds == 0 || rounds > 100000000) usage("--rounds takes 1..100000000");
    } else {
      usage(("unknown argument '" + arg + "'").c_str());
    }
  }
  static Line line;
  std::array<double, 5> ns{};
  for (double& out : ns) {
    line.v.store(0, std::memory_order_relaxed);
    std::atomic<bool> pinned_ok{true};
    std::thread peer([&] {
      if (!pin(b)) pinned_ok = false;
      for (uint64_t r = 0; r < rounds && pinned_ok; ++r) {
        while (line.v.load(std::memory_order_acquire) != 2 * r + 1 && pinned_ok) {
        }
        line.v.store(2 * r + 2, std::memory_order_release);
      }
    });
    if (!pin(a)) pinned_ok = false;
    const auto t0 = std::chrono::steady_clock::now();
    for (uint64_t r = 0; r < rounds && pinned_ok; ++r) {
      line.v.store(2 * r + 1, std::memory_order_release);
      while (line.v.load(std::memory_order_acquire) != 2 * r + 2 && pinned_ok) {
      }
    }
    const auto t1 = std::chrono::steady_clock::now();
    peer.join();
    if (!pinned_ok) {
      std::fprintf(stderr,
                   "iovirt-cpu-distance: cannot pin threads to CPUs %d and %d; pick two CPUs this "
                   "process may run on (nproc, taskset -p $$)\n",
                   a, b);
      return 1;
    }
    out = std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(rounds);
  }
  std::sort(ns.begin(), ns.end());
  std::printf("%.0f\n", ns[2]);
  return 0;
}
