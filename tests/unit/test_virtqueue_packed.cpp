#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/packed_queue.hpp"
#include "iovirt/virtio/packed_ring.hpp"
#include "iovirt/virtio/testing/driver_packed_queue.hpp"
#include "iovirt/virtio/testing/driver_queue.hpp"
#include "iovirt/virtio/virtqueue.hpp"

namespace iovirt::virtio {
namespace {

using testing::Buf;
using testing::DriverPackedLayout;
using testing::DriverPackedQueue;
using testing::PackedUsed;

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint16_t kSize = 16;
constexpr uint64_t kDesc = 0x1000;
constexpr uint64_t kDriver = 0x2000;  // driver event suppression
constexpr uint64_t kDevice = 0x2010;  // device event suppression
constexpr uint64_t kTable = 0x4000;
constexpr uint64_t kBuf = 0x10000;

GuestMemory make_memory() {
  const RegionSpec specs[] = {{0, kMiB}};
  auto m = GuestMemory::create(specs);
  EXPECT_TRUE(m.has_value()) << m.error().message();
  return std::move(*m);
}

PackedQueue make_device_queue(uint16_t size = kSize, bool event_idx = false,
                              bool indirect = false) {
  auto q = PackedQueue::create(size);
  EXPECT_TRUE(q.has_value()) << q.error().message();
  q->set_desc_ring(kDesc);
  q->set_driver_event_area(kDriver);
  q->set_device_event_area(kDevice);
  q->set_event_idx(event_idx);
  q->set_indirect(indirect);
  q->set_ready(true);
  return std::move(*q);
}

DriverPackedQueue make_driver(const GuestMemory& mem, uint16_t size = kSize) {
  auto d = DriverPackedQueue::create(mem, DriverPackedLayout{size, kDesc, kDriver, kDevice});
  EXPECT_TRUE(d.has_value()) << d.error().message();
  return std::move(*d);
}

// n buffers: the first half readable, the rest writable, each 8 bytes at distinct addresses.
std::vector<Buf> chain_of(uint32_t n, uint64_t base = kBuf) {
  std::vector<Buf> bufs;
  for (uint32_t i = 0; i < n; ++i) bufs.push_back(Buf{base + 64ull * i, 8, i * 2 >= n});
  return bufs;
}

PvirtqDesc desc(uint64_t addr, uint32_t len, uint16_t flags, uint16_t id = 0) {
  return PvirtqDesc{addr, len, id, flags};
}

class PackedQueueTest : public ::testing::Test {
 protected:
  QueueFault pop_fault() {
    auto r = q.pop(mem);
    EXPECT_FALSE(r.has_value());
    if (!r) last_error = r.error().message();
    return q.fault();
  }
  DescriptorChain pop_one() {
    auto r = q.pop(mem);
    EXPECT_TRUE(r.has_value()) << r.error().message();
    EXPECT_TRUE(r.has_value() && r->has_value());
    if (!r || !*r) return DescriptorChain{};
    return **r;
  }
  void publish(std::initializer_list<PvirtqDesc> descs) {
    const std::vector<PvirtqDesc> v(descs);
    ASSERT_TRUE(drv.publish_raw(v).has_value());
  }

  GuestMemory mem = make_memory();
  DriverPackedQueue drv = make_driver(mem);
  PackedQueue q = make_device_queue();
  std::string last_error;
};

class PackedQueueIndirectTest : public PackedQueueTest {
 protected:
  PackedQueueIndirectTest() { q.set_indirect(true); }
};

// --- creation, size and validate ---

TEST(PackedQueueCreate, RefusesZeroSize) {
  auto q = PackedQueue::create(0);

  ASSERT_FALSE(q.has_value());
  EXPECT_NE(q.error().message().find("invalid queue size"), std::string::npos);
}

TEST(PackedQueueCreate, AcceptsMaximumSize) {
  auto q = PackedQueue::create(32768);

  ASSERT_TRUE(q.has_value());
  EXPECT_EQ(q->size(), 32768u);
  EXPECT_TRUE(q->avail_wrap());
  EXPECT_TRUE(q->used_wrap());
}

TEST(PackedQueueCreate, SetSizeAcceptsSizeNotPowerOfTwo) {
  auto q = PackedQueue::create(16);
  ASSERT_TRUE(q.has_value());

  auto st = q->set_size(5);

  EXPECT_TRUE(st.has_value());
  EXPECT_EQ(q->size(), 5u);
  EXPECT_FALSE(q->broken());
}

TEST(PackedQueueCreate, SetSizeRefusesAboveDeviceMaximum) {
  auto q = PackedQueue::create(16);
  ASSERT_TRUE(q.has_value());

  auto st = q->set_size(17);

  EXPECT_FALSE(st.has_value());
  EXPECT_EQ(q->fault(), QueueFault::InvalidSize);
}

TEST_F(PackedQueueTest, ValidateAcceptsAlignedAreasInsideMemory) {
  auto st = q.validate(mem);

  EXPECT_TRUE(st.has_value()) << st.error().message();
}

TEST_F(PackedQueueTest, ValidateRefusesMisalignedDescriptorRing) {
  q.set_desc_ring(kDesc + 8);

  auto st = q.validate(mem);

  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::RingMisaligned);
  EXPECT_NE(st.error().message().find("descriptor ring"), std::string::npos);
}

TEST_F(PackedQueueTest, ValidateRefusesMisalignedDriverArea) {
  q.set_driver_event_area(kDriver + 2);

  auto st = q.validate(mem);

  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::RingMisaligned);
  EXPECT_NE(st.error().message().find("driver event suppression"), std::string::npos);
}

TEST_F(PackedQueueTest, ValidateRefusesMisalignedDeviceArea) {
  q.set_device_event_area(kDevice + 1);

  auto st = q.validate(mem);

  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::RingMisaligned);
}

TEST_F(PackedQueueTest, ValidateRefusesDescriptorRingCrossingEndOfMemory) {
  q.set_desc_ring(kMiB - 16 * 8);  // 8 of the 16 descriptors fit

  auto st = q.validate(mem);

  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::RingOutsideMemory);
}

TEST_F(PackedQueueTest, ValidateRefusesDeviceAreaOutsideMemory) {
  q.set_device_event_area(4 * kMiB);

  auto st = q.validate(mem);

  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::RingOutsideMemory);
}

TEST_F(PackedQueueTest, QueueThatFailedValidationTouchesNoRing) {
  q.set_ready(false);
  q.set_device_event_area(4 * kMiB);
  ASSERT_FALSE(q.validate(mem).has_value());

  EXPECT_FALSE(q.enable_notification(mem).has_value());
  EXPECT_FALSE(q.disable_notification(mem).has_value());
  EXPECT_FALSE(q.needs_notification(mem).has_value());
  EXPECT_FALSE(q.pop(mem).has_value());
  EXPECT_EQ(q.fault(), QueueFault::RingOutsideMemory);
}

// --- the data path ---

TEST_F(PackedQueueTest, PopOnEmptyRingReturnsNothing) {
  auto r = q.pop(mem);

  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_FALSE(r->has_value());
  EXPECT_EQ(q.next_avail(), 0);
}

TEST_F(PackedQueueTest, PopReturnsSingleDescriptorBuffer) {
  const Buf bufs[] = {{kBuf, 100, false}};
  auto id = drv.add_chain(bufs);
  ASSERT_TRUE(id.has_value());

  DescriptorChain c = pop_one();

  EXPECT_EQ(c.head, *id);
  EXPECT_EQ(c.desc_count, 1);
  ASSERT_EQ(c.segments.size(), 1u);
  EXPECT_EQ(c.segments[0].addr, kBuf);
  EXPECT_EQ(c.segments[0].len, 100u);
  EXPECT_FALSE(c.segments[0].write);
  EXPECT_EQ(c.readable_len, 100u);
  EXPECT_EQ(c.writable_len, 0u);
  EXPECT_EQ(q.next_avail(), 1);
  EXPECT_EQ(q.in_flight_slots(), 1u);
}

TEST_F(PackedQueueTest, PopReturnsChainInOrderWithIdOfLastDescriptor) {
  ASSERT_TRUE(drv.add_chain(chain_of(1)).has_value());  // id 0, so the next id is 1
  (void)pop_one();
  const Buf bufs[] = {{kBuf, 16, false}, {kBuf + 64, 32, true}, {kBuf + 128, 1, true}};
  auto id = drv.add_chain(bufs);
  ASSERT_TRUE(id.has_value());
  ASSERT_EQ(*id, 1);

  DescriptorChain c = pop_one();

  EXPECT_EQ(c.head, 1);
  EXPECT_EQ(c.desc_count, 3);
  ASSERT_EQ(c.segments.size(), 3u);
  EXPECT_EQ(c.segments[1].addr, kBuf + 64);
  EXPECT_TRUE(c.segments[1].write);
  EXPECT_EQ(c.readable_len, 16u);
  EXPECT_EQ(c.writable_len, 33u);
  EXPECT_EQ(q.next_avail(), 4);
}

TEST_F(PackedQueueTest, PushWritesUsedDescriptorVisibleToDriver) {
  ASSERT_TRUE(drv.add_chain(chain_of(3)).has_value());
  DescriptorChain c = pop_one();

  ASSERT_TRUE(q.push(mem, c.head, c.desc_count, 8).has_value());

  auto u = drv.take_used();
  ASSERT_TRUE(u.has_value() && u->has_value());
  EXPECT_EQ((*u)->id, c.head);
  EXPECT_EQ((*u)->len, 8u);
  EXPECT_TRUE((*u)->flags & VIRTQ_DESC_F_WRITE);
  EXPECT_EQ(q.next_used(), 3);
  EXPECT_EQ(drv.next_used(), 3);
  EXPECT_EQ(q.in_flight_slots(), 0u);
  EXPECT_FALSE(drv.take_used()->has_value());
}

TEST_F(PackedQueueTest, PushWithNothingWrittenLeavesWriteFlagClear) {
  ASSERT_TRUE(drv.add_chain(chain_of(1)).has_value());
  DescriptorChain c = pop_one();

  ASSERT_TRUE(q.push(mem, c.head, c.desc_count, 0).has_value());

  auto u = drv.take_used();
  ASSERT_TRUE(u.has_value() && u->has_value());
  EXPECT_FALSE((*u)->flags & VIRTQ_DESC_F_WRITE);
}

TEST_F(PackedQueueTest, ChainOfExactlyQueueSizeIsAccepted) {
  ASSERT_TRUE(drv.add_chain(chain_of(kSize)).has_value());

  DescriptorChain c = pop_one();

  EXPECT_EQ(c.desc_count, kSize);
  EXPECT_EQ(c.segments.size(), size_t{kSize});
  EXPECT_EQ(q.next_avail(), 0);
  EXPECT_FALSE(q.avail_wrap());
}

// Drives `laps` laps of the ring with chains of 1..max_len descriptors completed in order,
// checking positions and wrap counters against the driver every step.
void run_laps(uint16_t size, uint32_t laps, uint32_t max_len) {
  GuestMemory mem = make_memory();
  DriverPackedQueue drv = make_driver(mem, size);
  PackedQueue q = make_device_queue(size);
  uint64_t slots = 0;
  for (uint32_t i = 0; slots < uint64_t{laps} * size; ++i) {
    const uint32_t len = 1 + i % std::min<uint32_t>(max_len, size);
    auto id = drv.add_chain(chain_of(len));
    ASSERT_TRUE(id.has_value()) << id.error().message();
    auto r = q.pop(mem);
    ASSERT_TRUE(r.has_value() && r->has_value()) << "step " << i;
    ASSERT_EQ((*r)->head, *id);
    ASSERT_EQ((*r)->desc_count, len);
    ASSERT_EQ((*r)->segments.size(), len);
    ASSERT_TRUE(q.push(mem, (*r)->head, (*r)->desc_count, len).has_value());
    auto u = drv.take_used();
    ASSERT_TRUE(u.has_value() && u->has_value()) << "step " << i;
    ASSERT_EQ((*u)->id, *id);
    ASSERT_EQ(q.next_avail(), drv.next_avail());
    ASSERT_EQ(q.avail_wrap(), drv.avail_wrap());
    ASSERT_EQ(q.next_used(), drv.next_used());
    ASSERT_EQ(q.used_wrap(), drv.used_wrap());
    slots += len;
  }
  EXPECT_FALSE(q.broken());
  EXPECT_EQ(q.in_flight_slots(), 0u);
}

TEST(PackedQueueWrap, ManyLapsWithVariousChainLengths) {
  run_laps(kSize, 50, 5);
}

TEST(PackedQueueWrap, ManyLapsOnSizeNotPowerOfTwo) {
  run_laps(7, 40, 4);
}

TEST(PackedQueueWrap, ManyLapsOnSizeOne) {
  run_laps(1, 10, 1);
}

TEST(PackedQueueWrap, OutOfOrderCompletionAcrossLaps) {
  // The device holds up to 8 buffers and completes them in a shuffled order; the driver must see
  // every id exactly once, with the ring positions in step on both sides.
  GuestMemory mem = make_memory();
  DriverPackedQueue drv = make_driver(mem);
  PackedQueue q = make_device_queue();
  std::mt19937 rng(1234);
  std::vector<DescriptorChain> held;
  std::vector<uint32_t> written_for(kSize, 0);
  uint64_t completed = 0;
  for (uint32_t step = 0; step < 2000; ++step) {
    const uint32_t len = 1 + rng() % 4;
    if (drv.free_slots() >= len && held.size() < 8) {
      auto id = drv.add_chain(chain_of(len));
      ASSERT_TRUE(id.has_value());
      auto r = q.pop(mem);
      ASSERT_TRUE(r.has_value() && r->has_value()) << r.error().message();
      ASSERT_EQ((*r)->head, *id);
      held.push_back(**r);
      continue;
    }
    ASSERT_FALSE(held.empty());
    const size_t pick = rng() % held.size();
    const DescriptorChain c = held[pick];
    held.erase(held.begin() + static_cast<std::ptrdiff_t>(pick));
    const uint32_t written = 1000 + step;
    ASSERT_TRUE(q.push(mem, c.head, c.desc_count, written).has_value());
    auto u = drv.take_used();
    ASSERT_TRUE(u.has_value()) << u.error().message();
    ASSERT_TRUE(u->has_value());
    EXPECT_EQ((*u)->id, c.head);
    EXPECT_EQ((*u)->len, written);
    ASSERT_EQ(q.next_used(), drv.next_used());
    ASSERT_EQ(q.used_wrap(), drv.used_wrap());
    ++completed;
  }
  EXPECT_GT(completed, 500u);
  EXPECT_FALSE(q.broken());
  EXPECT_EQ(q.in_flight_slots() + drv.free_slots(), uint32_t{kSize});
}

TEST_F(PackedQueueTest, StateCarriesWrapCounterInBit15) {
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(drv.add_chain(chain_of(4)).has_value());
    DescriptorChain c = pop_one();
    ASSERT_TRUE(q.push(mem, c.head, c.desc_count, 0).has_value());
    ASSERT_TRUE(drv.take_used().has_value());
  }

  // 20 slots: position 4 in the second lap (wrap counter 0).
  EXPECT_EQ(q.avail_state(), 4);
  EXPECT_EQ(q.used_state(), 4);
  EXPECT_FALSE(q.avail_wrap());
}

TEST_F(PackedQueueTest, PopStartsAtRestoredStateAcrossWrap) {
  // The driver is at slot 14 of its second lap (wrap 0); a device restored there must pop the
  // chain it publishes next, which crosses into the third lap.
  for (int i = 0; i < 30; ++i) publish({desc(kBuf, 8, 0)});
  PackedQueue fresh = make_device_queue();
  ASSERT_TRUE(fresh.set_avail_state(14).has_value());  // wrap 0, slot 14
  publish({desc(kBuf, 8, VIRTQ_DESC_F_NEXT), desc(kBuf + 8, 8, VIRTQ_DESC_F_NEXT),
           desc(kBuf + 16, 8, VIRTQ_DESC_F_WRITE, 3)});  // slots 14, 15, 0

  auto r = fresh.pop(mem);

  ASSERT_TRUE(r.has_value() && r->has_value()) << (r ? "empty" : r.error().message());
  EXPECT_EQ((*r)->head, 3);
  EXPECT_EQ((*r)->desc_count, 3);
  EXPECT_EQ(fresh.avail_state(), 1 | PACKED_WRAP_BIT);
}

TEST_F(PackedQueueTest, SetStateRefusesPositionOutsideQueueWithoutBreaking) {
  auto st = q.set_avail_state(kSize);

  EXPECT_FALSE(st.has_value());
  EXPECT_FALSE(q.broken());
  EXPECT_FALSE(q.set_used_state(PACKED_WRAP_BIT | kSize).has_value());
}

TEST_F(PackedQueueIndirectTest, PopWalksIndirectTable) {
  const Buf bufs[] = {{kBuf, 16, false}, {kBuf + 16, 100, true}, {kBuf + 200, 1, true}};
  auto id = drv.add_indirect_chain(bufs, kTable);
  ASSERT_TRUE(id.has_value());

  DescriptorChain c = pop_one();

  EXPECT_EQ(c.head, *id);
  EXPECT_EQ(c.desc_count, 1);  // one ring slot
  ASSERT_EQ(c.segments.size(), 3u);
  EXPECT_EQ(c.readable_len, 16u);
  EXPECT_EQ(c.writable_len, 101u);
  ASSERT_TRUE(q.push(mem, c.head, c.desc_count, 101).has_value());
  auto u = drv.take_used();
  ASSERT_TRUE(u.has_value() && u->has_value());
  EXPECT_EQ((*u)->id, *id);
  EXPECT_EQ(drv.next_used(), 1);
}

TEST_F(PackedQueueIndirectTest, IndirectTableMayHoldMoreEntriesThanQueueSize) {
  ASSERT_TRUE(drv.add_indirect_chain(chain_of(100), kTable).has_value());

  DescriptorChain c = pop_one();

  EXPECT_EQ(c.segments.size(), 100u);
  EXPECT_EQ(c.desc_count, 1);
}

TEST_F(PackedQueueIndirectTest, NextAndIdInsideIndirectTableAreIgnored) {
  // Section 2.8.19: only WRITE is meaningful in the table; the table is len / 16 entries.
  const PvirtqDesc table[] = {desc(kBuf, 8, VIRTQ_DESC_F_NEXT, 77), desc(kBuf + 8, 8, 0, 99)};
  ASSERT_TRUE(drv.write_table(kTable, table).has_value());
  publish({desc(kTable, 32, VIRTQ_DESC_F_INDIRECT, 2)});

  DescriptorChain c = pop_one();

  EXPECT_EQ(c.head, 2);
  EXPECT_EQ(c.segments.size(), 2u);
}

// --- hostile guest ---

TEST_F(PackedQueueTest, ChainLongerThanQueueBreaksQueue) {
  // Every slot available for the first lap with NEXT: after size descriptors NEXT is still set,
  // so the chain would run into its own head.
  std::vector<PvirtqDesc> ring(kSize, desc(kBuf, 8, VIRTQ_DESC_F_NEXT));
  ASSERT_TRUE(drv.publish_raw(ring).has_value());

  EXPECT_EQ(pop_fault(), QueueFault::ChainTooLong);
  EXPECT_NE(last_error.find("longer than the queue"), std::string::npos);
}

TEST_F(PackedQueueTest, ChainLongerThanQueueOnSizeOneBreaksQueue) {
  GuestMemory m = make_memory();
  DriverPackedQueue d = make_driver(m, 1);
  PackedQueue q1 = make_device_queue(1);
  const PvirtqDesc one[] = {desc(kBuf, 8, VIRTQ_DESC_F_NEXT)};
  ASSERT_TRUE(d.publish_raw(one).has_value());

  auto r = q1.pop(m);

  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(q1.fault(), QueueFault::ChainTooLong);
}

TEST_F(PackedQueueTest, LaterDescriptorNotAvailableBreaksQueue) {
  // Head available with NEXT; slot 1 still zero (not available in lap 1).
  ASSERT_TRUE(drv.write_desc(0, desc(kBuf, 8, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_AVAIL)).has_value());

  EXPECT_EQ(pop_fault(), QueueFault::DescNotAvailable);
}

TEST_F(PackedQueueTest, BufferOutsideMemoryBreaksQueue) {
  publish({desc(8 * kMiB, 8, 0)});

  EXPECT_EQ(pop_fault(), QueueFault::BufferOutsideMemory);
}

TEST_F(PackedQueueTest, BufferCrossingEndOfMemoryBreaksQueue) {
  publish({desc(kMiB - 4, 8, 0)});

  EXPECT_EQ(pop_fault(), QueueFault::BufferOutsideMemory);
}

TEST_F(PackedQueueTest, MaximumLengthBufferOutsideMemoryBreaksQueue) {
  publish({desc(kBuf, 0xffffffffu, 0)});

  EXPECT_EQ(pop_fault(), QueueFault::BufferOutsideMemory);
}

TEST(PackedQueueHostile, BufferStraddlingTwoRegionsBreaksQueue) {
  const RegionSpec specs[] = {{0, kMiB}, {kMiB, kMiB}};
  auto mem = GuestMemory::create(specs);
  ASSERT_TRUE(mem.has_value()) << mem.error().message();
  auto drv = make_driver(*mem);
  PackedQueue q = make_device_queue();
  const Buf bufs[] = {{kMiB - 8, 16, false}};
  ASSERT_TRUE(drv.add_chain(bufs).has_value());

  auto r = q.pop(*mem);

  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(q.fault(), QueueFault::BufferOutsideMemory);
}

TEST(PackedQueueHostile, TotalLengthOverflowBreaksQueue) {
  // Two 2 GiB buffers inside a (sparse) 3 GiB guest: together 2^32 bytes.
  const RegionSpec specs[] = {{0, 3ull << 30}};
  auto mem = GuestMemory::create(specs);
  ASSERT_TRUE(mem.has_value()) << mem.error().message();
  auto drv = make_driver(*mem);
  PackedQueue q = make_device_queue();
  const PvirtqDesc d[] = {desc(kBuf, 0x80000000u, VIRTQ_DESC_F_NEXT),
                          desc(kBuf, 0x80000000u, VIRTQ_DESC_F_WRITE)};
  ASSERT_TRUE(drv.publish_raw(d).has_value());

  auto r = q.pop(*mem);

  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(q.fault(), QueueFault::LengthOverflow);
}

TEST_F(PackedQueueTest, ReadableAfterWritableDescriptorBreaksQueue) {
  publish({desc(kBuf, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT), desc(kBuf + 8, 8, 0)});

  EXPECT_EQ(pop_fault(), QueueFault::ReadAfterWrite);
}

TEST_F(PackedQueueTest, BufferIdOutOfRangeBreaksQueue) {
  publish({desc(kBuf, 8, 0, kSize)});

  EXPECT_EQ(pop_fault(), QueueFault::BufferIdOutOfRange);
}

TEST_F(PackedQueueTest, BufferIdStillHeldByDeviceBreaksQueue) {
  publish({desc(kBuf, 8, 0, 3)});
  (void)pop_one();
  publish({desc(kBuf, 8, 0, 3)});

  EXPECT_EQ(pop_fault(), QueueFault::BufferIdInUse);
}

TEST_F(PackedQueueTest, MoreSlotsInFlightThanQueueSizeBreaksQueue) {
  // 15 + 1 slots held; then the guest re-marks slot 0 available in the next lap with a new id.
  std::vector<PvirtqDesc> big(15, desc(kBuf, 8, VIRTQ_DESC_F_NEXT));
  big.back() = desc(kBuf, 8, 0, 0);
  ASSERT_TRUE(drv.publish_raw(big).has_value());
  publish({desc(kBuf, 8, 0, 1)});
  EXPECT_EQ(pop_one().desc_count, 15);
  EXPECT_EQ(pop_one().desc_count, 1);
  publish({desc(kBuf, 8, 0, 2)});

  EXPECT_EQ(pop_fault(), QueueFault::RingOverrun);
}

TEST_F(PackedQueueTest, IndirectWithoutNegotiatedFeatureBreaksQueue) {
  ASSERT_TRUE(drv.add_indirect_chain(chain_of(2), kTable).has_value());

  EXPECT_EQ(pop_fault(), QueueFault::IndirectNotNegotiated);
}

TEST_F(PackedQueueIndirectTest, IndirectInsideIndirectBreaksQueue) {
  const PvirtqDesc table[] = {desc(kBuf, 8, 0), desc(kTable, 32, VIRTQ_DESC_F_INDIRECT)};
  ASSERT_TRUE(drv.write_table(kTable, table).has_value());
  publish({desc(kTable, 32, VIRTQ_DESC_F_INDIRECT)});

  EXPECT_EQ(pop_fault(), QueueFault::NestedIndirect);
}

TEST_F(PackedQueueIndirectTest, IndirectTogetherWithNextBreaksQueue) {
  ASSERT_TRUE(drv.write_table(kTable, std::vector<PvirtqDesc>{desc(kBuf, 8, 0)}).has_value());
  publish({desc(kTable, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT), desc(kBuf, 8, 0)});

  EXPECT_EQ(pop_fault(), QueueFault::IndirectWithNext);
}

TEST_F(PackedQueueIndirectTest, IndirectAfterNextInChainBreaksQueue) {
  ASSERT_TRUE(drv.write_table(kTable, std::vector<PvirtqDesc>{desc(kBuf, 8, 0)}).has_value());
  publish({desc(kBuf, 8, VIRTQ_DESC_F_NEXT), desc(kTable, 16, VIRTQ_DESC_F_INDIRECT)});

  EXPECT_EQ(pop_fault(), QueueFault::IndirectInChain);
}

TEST_F(PackedQueueIndirectTest, IndirectTableLengthNotMultipleOf16BreaksQueue) {
  publish({desc(kTable, 20, VIRTQ_DESC_F_INDIRECT)});

  EXPECT_EQ(pop_fault(), QueueFault::IndirectBadLength);
}

TEST_F(PackedQueueIndirectTest, EmptyIndirectTableBreaksQueue) {
  publish({desc(kTable, 0, VIRTQ_DESC_F_INDIRECT)});

  EXPECT_EQ(pop_fault(), QueueFault::IndirectBadLength);
}

TEST_F(PackedQueueIndirectTest, IndirectTableAboveEntryCapBreaksQueue) {
  publish({desc(kTable, 16 * (PackedQueue::kMaxIndirectEntries + 1), VIRTQ_DESC_F_INDIRECT)});

  EXPECT_EQ(pop_fault(), QueueFault::IndirectTooLarge);
}

TEST_F(PackedQueueIndirectTest, IndirectTableOutsideMemoryBreaksQueue) {
  publish({desc(kMiB - 16, 32, VIRTQ_DESC_F_INDIRECT)});

  EXPECT_EQ(pop_fault(), QueueFault::IndirectOutsideMemory);
}

TEST_F(PackedQueueIndirectTest, IndirectEntryOutsideMemoryBreaksQueue) {
  ASSERT_TRUE(drv.write_table(kTable, std::vector<PvirtqDesc>{desc(2 * kMiB, 8, 0)}).has_value());
  publish({desc(kTable, 16, VIRTQ_DESC_F_INDIRECT)});

  EXPECT_EQ(pop_fault(), QueueFault::BufferOutsideMemory);
}

TEST_F(PackedQueueTest, BrokenQueueStaysBrokenUntilReset) {
  publish({desc(8 * kMiB, 8, 0)});
  ASSERT_EQ(pop_fault(), QueueFault::BufferOutsideMemory);
  ASSERT_TRUE(drv.add_chain(chain_of(1)).has_value());

  EXPECT_EQ(pop_fault(), QueueFault::BufferOutsideMemory);  // the first fault is kept
  EXPECT_NE(last_error.find("broken"), std::string::npos);
  EXPECT_FALSE(q.push(mem, 0, 1, 0).has_value());
  EXPECT_FALSE(q.needs_notification(mem).has_value());
  EXPECT_FALSE(q.enable_notification(mem).has_value());

  q.reset();
  EXPECT_FALSE(q.broken());
  EXPECT_FALSE(q.ready());
  EXPECT_EQ(q.avail_state(), PACKED_WRAP_BIT);
  // The driver resets too (section 2.8: the ring is zeroed for a fresh start).
  DriverPackedQueue fresh = make_driver(mem);
  q.set_desc_ring(kDesc);
  q.set_driver_event_area(kDriver);
  q.set_device_event_area(kDevice);
  ASSERT_TRUE(q.validate(mem).has_value());
  q.set_ready(true);
  ASSERT_TRUE(fresh.add_chain(chain_of(2)).has_value());
  EXPECT_EQ(pop_one().desc_count, 2);
}

TEST_F(PackedQueueTest, PushOfIdOutOfRangeBreaksQueue) {
  auto st = q.push(mem, kSize, 1, 0);

  EXPECT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::UsedHeadOutOfRange);
}

TEST_F(PackedQueueTest, PushOfIdNotHeldBreaksQueue) {
  auto st = q.push(mem, 2, 1, 0);

  EXPECT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::UsedIdNotInFlight);
}

TEST_F(PackedQueueTest, PushWithWrongDescCountBreaksQueue) {
  ASSERT_TRUE(drv.add_chain(chain_of(3)).has_value());
  DescriptorChain c = pop_one();

  auto st = q.push(mem, c.head, 1, 0);

  EXPECT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::UsedIdNotInFlight);
}

TEST_F(PackedQueueTest, PopOnQueueNotReadyFailsWithoutFault) {
  q.set_ready(false);

  auto r = q.pop(mem);

  EXPECT_FALSE(r.has_value());
  EXPECT_FALSE(q.broken());
}

// --- notifications ---

class PackedQueueNotifyTest : public PackedQueueTest {
 protected:
  // Adds, pops and pushes one chain of `len` descriptors; the driver takes it.
  void complete_one(uint32_t len = 1) {
    ASSERT_TRUE(drv.add_chain(chain_of(len)).has_value());
    DescriptorChain c = pop_one();
    ASSERT_TRUE(q.push(mem, c.head, c.desc_count, 8).has_value());
    auto u = drv.take_used();
    ASSERT_TRUE(u.has_value() && u->has_value());
  }
  bool decide() {
    auto r = q.needs_notification(mem);
    EXPECT_TRUE(r.has_value());
    return r.value_or(false);
  }
};

TEST_F(PackedQueueNotifyTest, EnabledByDefault) {
  complete_one();

  EXPECT_TRUE(decide());
}

TEST_F(PackedQueueNotifyTest, DisableFlagSuppresses) {
  ASSERT_TRUE(drv.set_driver_event(RING_EVENT_FLAGS_DISABLE).has_value());
  complete_one();

  EXPECT_FALSE(decide());
}

TEST_F(PackedQueueNotifyTest, DescModeWithoutEventIdxActsAsEnable) {
  ASSERT_TRUE(drv.set_driver_event(RING_EVENT_FLAGS_DESC, 9).has_value());
  complete_one();

  EXPECT_TRUE(decide());
}

TEST_F(PackedQueueNotifyTest, EventIdxNotifiesOnceForArmedSlot) {
  q.set_event_idx(true);
  ASSERT_TRUE(drv.set_driver_event(RING_EVENT_FLAGS_DESC, drv.used_off_wrap()).has_value());
  complete_one(2);
  EXPECT_TRUE(decide());
  complete_one(1);  // the driver did not re-arm: slot 0 of lap 1 is long past

  EXPECT_FALSE(decide());
  EXPECT_FALSE(decide());  // nothing new
}

TEST_F(PackedQueueNotifyTest, EventIdxAcrossWrapsFiresExactlyAtArmedSlot) {
  // The driver arms a slot `ahead` slots past its next used one (possibly in the next lap); the
  // device completes single-slot buffers and decides after each: exactly the push that writes
  // the armed slot notifies.
  q.set_event_idx(true);
  uint64_t used_abs = 0;  // slots used so far
  for (uint32_t round = 0; round < 60; ++round) {
    const uint32_t ahead = round % 13;
    const uint64_t target = used_abs + ahead;
    const auto off = static_cast<uint16_t>(target % kSize);
    const bool wrap = ((target / kSize) % 2) == 0;  // lap 0 has wrap counter 1
    ASSERT_TRUE(drv.set_driver_event(RING_EVENT_FLAGS_DESC,
                                     static_cast<uint16_t>(off | (wrap ? PACKED_WRAP_BIT : 0)))
                    .has_value());
    for (uint32_t k = 0; k <= ahead + 2; ++k) {
      complete_one();
      const bool expect = used_abs == target;
      ++used_abs;
      ASSERT_EQ(decide(), expect) << "round " << round << " push " << k;
    }
  }
  EXPECT_FALSE(q.broken());
}

TEST_F(PackedQueueNotifyTest, EventIdxBatchCoveringArmedSlotAcrossWrapNotifies) {
  q.set_event_idx(true);
  // Move to slot 14 of lap 0.
  for (int i = 0; i < 14; ++i) complete_one();
  (void)decide();
  // Arm slot 1 of lap 1 (wrap 0), then complete chains of 3 and 2 slots: slots 14..18 cover it.
  ASSERT_TRUE(drv.set_driver_event(RING_EVENT_FLAGS_DESC, 1).has_value());
  complete_one(3);
  complete_one(2);

  EXPECT_TRUE(decide());
  complete_one(3);
  EXPECT_FALSE(decide());
}

TEST_F(PackedQueueNotifyTest, EventIdxIgnoresArmedSlotOfOtherLapNotYetReached) {
  q.set_event_idx(true);
  // Arm slot 2 of lap 1 (wrap 0) while the device is in lap 0.
  ASSERT_TRUE(drv.set_driver_event(RING_EVENT_FLAGS_DESC, 2).has_value());
  complete_one(2);
  complete_one(2);

  EXPECT_FALSE(decide());
}

TEST_F(PackedQueueTest, DisableAndEnableNotificationWriteDeviceArea) {
  ASSERT_TRUE(q.disable_notification(mem).has_value());
  EXPECT_EQ(drv.device_event()->flags, RING_EVENT_FLAGS_DISABLE);
  EXPECT_FALSE(*drv.needs_kick(1));

  auto pending = q.enable_notification(mem);
  ASSERT_TRUE(pending.has_value());
  EXPECT_FALSE(*pending);
  EXPECT_EQ(drv.device_event()->flags, RING_EVENT_FLAGS_ENABLE);
  EXPECT_TRUE(*drv.needs_kick(1));
}

TEST_F(PackedQueueTest, EnableNotificationReportsPendingBuffer) {
  ASSERT_TRUE(q.disable_notification(mem).has_value());
  ASSERT_TRUE(drv.add_chain(chain_of(2)).has_value());

  auto pending = q.enable_notification(mem);

  ASSERT_TRUE(pending.has_value());
  EXPECT_TRUE(*pending);
}

TEST_F(PackedQueueTest, EventIdxKicksAcrossWrapsOnlyWhenArmedSlotMadeAvailable) {
  // Device side: after draining, arm the next avail slot; the driver then kicks for its first
  // addition only, over many laps with various chain lengths.
  q.set_event_idx(true);
  for (uint32_t i = 0; i < 200; ++i) {
    auto pending = q.enable_notification(mem);
    ASSERT_TRUE(pending.has_value());
    ASSERT_FALSE(*pending);
    auto ev = drv.device_event();
    ASSERT_EQ(ev->flags, RING_EVENT_FLAGS_DESC);
    ASSERT_EQ(ev->off_wrap, q.avail_state());
    const uint32_t a = 1 + i % 3;
    const uint32_t b = 1 + (i / 3) % 4;
    ASSERT_TRUE(drv.add_chain(chain_of(a)).has_value());
    ASSERT_TRUE(*drv.needs_kick(static_cast<uint16_t>(a))) << "step " << i;
    ASSERT_TRUE(drv.add_chain(chain_of(b)).has_value());
    ASSERT_FALSE(*drv.needs_kick(static_cast<uint16_t>(b))) << "step " << i;
    for (int k = 0; k < 2; ++k) {
      DescriptorChain c = pop_one();
      ASSERT_TRUE(q.push(mem, c.head, c.desc_count, 0).has_value());
      ASSERT_TRUE(drv.take_used()->has_value());
    }
  }
  EXPECT_FALSE(q.broken());
}

// --- driver and device on two threads ---

TEST(PackedQueueThreads, DriverAndDeviceOnTwoThreadsExchangeEveryBuffer) {
  // The driver thread posts requests (a readable sequence number, a writable reply slot) as fast
  // as the ring allows; the device thread pops, answers seq * 3 into the reply and pushes,
  // completing in pairs out of order. Every reply must arrive, with its own value: this is what
  // the acquire on the descriptor flags and the release on the used flags guarantee.
  GuestMemory mem = make_memory();
  DriverPackedQueue drv = make_driver(mem);
  PackedQueue q = make_device_queue();
  constexpr uint32_t kRequests = 20000;
  std::atomic<bool> stop{false};
  std::atomic<uint32_t> device_done{0};
  std::string device_error;

  std::thread device([&] {
    // Segments are only valid until the next pop: keep what is needed of each held chain.
    struct Request {
      uint16_t id;
      uint16_t desc_count;
      uint64_t seq_addr;
      uint64_t reply_addr;
    };
    std::vector<Request> held;
    while (!stop.load(std::memory_order_relaxed)) {
      auto r = q.pop(mem);
      if (!r) {
        device_error = r.error().message();
        return;
      }
      if (r->has_value()) {
        const DescriptorChain& c = **r;
        if (c.segments.size() != 2 || c.segments[0].write || !c.segments[1].write) {
          device_error = "bad chain";
          return;
        }
        held.push_back(Request{c.head, c.desc_count, c.segments[0].addr, c.segments[1].addr});
      }
      // Answer two at a time, the newer first, or one when the ring is momentarily empty.
      if (held.size() >= 2 || (!r->has_value() && !held.empty())) {
        std::reverse(held.begin(), held.end());
        for (const Request& req : held) {
          auto seq = mem.read_obj<uint64_t>(req.seq_addr);
          if (!seq || !mem.write_obj(req.reply_addr, *seq * 3)) {
            device_error = "request access failed";
            return;
          }
          if (auto st = q.push(mem, req.id, req.desc_count, 8); !st) {
            device_error = st.error().message();
            return;
          }
          device_done.fetch_add(1, std::memory_order_relaxed);
        }
        held.clear();
      }
      if (!r->has_value()) std::this_thread::yield();
    }
  });

  std::vector<uint64_t> seq_of(kSize, 0);
  uint32_t posted = 0;
  uint32_t completed = 0;
  bool ok = true;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (completed < kRequests && ok && std::chrono::steady_clock::now() < deadline) {
    bool progress = false;
    if (posted < kRequests && drv.free_slots() >= 2 && drv.ids_in_flight() < kSize) {
      // Buffers per id, so a reply can only land in its own request's slot.
      // (No ASSERT here: returning early would skip the device thread's join.)
      const auto new_id = drv.next_id();
      const uint16_t nid = new_id.value_or(0);
      const uint64_t seq = posted + 1;
      const uint64_t at = kBuf + 64ull * nid;
      seq_of[nid] = seq;
      ok = new_id.has_value() && mem.write_obj(at, seq).has_value() &&
           mem.write_obj(at + 8, uint64_t{0}).has_value();
      const Buf bufs[] = {{at, 8, false}, {at + 8, 8, true}};
      auto next = drv.add_chain(bufs);
      ok = ok && next.has_value() && *next == nid;
      ++posted;
      progress = true;
    }
    auto u = drv.take_used();
    if (!u) {
      ok = false;
      break;
    }
    if (u->has_value()) {
      const uint16_t id = (*u)->id;
      auto reply = mem.read_obj<uint64_t>(kBuf + 64ull * id + 8);
      EXPECT_EQ((*u)->len, 8u);
      EXPECT_TRUE(reply.has_value() && *reply == seq_of[id] * 3) << "id " << id;
      if (!reply || *reply != seq_of[id] * 3) ok = false;
      ++completed;
      progress = true;
    }
    if (!progress) std::this_thread::yield();
  }
  stop.store(true);
  device.join();

  EXPECT_TRUE(device_error.empty()) << device_error;
  EXPECT_TRUE(ok);
  EXPECT_EQ(completed, kRequests);
  EXPECT_EQ(device_done.load(), kRequests);
  EXPECT_FALSE(q.broken());
}

// --- through the Virtqueue facade ---

TEST(VirtqueueFacade, SplitFormatPopsAndPushes) {
  GuestMemory mem = make_memory();
  auto drv =
      testing::DriverQueue::create(mem, testing::DriverQueueLayout{kSize, 0x1000, 0x2000, 0x3000});
  ASSERT_TRUE(drv.has_value());
  auto vq = Virtqueue::create(kSize);
  ASSERT_TRUE(vq.has_value());
  ASSERT_TRUE(vq->set_format(RingFormat::Split).has_value());
  vq->set_desc_area(0x1000);
  vq->set_driver_area(0x2000);
  vq->set_device_area(0x3000);
  vq->set_ready(true);
  ASSERT_TRUE(vq->validate(mem).has_value());
  ASSERT_TRUE(drv->add_chain(chain_of(3)).has_value());

  auto r = vq->pop(mem);
  ASSERT_TRUE(r.has_value() && r->has_value());
  ASSERT_TRUE(vq->push(mem, **r, 5).has_value());

  auto u = drv->take_used();
  ASSERT_TRUE(u.has_value() && u->has_value());
  EXPECT_EQ((*u)->len, 5u);
  EXPECT_EQ(vq->next_used(), 1);
  EXPECT_EQ(vq->format(), RingFormat::Split);
}

TEST(VirtqueueFacade, PackedFormatPopsAndPushesWithDescCount) {
  GuestMemory mem = make_memory();
  DriverPackedQueue drv = make_driver(mem);
  auto vq = Virtqueue::create(kSize);
  ASSERT_TRUE(vq.has_value());
  ASSERT_TRUE(vq->set_format(RingFormat::Packed).has_value());
  ASSERT_TRUE(vq->set_size(12).has_value());  // not a power of 2: fine for packed
  vq->set_desc_area(kDesc);
  vq->set_driver_area(kDriver);
  vq->set_device_area(kDevice);
  vq->set_event_idx(true);
  vq->set_ready(true);
  ASSERT_TRUE(vq->validate(mem).has_value());
  EXPECT_EQ(vq->desc_area(), kDesc);
  EXPECT_EQ(vq->driver_area(), kDriver);
  EXPECT_EQ(vq->device_area(), kDevice);
  EXPECT_EQ(vq->size(), 12u);
  DriverPackedQueue d12 = make_driver(mem, 12);

  for (int i = 0; i < 20; ++i) {  // 60 slots: 5 laps of 12
    ASSERT_TRUE(d12.add_chain(chain_of(3)).has_value());
    auto r = vq->pop(mem);
    ASSERT_TRUE(r.has_value() && r->has_value()) << i;
    EXPECT_EQ((*r)->desc_count, 3);
    ASSERT_TRUE(vq->push(mem, **r, 7).has_value());
    auto u = d12.take_used();
    ASSERT_TRUE(u.has_value() && u->has_value());
    EXPECT_EQ((*u)->len, 7u);
  }
  EXPECT_FALSE(vq->broken());
  EXPECT_EQ(vq->next_avail(), 0);  // 60 slots = 5 laps: position 0, wrap counter 0
  EXPECT_EQ(vq->next_used(), 0);
  auto pending = vq->enable_notification(mem);
  ASSERT_TRUE(pending.has_value());
  EXPECT_FALSE(*pending);

  ASSERT_TRUE(vq->set_next_avail(PACKED_WRAP_BIT | 3).has_value());
  EXPECT_EQ(vq->next_avail(), PACKED_WRAP_BIT | 3);
  EXPECT_FALSE(vq->set_next_avail(12).has_value());

  vq->reset();
  EXPECT_EQ(vq->format(), RingFormat::Packed);
  EXPECT_FALSE(vq->ready());
  (void)drv;
}

TEST(VirtqueueFacade, PackedFaultIsReportedThroughFacade) {
  GuestMemory mem = make_memory();
  DriverPackedQueue drv = make_driver(mem);
  auto vq = Virtqueue::create(kSize);
  ASSERT_TRUE(vq.has_value());
  ASSERT_TRUE(vq->set_format(RingFormat::Packed).has_value());
  vq->set_desc_area(kDesc);
  vq->set_driver_area(kDriver);
  vq->set_device_area(kDevice);
  vq->set_ready(true);
  ASSERT_TRUE(drv.publish_raw(std::vector<PvirtqDesc>{desc(kBuf, 8, 0, 99)}).has_value());

  EXPECT_FALSE(vq->pop(mem).has_value());
  EXPECT_TRUE(vq->broken());
  EXPECT_EQ(vq->fault(), QueueFault::BufferIdOutOfRange);
}

// ---- pop_direct: one-descriptor buffers in a burst ----

// Takes the one-descriptor buffers in order, stops before a chain (pop() takes it), then goes
// on; the ring wraps several times and every buffer comes back to the driver once.
TEST_F(PackedQueueTest, PopDirectTakesOneDescriptorBuffersAndLeavesChainsToPop) {
  std::vector<DirectChain> out(8);
  std::vector<uint16_t> done;
  uint32_t popped = 0;
  for (int round = 0; round < 6; ++round) {
    const Buf one{kBuf + 0x100u * static_cast<unsigned>(round), 64, true};
    auto a = drv.add_chain(std::span(&one, 1));
    auto b = drv.add_chain(std::span(&one, 1));
    auto c = drv.add_chain(chain_of(2));
    auto d = drv.add_chain(std::span(&one, 1));
    ASSERT_TRUE(a && b && c && d);
    auto r = q.pop_direct(mem, out);
    ASSERT_TRUE(r.has_value()) << r.error().message();
    ASSERT_EQ(r->count, 2u);
    EXPECT_TRUE(r->blocked) << "the chain stops the burst";
    EXPECT_EQ(out[0].head, *a);
    EXPECT_EQ(out[1].head, *b);
    EXPECT_EQ(out[0].seg.addr, one.gpa);
    EXPECT_EQ(out[0].seg.len, 64u);
    EXPECT_TRUE(out[0].seg.write);
    EXPECT_EQ(out[0].host, mem.span(one.gpa, 64)->data());
    const DescriptorChain cc = pop_one();
    EXPECT_EQ(cc.head, *c);
    EXPECT_EQ(cc.desc_count, 2);
    auto r2 = q.pop_direct(mem, out);
    ASSERT_TRUE(r2.has_value());
    ASSERT_EQ(r2->count, 1u);
    EXPECT_FALSE(r2->blocked) << "the ring is empty after D";
    EXPECT_EQ(out[0].head, *d);
    EXPECT_EQ(q.in_flight_slots(), 5u);
    popped += 4;
    ASSERT_TRUE(q.push(mem, *a, 1, 64).has_value());
    ASSERT_TRUE(q.push(mem, *c, 2, 0).has_value());
    ASSERT_TRUE(q.push(mem, *b, 1, 64).has_value());
    ASSERT_TRUE(q.push(mem, *d, 1, 64).has_value());
    for (;;) {
      auto u = drv.take_used();
      ASSERT_TRUE(u.has_value());
      if (!*u) break;
      done.push_back((*u)->id);
    }
  }
  EXPECT_EQ(done.size(), popped);
  EXPECT_EQ(q.in_flight_slots(), 0u);
  EXPECT_FALSE(q.avail_wrap()) << "30 slots through a ring of 16";
}

// Deferred returns appear to the driver only when published, all at once, each with its
// length; with VIRTIO_F_IN_ORDER a batch the device wrote nothing into is one used descriptor
// with the last buffer's id, at the batch's first slot (section 2.8.23), and the ring goes on
// after the whole batch.
TEST_F(PackedQueueTest, DeferredReturnsArePublishedTogetherAndInOrderBatchesAsOne) {
  std::vector<DirectChain> out(8);
  const Buf one{kBuf, 64, true};
  uint16_t ids[3];
  for (uint16_t& id : ids) id = drv.add_chain(std::span(&one, 1)).value_or(0xffff);
  auto r = q.pop_direct(mem, out);
  ASSERT_TRUE(r.has_value() && r->count == 3u);
  for (uint16_t i = 0; i < 3; ++i) ASSERT_TRUE(q.push_deferred(mem, ids[i], 1, 10u + i).has_value());
  auto none = drv.take_used();
  ASSERT_TRUE(none.has_value());
  EXPECT_FALSE(none->has_value()) << "nothing is visible before publish_used()";
  ASSERT_TRUE(q.publish_used(mem).has_value());
  for (uint16_t i = 0; i < 3; ++i) {
    auto u = drv.take_used();
    ASSERT_TRUE(u.has_value() && u->has_value());
    EXPECT_EQ((*u)->id, ids[i]);
    EXPECT_EQ((*u)->len, 10u + i) << "each buffer keeps its length";
  }

  // In order, nothing written: one descriptor for three buffers.
  q.set_in_order(true);
  const uint16_t first_slot = q.next_used();
  for (uint16_t& id : ids) id = drv.add_chain(std::span(&one, 1)).value_or(0xffff);
  r = q.pop_direct(mem, out);
  ASSERT_TRUE(r.has_value() && r->count == 3u);
  for (uint16_t i = 0; i < 3; ++i) ASSERT_TRUE(q.push_deferred(mem, ids[i], 1, 0).has_value());
  ASSERT_TRUE(q.needs_notification(mem).has_value());  // publishes too
  auto d0 = drv.read_desc(first_slot);
  auto d1 = drv.read_desc(static_cast<uint16_t>(first_slot + 1));
  ASSERT_TRUE(d0 && d1);
  EXPECT_EQ(d0->id, ids[2]) << "the batch's descriptor carries the last buffer's id";
  EXPECT_EQ(d0->len, 0u);
  EXPECT_TRUE(packed_is_used(d0->flags, true));
  EXPECT_FALSE(packed_is_used(d1->flags, true)) << "the rest of the batch is not written";
  EXPECT_EQ(q.next_used(), first_slot + 3);
  EXPECT_EQ(q.in_flight_slots(), 0u);
}

// Slots whose used descriptors are reserved but not yet written are still the device's: a
// hostile driver that makes buffers available in them anyway overruns the ring (and cannot make
// the device reserve more used descriptors than the ring has).
TEST_F(PackedQueueTest, BuffersPostedOverUnpublishedUsedSlotsOverrunTheRing) {
  PackedQueue q4 = make_device_queue(4);
  DriverPackedQueue d4 = make_driver(mem, 4);
  const Buf one{kBuf, 64, false};
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(d4.add_chain(std::span(&one, 1)).has_value());
  std::vector<DirectChain> out(4);
  auto r = q4.pop_direct(mem, out);
  ASSERT_TRUE(r.has_value() && r->count == 4u);
  for (uint32_t i = 0; i < 4; ++i) ASSERT_TRUE(q4.push_deferred(mem, out[i].head, 1, 0).has_value());
  // Slot 0 made available for the next lap without the driver having seen its used descriptor.
  ASSERT_TRUE(d4.write_desc(0, desc(kBuf, 64, packed_avail_bits(false), 0)).has_value());
  EXPECT_FALSE(q4.pop(mem).has_value());
  EXPECT_EQ(q4.fault(), QueueFault::RingOverrun);
  PackedQueue q5 = make_device_queue(4);
  DriverPackedQueue d5 = make_driver(mem, 4);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(d5.add_chain(std::span(&one, 1)).has_value());
  r = q5.pop_direct(mem, out);
  ASSERT_TRUE(r.has_value() && r->count == 4u);
  for (uint32_t i = 0; i < 4; ++i) ASSERT_TRUE(q5.push_deferred(mem, out[i].head, 1, 0).has_value());
  ASSERT_TRUE(d5.write_desc(0, desc(kBuf, 64, packed_avail_bits(false), 0)).has_value());
  EXPECT_FALSE(q5.pop_direct(mem, out).has_value());
  EXPECT_EQ(q5.fault(), QueueFault::RingOverrun);
}

// The same faults as pop(): a buffer id out of range or held twice, a buffer outside memory.
TEST_F(PackedQueueTest, PopDirectRefusesWhatPopRefuses) {
  std::vector<DirectChain> out(4);
  publish({desc(kBuf, 8, VIRTQ_DESC_F_WRITE, kSize)});
  EXPECT_FALSE(q.pop_direct(mem, out).has_value());
  EXPECT_EQ(q.fault(), QueueFault::BufferIdOutOfRange);

  PackedQueue q2 = make_device_queue();
  DriverPackedQueue d2 = make_driver(mem);
  const PvirtqDesc outside[] = {desc(kMiB - 4, 8, VIRTQ_DESC_F_WRITE, 1)};
  ASSERT_TRUE(d2.publish_raw(outside).has_value());
  EXPECT_FALSE(q2.pop_direct(mem, out).has_value());
  EXPECT_EQ(q2.fault(), QueueFault::BufferOutsideMemory);

  PackedQueue q3 = make_device_queue();
  DriverPackedQueue d3 = make_driver(mem);
  const PvirtqDesc twice[] = {desc(kBuf, 8, VIRTQ_DESC_F_WRITE, 3),
                              desc(kBuf, 8, VIRTQ_DESC_F_WRITE, 3)};
  ASSERT_TRUE(d3.publish_raw(twice).has_value());
  // The first buffer was taken before the second broke the queue: the caller gets it, and the
  // next call the fault.
  auto partial = q3.pop_direct(mem, out);
  ASSERT_TRUE(partial.has_value());
  EXPECT_EQ(partial->count, 1u);
  EXPECT_EQ(out[0].head, 3);
  EXPECT_EQ(q3.fault(), QueueFault::BufferIdInUse);
  EXPECT_FALSE(q3.pop_direct(mem, out).has_value()) << "a broken queue stays broken";
}

// ---- inflight tracking (INFLIGHT_SHMFD, inflight.hpp) ----

class PackedInflightTest : public PackedQueueTest {
 protected:
  std::vector<uint8_t> area = std::vector<uint8_t>(inflight_packed_queue_bytes(kSize));
  InflightPackedHeader& hdr() { return *reinterpret_cast<InflightPackedHeader*>(area.data()); }
  InflightDescPacked& entry(uint16_t i) {
    return reinterpret_cast<InflightDescPacked*>(area.data() + sizeof(InflightPackedHeader))[i];
  }
  // The head entry holding buffer `id` (whatever its mark), or kSize.
  uint16_t head_entry(uint16_t id) {
    for (uint16_t i = 0; i < kSize; ++i)
      if (entry(i).num != 0 && entry(i).id == id) return i;
    return kSize;
  }
  uint16_t add(uint32_t n, uint64_t base) {
    const auto bufs = chain_of(n, base);
    auto id = drv.add_chain(bufs);
    EXPECT_TRUE(id.has_value()) << id.error().message();
    return id.value_or(0xffff);
  }
  // The segments of a chain as (addr, len, write).
  static std::vector<std::tuple<uint64_t, uint32_t, bool>> segs(const DescriptorChain& c) {
    std::vector<std::tuple<uint64_t, uint32_t, bool>> v;
    for (const Segment& sg : c.segments) v.emplace_back(sg.addr, sg.len, sg.write);
    return v;
  }
  static std::vector<std::tuple<uint64_t, uint32_t, bool>> segs(const std::vector<Buf>& b) {
    std::vector<std::tuple<uint64_t, uint32_t, bool>> v;
    for (const Buf& x : b) v.emplace_back(x.gpa, x.len, x.write);
    return v;
  }
  std::vector<uint16_t> take_all() {
    std::vector<uint16_t> ids;
    for (;;) {
      auto u = drv.take_used();
      EXPECT_TRUE(u.has_value());
      if (!u || !*u) return ids;
      ids.push_back((*u)->id);
    }
  }
};

// A back-end pops A (two descriptors), B and C, completes C first — its used descriptor lands in
// A's first slot — and pops D, made available after them; then it dies. Its
// successor resubmits A, B and D from the area, oldest first, A's two descriptors intact
// although the ring no longer holds A's head, and carries on at the right positions.
TEST_F(PackedInflightTest, SuccessorResubmitsBuffersWhoseSlotsUsedDescriptorsOverwrote) {
  ASSERT_TRUE(q.attach_inflight(mem, area).has_value());
  EXPECT_EQ(hdr().version, kInflightVersion);
  EXPECT_EQ(hdr().desc_num, kSize);
  // Traffic first, so that the crash happens after the ring wrapped (both wrap counters 0).
  for (int i = 0; i < 9; ++i) {
    const uint16_t id = add(2, kBuf + 0x1000);
    const auto c = pop_one();
    ASSERT_EQ(c.head, id);
    ASSERT_TRUE(q.push(mem, c.head, c.desc_count, 0).has_value());
    ASSERT_EQ(take_all(), std::vector<uint16_t>{id});
  }
  EXPECT_FALSE(q.avail_wrap());
  const uint16_t start = q.next_avail();  // 18 slots later: position 2 of lap 2
  const auto a_bufs = chain_of(2, kBuf);
  const uint16_t a = add(2, kBuf);
  const uint16_t b = add(1, kBuf + 0x200);
  const uint16_t c = add(1, kBuf + 0x300);
  EXPECT_EQ(pop_one().head, a);
  EXPECT_EQ(pop_one().head, b);
  const auto cc = pop_one();
  EXPECT_EQ(cc.head, c);
  ASSERT_TRUE(q.push(mem, c, cc.desc_count, 8).has_value());  // used descriptor in A's slot
  EXPECT_EQ(take_all(), std::vector<uint16_t>{c});
  const uint16_t d = add(1, kBuf + 0x400);
  EXPECT_EQ(pop_one().head, d);
  EXPECT_EQ(hdr().used_idx, (start + 1) % kSize);
  EXPECT_EQ(q.in_flight_slots(), 4u);
  const uint16_t avail_state = q.avail_state();

  PackedQueue next = make_device_queue();  // the new back-end, positions unknown to it
  ASSERT_TRUE(next.attach_inflight(mem, area).has_value());
  EXPECT_EQ(next.resubmit_pending(), 3u);
  EXPECT_EQ(next.used_state(), static_cast<uint16_t>(((start + 1) % kSize)))
      << "one slot used since the crash-free point, wrap counter 0";
  EXPECT_EQ(next.avail_state(), avail_state);
  EXPECT_EQ(next.in_flight_slots(), 4u);
  auto pa = next.pop(mem);
  ASSERT_TRUE(pa.has_value() && pa->has_value());
  EXPECT_EQ((*pa)->head, a);
  EXPECT_EQ((*pa)->desc_count, 2);
  EXPECT_EQ(segs(**pa), segs(a_bufs));
  const DescriptorChain ca = **pa;
  auto pb = next.pop(mem);
  ASSERT_TRUE(pb.has_value() && pb->has_value());
  EXPECT_EQ((*pb)->head, b);
  auto pd = next.pop(mem);
  ASSERT_TRUE(pd.has_value() && pd->has_value());
  EXPECT_EQ((*pd)->head, d);
  auto none = next.pop(mem);
  ASSERT_TRUE(none.has_value());
  EXPECT_FALSE(none->has_value()) << "C was completed and must not come back";
  // Completed in another order; the driver sees each once, and new buffers still flow.
  ASSERT_TRUE(next.push(mem, d, 1, 0).has_value());
  ASSERT_TRUE(next.push(mem, a, ca.desc_count, 0).has_value());
  ASSERT_TRUE(next.push(mem, b, 1, 0).has_value());
  EXPECT_EQ(take_all(), (std::vector<uint16_t>{d, a, b}));
  const uint16_t e = add(1, kBuf + 0x500);
  auto pe = next.pop(mem);
  ASSERT_TRUE(pe.has_value() && pe->has_value());
  EXPECT_EQ((*pe)->head, e);
  ASSERT_TRUE(next.push(mem, e, 1, 0).has_value());
  EXPECT_EQ(take_all(), std::vector<uint16_t>{e});
  for (uint16_t i = 0; i < kSize; ++i) EXPECT_EQ(entry(i).inflight, 0) << "entry " << i;
}

// Death inside push(): marked "being completed" at old_used_idx. Before the used descriptor
// reached the ring the buffer is still in flight; after, it is done and the position moves past
// it, even when used_idx itself was not yet written.
TEST_F(PackedInflightTest, ADeathInsidePushIsResolvedByTheRingSlot) {
  ASSERT_TRUE(q.attach_inflight(mem, area).has_value());
  const uint16_t a = add(1, kBuf);
  const uint16_t b = add(1, kBuf + 0x100);
  EXPECT_EQ(pop_one().head, a);
  EXPECT_EQ(pop_one().head, b);
  const uint16_t ea = head_entry(a);
  ASSERT_LT(ea, kSize);
  // (1) Marked, not published: what push() wrote before the ring store.
  entry(ea).inflight = kInflightPackedCompleting;
  hdr().old_used_idx = 0;
  hdr().old_used_wrap_counter = 1;
  {
    PackedQueue next = make_device_queue();
    ASSERT_TRUE(next.attach_inflight(mem, area).has_value());
    EXPECT_EQ(next.resubmit_pending(), 2u);
    EXPECT_EQ(next.used_state(), 0x8000);
    EXPECT_EQ(next.avail_state(), 0x8002);
    EXPECT_EQ(entry(ea).inflight, 1);
  }
  // (2) Published, used_idx not yet written: undo what push() wrote after the ring store.
  PackedQueue q2 = make_device_queue();
  ASSERT_TRUE(q2.attach_inflight(mem, area).has_value());
  auto r1 = q2.pop(mem);
  auto r2 = q2.pop(mem);
  ASSERT_TRUE(r1 && *r1 && r2 && *r2);
  ASSERT_TRUE(q2.push(mem, a, 1, 0).has_value());
  EXPECT_EQ(hdr().used_idx, 1);
  hdr().used_idx = 0;
  entry(head_entry(a)).inflight = kInflightPackedCompleting;
  PackedQueue next = make_device_queue();
  ASSERT_TRUE(next.attach_inflight(mem, area).has_value());
  EXPECT_EQ(next.resubmit_pending(), 1u) << "A was published and must not be replayed";
  EXPECT_EQ(next.used_state(), 0x8001);
  EXPECT_EQ(hdr().used_idx, 1);
  auto rb = next.pop(mem);
  ASSERT_TRUE(rb.has_value() && rb->has_value());
  EXPECT_EQ((*rb)->head, b);
  ASSERT_TRUE(next.push(mem, b, 1, 0).has_value());
  EXPECT_EQ(take_all(), (std::vector<uint16_t>{a, b}));
}

// pop_direct() records what it takes as pop() does; a successor resubmits those first, and
// pop_direct() leaves them to pop().
TEST_F(PackedInflightTest, PopDirectRecordsWhatItTakes) {
  ASSERT_TRUE(q.attach_inflight(mem, area).has_value());
  const uint16_t a = add(1, kBuf);
  const uint16_t b = add(1, kBuf + 0x100);
  std::vector<DirectChain> out(4);
  auto r = q.pop_direct(mem, out);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->count, 2u);
  ASSERT_TRUE(q.push(mem, b, 1, 0).has_value());
  PackedQueue next = make_device_queue();
  ASSERT_TRUE(next.attach_inflight(mem, area).has_value());
  EXPECT_EQ(next.resubmit_pending(), 1u);
  auto blocked = next.pop_direct(mem, out);
  ASSERT_TRUE(blocked.has_value());
  EXPECT_EQ(blocked->count, 0u);
  EXPECT_TRUE(blocked->blocked) << "recovered buffers are pop()'s";
  auto ra = next.pop(mem);
  ASSERT_TRUE(ra && *ra);
  EXPECT_EQ((*ra)->head, a);
  EXPECT_EQ(segs(**ra), segs(chain_of(1, kBuf)));
}

// A recovered buffer belongs to the device only once pop() has handed it out again: pushing it
// before is a device bug, refused like any push of a buffer not held (found by fuzzing).
TEST_F(PackedInflightTest, ARecoveredBufferCannotBePushedBeforePopReturnsIt) {
  ASSERT_TRUE(q.attach_inflight(mem, area).has_value());
  const uint16_t a = add(1, kBuf);
  EXPECT_EQ(pop_one().head, a);
  PackedQueue next = make_device_queue();
  ASSERT_TRUE(next.attach_inflight(mem, area).has_value());
  ASSERT_EQ(next.resubmit_pending(), 1u);
  EXPECT_FALSE(next.push(mem, a, 1, 0).has_value());
  EXPECT_EQ(next.fault(), QueueFault::UsedIdNotInFlight);
}

// The area is the front-end's: every inconsistency is refused, and descriptors it holds are
// checked like the ring's own when resubmitted.
TEST_F(PackedInflightTest, AHostileAreaIsRefusedOrBounded) {
  EXPECT_FALSE(q.attach_inflight(mem, std::span<uint8_t>(area.data(), 64)).has_value());
  hdr().version = 9;
  EXPECT_FALSE(q.attach_inflight(mem, area).has_value());
  hdr().version = kInflightVersion;
  hdr().desc_num = kSize + 1;
  EXPECT_FALSE(q.attach_inflight(mem, area).has_value());
  hdr().desc_num = kSize;
  auto refused = [&](const char* why) {
    PackedQueue n = make_device_queue();
    auto r = n.attach_inflight(mem, area);
    EXPECT_FALSE(r.has_value()) << why;
    EXPECT_FALSE(n.inflight_attached()) << why;
  };
  hdr().used_idx = kSize;
  refused("used_idx outside the ring");
  hdr().used_idx = 0;
  entry(0) = InflightDescPacked{3, 0, 0, 0, 1, 0, 0, 0, 8, kBuf};
  refused("unknown mark");
  entry(0) = InflightDescPacked{1, 0, 0, 0, 1, 0, kSize, 0, 8, kBuf};
  refused("buffer id outside the ring");
  entry(0) = InflightDescPacked{1, 0, 5, 5, 2, 0, 1, 0, 8, kBuf};
  entry(5) = InflightDescPacked{1, 0, 0, 0, 1, 1, 2, 0, 8, kBuf};
  refused("a list running into another buffer's entry");
  entry(0) = InflightDescPacked{1, 0, 0xffff, 0, 2, 0, 1, 0, 8, kBuf};
  entry(5) = {};
  refused("a list leaving the area");
  entry(0) = InflightDescPacked{2, 0, 0, 0, 1, 0, 1, 0, 8, kBuf};
  entry(1) = InflightDescPacked{2, 0, 0, 0, 1, 1, 2, 0, 8, kBuf};
  refused("two buffers being completed");
  // Consistent, but its descriptor points outside guest memory: the queue faults on pop, as it
  // would for the same descriptor in the ring.
  entry(1) = {};
  entry(0) = InflightDescPacked{1, 0, 0, 0, 1, 0, 1, 0, 8, 1ull << 40};
  PackedQueue n = make_device_queue();
  ASSERT_TRUE(n.attach_inflight(mem, area).has_value());
  EXPECT_EQ(n.resubmit_pending(), 1u);
  auto r = n.pop(mem);
  EXPECT_FALSE(r.has_value());
  EXPECT_TRUE(n.broken());
}

}  // namespace
}  // namespace iovirt::virtio
