// Device-side cost of the packed virtqueue: pop() + push() + needs_notification() of one chain,
// with the DriverPackedQueue playing the guest on a memfd GuestMemory, on one core. Same cases
// and method as bench_split_queue.cpp, so the figures compare directly.
//
// One benchmark iteration is a batch of kBatch chains. Before each batch, outside the timed
// region, the driver reaps the used descriptors and posts kBatch fresh chains; the timed region
// is only the device work (manual timing with steady_clock). The ring (size 256) wraps every
// 256 / (kBatch x slots per chain) batches, so both wrap counters flip all the time.
//
// Reported: items_per_second = chains per second of device time, ns_per_chain = device
// nanoseconds per chain, notify_per_chain = fraction of chains for which an interrupt was due.
#include <benchmark/benchmark.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <vector>

#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/packed_queue.hpp"
#include "iovirt/virtio/packed_ring.hpp"
#include "iovirt/virtio/testing/driver_packed_queue.hpp"

namespace {

using iovirt::GuestMemory;
using iovirt::RegionSpec;
using iovirt::virtio::DescriptorChain;
using iovirt::virtio::PackedQueue;
using iovirt::virtio::testing::Buf;
using iovirt::virtio::testing::DriverPackedLayout;
using iovirt::virtio::testing::DriverPackedQueue;

constexpr uint16_t kQueueSize = 256;
constexpr uint32_t kBatch = 64;  // chains per timed batch; 64 x 4 descriptors fills the ring

// Guest memory layout (one 1 MiB region at gpa 0).
constexpr uint64_t kMemSize = 1ull << 20;
constexpr uint64_t kDescGpa = 0x0000;    // 256 x 16 = 4 KiB
constexpr uint64_t kDriverGpa = 0x1000;  // driver event suppression
constexpr uint64_t kDeviceGpa = 0x2000;  // device event suppression
constexpr uint64_t kTableGpa = 0x4000;   // kBatch indirect tables of up to 4 x 16 bytes
constexpr uint64_t kTableStride = 64;
constexpr uint64_t kDataGpa = 0x10000;  // data buffers (the device does not touch them)

enum class Kind { Direct, Indirect };

[[noreturn]] void die(const char* what, const iovirt::Error& e) {
  std::fprintf(stderr, "bench_packed_queue: %s: %s\n", what, e.message().c_str());
  std::abort();
}

template <class T>
T must(iovirt::Result<T> r, const char* what) {
  if (!r) die(what, r.error());
  return std::move(*r);
}

void must(const iovirt::Status& s, const char* what) {
  if (!s) die(what, s.error());
}

// A block-device-like request: header and data readable, data and status writable.
std::vector<Buf> make_chain(uint32_t ndesc) {
  if (ndesc == 1) return {Buf{kDataGpa, 4096, false}};
  std::vector<Buf> bufs;
  bufs.push_back(Buf{kDataGpa, 16, false});
  for (uint32_t i = 1; i + 1 < ndesc; ++i) {
    bufs.push_back(Buf{kDataGpa + 0x1000 * i, 4096, i * 2 >= ndesc});
  }
  bufs.push_back(Buf{kDataGpa + 0x1000 * ndesc, 1, true});
  return bufs;
}

// Args: {descriptors per chain, event_idx (0/1), indirect (0/1)}.
void BM_PackedPopPush(benchmark::State& state) {
  const auto ndesc = static_cast<uint32_t>(state.range(0));
  const bool event_idx = state.range(1) != 0;
  const Kind kind = state.range(2) != 0 ? Kind::Indirect : Kind::Direct;

  const std::array<RegionSpec, 1> regions{RegionSpec{0, kMemSize}};
  GuestMemory mem = must(GuestMemory::create(regions), "GuestMemory::create");
  DriverPackedQueue drv =
      must(DriverPackedQueue::create(
               mem, DriverPackedLayout{kQueueSize, kDescGpa, kDriverGpa, kDeviceGpa}),
           "DriverPackedQueue::create");
  PackedQueue q = must(PackedQueue::create(kQueueSize), "PackedQueue::create");
  q.set_desc_ring(kDescGpa);
  q.set_driver_event_area(kDriverGpa);
  q.set_device_event_area(kDeviceGpa);
  q.set_event_idx(event_idx);
  q.set_indirect(kind == Kind::Indirect);
  q.set_ready(true);
  must(q.validate(mem), "PackedQueue::validate");

  const std::vector<Buf> chain = make_chain(ndesc);
  uint64_t device_ns = 0;
  uint64_t chains = 0;
  uint64_t notifications = 0;

  for (auto _ : state) {
    // --- driver side, untimed: reap used descriptors, post kBatch chains ---
    while (must(drv.take_used(), "take_used").has_value()) {
    }
    for (uint32_t i = 0; i < kBatch; ++i) {
      if (kind == Kind::Indirect) {
        (void)must(drv.add_indirect_chain(chain, kTableGpa + kTableStride * i),
                   "add_indirect_chain");
      } else {
        (void)must(drv.add_chain(chain), "add_chain");
      }
    }
    // A driver with EVENT_IDX asks for an interrupt at the next used descriptor (what it has
    // seen so far), so the first chain of a batch notifies, as in the split benchmark.
    if (event_idx) {
      must(drv.set_driver_event(iovirt::virtio::RING_EVENT_FLAGS_DESC, drv.used_off_wrap()),
           "set_driver_event");
    }

    // --- device side, timed ---
    const auto t0 = std::chrono::steady_clock::now();
    for (uint32_t i = 0; i < kBatch; ++i) {
      auto popped = q.pop(mem);
      if (!popped || !popped->has_value()) [[unlikely]] {
        state.SkipWithError("pop failed or ring empty");
        break;
      }
      const DescriptorChain& c = **popped;
      uint32_t readable = c.readable_len;
      uint32_t writable = c.writable_len;
      benchmark::DoNotOptimize(readable);
      benchmark::DoNotOptimize(writable);
      if (!q.push(mem, c.head, c.desc_count, writable)) [[unlikely]] {
        state.SkipWithError("push failed");
        break;
      }
      auto notify = q.needs_notification(mem);
      if (!notify) [[unlikely]] {
        state.SkipWithError("needs_notification failed");
        break;
      }
      bool n = *notify;
      benchmark::DoNotOptimize(n);
      notifications += n ? 1 : 0;
    }
    const auto t1 = std::chrono::steady_clock::now();
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count();
    state.SetIterationTime(static_cast<double>(ns) * 1e-9);
    device_ns += static_cast<uint64_t>(ns);
    chains += kBatch;
  }

  state.SetItemsProcessed(static_cast<int64_t>(chains));
  if (chains != 0) {
    state.counters["ns_per_chain"] =
        benchmark::Counter(static_cast<double>(device_ns) / static_cast<double>(chains));
    state.counters["notify_per_chain"] =
        benchmark::Counter(static_cast<double>(notifications) / static_cast<double>(chains));
  }
  if (q.broken()) state.SkipWithError("queue broken");
}

}  // namespace

BENCHMARK(BM_PackedPopPush)
    ->ArgNames({"ndesc", "event_idx", "indirect"})
    ->Args({1, 0, 0})
    ->Args({1, 1, 0})
    ->Args({4, 0, 0})
    ->Args({4, 1, 0})
    ->Args({4, 0, 1})
    ->Args({4, 1, 1})
    ->UseManualTime();

BENCHMARK_MAIN();
