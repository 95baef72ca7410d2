#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/inflight.hpp"
#include "iovirt/virtio/split_queue.hpp"
#include "iovirt/virtio/virtqueue.hpp"
#include "iovirt/virtio/testing/driver_queue.hpp"

namespace iovirt::virtio {
namespace {

using testing::Buf;
using testing::DriverQueue;
using testing::DriverQueueLayout;

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint16_t kSize = 16;
constexpr uint64_t kDesc = 0x1000;
constexpr uint64_t kAvail = 0x2000;
constexpr uint64_t kUsed = 0x3000;
constexpr uint64_t kTable = 0x4000;
constexpr uint64_t kTable2 = 0x5000;
constexpr uint64_t kBuf = 0x10000;

GuestMemory make_memory() {
  const RegionSpec specs[] = {{0, kMiB}};
  auto m = GuestMemory::create(specs);
  EXPECT_TRUE(m.has_value()) << m.error().message();
  return std::move(*m);
}

SplitQueue make_device_queue(bool event_idx = false, bool indirect = false) {
  auto q = SplitQueue::create(kSize);
  EXPECT_TRUE(q.has_value()) << q.error().message();
  q->set_desc_table(kDesc);
  q->set_avail_ring(kAvail);
  q->set_used_ring(kUsed);
  q->set_event_idx(event_idx);
  q->set_indirect(indirect);
  q->set_ready(true);
  return std::move(*q);
}

DriverQueue make_driver_queue(const GuestMemory& mem) {
  auto d = DriverQueue::create(mem, DriverQueueLayout{kSize, kDesc, kAvail, kUsed});
  EXPECT_TRUE(d.has_value()) << d.error().message();
  return std::move(*d);
}

class SplitQueueTest : public ::testing::Test {
 protected:
  // Pops expecting an error; returns the queue's fault.
  QueueFault pop_fault() {
    auto r = q.pop(mem);
    EXPECT_FALSE(r.has_value());
    if (!r) last_error = r.error().message();
    return q.fault();
  }
  void add_raw_head(uint16_t head, const VirtqDesc& d) {
    ASSERT_TRUE(drv.write_desc(head, d).has_value());
    ASSERT_TRUE(drv.publish_head(head).has_value());
  }

  GuestMemory mem = make_memory();
  DriverQueue drv = make_driver_queue(mem);
  SplitQueue q = make_device_queue();
  std::string last_error;
};

// Descriptor i chains to (i + 1) % n for every i < n.
Status write_ring_of_descriptors(DriverQueue& drv, uint16_t n) {
  for (uint16_t i = 0; i < n; ++i) {
    const auto next = static_cast<uint16_t>((i + 1) % n);
    if (auto st = drv.write_desc(i, VirtqDesc{kBuf, 8, VIRTQ_DESC_F_NEXT, next}); !st) return st;
  }
  return {};
}

class SplitQueueIndirectTest : public SplitQueueTest {
 protected:
  SplitQueueIndirectTest() { q.set_indirect(true); }
};

// --- creation and validate ---

TEST(SplitQueueCreate, RefusesSizeNotPowerOfTwo) {
  auto q = SplitQueue::create(24);

  ASSERT_FALSE(q.has_value());
  EXPECT_NE(q.error().message().find("invalid queue size"), std::string::npos);
}

TEST(SplitQueueCreate, AcceptsMaximumSize) {
  auto q = SplitQueue::create(32768);

  ASSERT_TRUE(q.has_value());
  EXPECT_EQ(q->size(), 32768u);
}

TEST(SplitQueueCreate, SetSizeRefusesAboveDeviceMaximum) {
  auto q = SplitQueue::create(16);
  ASSERT_TRUE(q.has_value());

  auto st = q->set_size(32);

  EXPECT_FALSE(st.has_value());
  EXPECT_EQ(q->fault(), QueueFault::InvalidSize);
}

TEST_F(SplitQueueTest, ValidateAcceptsAlignedRingsInsideMemory) {
  auto st = q.validate(mem);

  EXPECT_TRUE(st.has_value()) << st.error().message();
  EXPECT_FALSE(q.broken());
}

TEST_F(SplitQueueTest, ValidateRefusesMisalignedDescriptorTable) {
  q.set_desc_table(kDesc + 8);

  auto st = q.validate(mem);

  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::RingMisaligned);
  EXPECT_NE(st.error().message().find("descriptor table"), std::string::npos);
}

TEST_F(SplitQueueTest, ValidateRefusesMisalignedAvailRing) {
  q.set_avail_ring(kAvail + 1);

  auto st = q.validate(mem);

  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::RingMisaligned);
}

// Found by fuzz_split_queue: after validate() refused a misaligned ring, the notification
// helpers still read and wrote it (a misaligned atomic access, undefined behaviour).
TEST_F(SplitQueueTest, NotificationHelpersRefuseAQueueThatFailedValidation) {
  q.set_avail_ring(kAvail + 1);
  q.set_event_idx(true);
  ASSERT_FALSE(q.validate(mem).has_value());

  auto en = q.enable_notification(mem);
  auto dis = q.disable_notification(mem);
  auto ev = q.set_avail_event(mem, 1);
  auto need = q.needs_notification(mem);

  EXPECT_FALSE(en.has_value());
  EXPECT_FALSE(dis.has_value());
  EXPECT_FALSE(ev.has_value());
  EXPECT_FALSE(need.has_value());
  EXPECT_EQ(q.fault(), QueueFault::RingMisaligned);
}

TEST_F(SplitQueueTest, ValidateRefusesMisalignedUsedRing) {
  q.set_used_ring(kUsed + 2);

  auto st = q.validate(mem);

  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::RingMisaligned);
}

TEST_F(SplitQueueTest, ValidateRefusesUsedRingCrossingEndOfMemory) {
  q.set_used_ring(kMiB - 8);

  auto st = q.validate(mem);

  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::RingOutsideMemory);
  EXPECT_TRUE(q.broken());
}

TEST_F(SplitQueueTest, ValidateRefusesDescriptorTableOutsideMemory) {
  q.set_desc_table(4 * kMiB);

  auto st = q.validate(mem);

  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::RingOutsideMemory);
}

// --- happy path ---

TEST_F(SplitQueueTest, PopOnEmptyRingReturnsNothing) {
  auto r = q.pop(mem);

  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_FALSE(r->has_value());
}

TEST_F(SplitQueueTest, PopReturnsSingleDescriptorChain) {
  const Buf bufs[] = {{kBuf, 512, false}};
  auto head = drv.add_chain(bufs);
  ASSERT_TRUE(head.has_value());

  auto r = q.pop(mem);

  ASSERT_TRUE(r.has_value()) << r.error().message();
  ASSERT_TRUE(r->has_value());
  const DescriptorChain& c = **r;
  EXPECT_EQ(c.head, *head);
  ASSERT_EQ(c.segments.size(), 1u);
  EXPECT_EQ(c.segments[0].addr, kBuf);
  EXPECT_EQ(c.segments[0].len, 512u);
  EXPECT_FALSE(c.segments[0].write);
  EXPECT_EQ(c.readable_len, 512u);
  EXPECT_EQ(c.writable_len, 0u);
  EXPECT_EQ(q.next_avail(), 1);
}

TEST_F(SplitQueueTest, PopReturnsReadableThenWritableSegmentsInOrder) {
  const Buf bufs[] = {{kBuf, 16, false}, {kBuf + 0x1000, 4096, false}, {kBuf + 0x2000, 1, true}};
  ASSERT_TRUE(drv.add_chain(bufs).has_value());

  auto r = q.pop(mem);

  ASSERT_TRUE(r.has_value()) << r.error().message();
  ASSERT_TRUE(r->has_value());
  const DescriptorChain& c = **r;
  ASSERT_EQ(c.segments.size(), 3u);
  EXPECT_EQ(c.segments[1].addr, kBuf + 0x1000);
  EXPECT_FALSE(c.segments[1].write);
  EXPECT_TRUE(c.segments[2].write);
  EXPECT_EQ(c.readable_len, 4112u);
  EXPECT_EQ(c.writable_len, 1u);
}

TEST_F(SplitQueueTest, PushMakesUsedElementVisibleToDriver) {
  const Buf bufs[] = {{kBuf, 64, true}};
  auto head = drv.add_chain(bufs);
  ASSERT_TRUE(head.has_value());
  auto r = q.pop(mem);
  ASSERT_TRUE(r.has_value() && r->has_value());

  auto st = q.push(mem, (*r)->head, 60);

  ASSERT_TRUE(st.has_value()) << st.error().message();
  auto used = drv.take_used();
  ASSERT_TRUE(used.has_value());
  ASSERT_TRUE(used->has_value());
  EXPECT_EQ((*used)->id, *head);
  EXPECT_EQ((*used)->len, 60u);
  EXPECT_EQ(q.next_used(), 1);
}

TEST_F(SplitQueueTest, ChainIsLimitedToQueueSizeDescriptors) {
  std::array<Buf, kSize> bufs{};
  for (size_t i = 0; i < bufs.size(); ++i) bufs[i] = Buf{kBuf + 0x100 * i, 0x100, false};
  ASSERT_TRUE(drv.add_chain(bufs).has_value());

  auto r = q.pop(mem);

  ASSERT_TRUE(r.has_value()) << r.error().message();
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->segments.size(), kSize);
}

// Runs n chains through add/pop/push/take; returns how many round trips succeeded.
uint32_t round_trip_chains(SplitQueue& q, DriverQueue& drv, const GuestMemory& mem, uint32_t n) {
  uint32_t ok = 0;
  const Buf bufs[] = {{kBuf, 8, false}, {kBuf + 8, 8, true}};
  for (uint32_t i = 0; i < n; ++i) {
    auto head = drv.add_chain(bufs);
    auto c = q.pop(mem);
    if (!head || !c || !c->has_value() || (*c)->head != *head) break;
    if (!q.push(mem, (*c)->head, 8)) break;
    auto used = drv.take_used();
    if (!used || !used->has_value() || (*used)->id != *head) break;
    ++ok;
  }
  return ok;
}

TEST_F(SplitQueueTest, IndicesWrapAroundSixteenBitsOverSeveralLaps) {
  constexpr uint32_t kChains = 3 * 65536 + 7;

  const uint32_t done = round_trip_chains(q, drv, mem, kChains);

  EXPECT_EQ(done, kChains);
  EXPECT_EQ(q.next_avail(), 7);
  EXPECT_EQ(q.next_used(), 7);
  EXPECT_FALSE(q.broken());
}

TEST_F(SplitQueueTest, PopStartsAtRestoredIndexAcrossWrap) {
  q.set_next_avail(65535);
  ASSERT_TRUE(drv.set_avail_idx(65535).has_value());
  const Buf bufs[] = {{kBuf, 4, false}};
  ASSERT_TRUE(drv.add_chain(bufs).has_value());

  auto r = q.pop(mem);

  ASSERT_TRUE(r.has_value()) << r.error().message();
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ(q.next_avail(), 0);
}

// --- indirect ---

TEST_F(SplitQueueIndirectTest, PopWalksIndirectTable) {
  const Buf bufs[] = {{kBuf, 10, false}, {kBuf + 0x100, 20, false}, {kBuf + 0x200, 30, true}};
  auto head = drv.add_indirect_chain(bufs, kTable);
  ASSERT_TRUE(head.has_value());

  auto r = q.pop(mem);

  ASSERT_TRUE(r.has_value()) << r.error().message();
  ASSERT_TRUE(r->has_value());
  const DescriptorChain& c = **r;
  EXPECT_EQ(c.head, *head);
  ASSERT_EQ(c.segments.size(), 3u);
  EXPECT_EQ(c.segments[0].addr, kBuf);
  EXPECT_EQ(c.segments[2].len, 30u);
  EXPECT_TRUE(c.segments[2].write);
  EXPECT_EQ(c.readable_len, 30u);
  EXPECT_EQ(c.writable_len, 30u);
}

TEST_F(SplitQueueIndirectTest, IndirectTableMayHoldMoreEntriesThanQueueSize) {
  std::array<Buf, 2 * kSize> bufs{};
  for (size_t i = 0; i < bufs.size(); ++i) bufs[i] = Buf{kBuf + 0x10 * i, 0x10, false};
  ASSERT_TRUE(drv.add_indirect_chain(bufs, kTable).has_value());

  auto r = q.pop(mem);

  ASSERT_TRUE(r.has_value()) << r.error().message();
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->segments.size(), 2u * kSize);
}

TEST_F(SplitQueueTest, IndirectWithoutNegotiatedFeatureBreaksQueue) {
  const Buf bufs[] = {{kBuf, 10, false}};
  ASSERT_TRUE(drv.add_indirect_chain(bufs, kTable).has_value());

  EXPECT_EQ(pop_fault(), QueueFault::IndirectNotNegotiated);
  EXPECT_TRUE(q.broken());
}

TEST_F(SplitQueueIndirectTest, IndirectInsideIndirectBreaksQueue) {
  const VirtqDesc inner[] = {{kBuf, 8, 0, 0}};
  const VirtqDesc outer[] = {{kBuf, 8, VIRTQ_DESC_F_NEXT, 1},
                             {kTable2, 16, VIRTQ_DESC_F_INDIRECT, 0}};
  ASSERT_TRUE(drv.write_table(kTable2, inner).has_value());
  ASSERT_TRUE(drv.write_table(kTable, outer).has_value());
  add_raw_head(0, VirtqDesc{kTable, 32, VIRTQ_DESC_F_INDIRECT, 0});

  EXPECT_EQ(pop_fault(), QueueFault::NestedIndirect);
  EXPECT_TRUE(q.broken());
}

TEST_F(SplitQueueIndirectTest, IndirectTogetherWithNextBreaksQueue) {
  const VirtqDesc table[] = {{kBuf, 8, 0, 0}};
  ASSERT_TRUE(drv.write_table(kTable, table).has_value());
  ASSERT_TRUE(drv.write_desc(1, VirtqDesc{kBuf, 8, 0, 0}).has_value());
  add_raw_head(0, VirtqDesc{kTable, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1});

  EXPECT_EQ(pop_fault(), QueueFault::IndirectWithNext);
}

TEST_F(SplitQueueIndirectTest, IndirectTableLengthNotMultipleOf16BreaksQueue) {
  add_raw_head(0, VirtqDesc{kTable, 24, VIRTQ_DESC_F_INDIRECT, 0});

  EXPECT_EQ(pop_fault(), QueueFault::IndirectBadLength);
}

TEST_F(SplitQueueIndirectTest, EmptyIndirectTableBreaksQueue) {
  add_raw_head(0, VirtqDesc{kTable, 0, VIRTQ_DESC_F_INDIRECT, 0});

  EXPECT_EQ(pop_fault(), QueueFault::IndirectBadLength);
}

TEST_F(SplitQueueIndirectTest, IndirectTableAboveEntryCapBreaksQueue) {
  add_raw_head(
      0, VirtqDesc{kTable, 16 * (SplitQueue::kMaxIndirectEntries + 1), VIRTQ_DESC_F_INDIRECT, 0});

  EXPECT_EQ(pop_fault(), QueueFault::IndirectTooLarge);
}

TEST_F(SplitQueueIndirectTest, IndirectTableOutsideMemoryBreaksQueue) {
  add_raw_head(0, VirtqDesc{kMiB - 16, 32, VIRTQ_DESC_F_INDIRECT, 0});

  EXPECT_EQ(pop_fault(), QueueFault::IndirectOutsideMemory);
}

TEST_F(SplitQueueIndirectTest, IndirectNextBeyondTableBreaksQueue) {
  const VirtqDesc table[] = {{kBuf, 8, VIRTQ_DESC_F_NEXT, 1}, {kBuf, 8, VIRTQ_DESC_F_NEXT, 2}};
  ASSERT_TRUE(drv.write_table(kTable, table).has_value());
  add_raw_head(0, VirtqDesc{kTable, 32, VIRTQ_DESC_F_INDIRECT, 0});

  EXPECT_EQ(pop_fault(), QueueFault::IndirectNextOutOfRange);
}

TEST_F(SplitQueueIndirectTest, LoopInsideIndirectTableBreaksQueue) {
  const VirtqDesc table[] = {{kBuf, 8, VIRTQ_DESC_F_NEXT, 1}, {kBuf, 8, VIRTQ_DESC_F_NEXT, 0}};
  ASSERT_TRUE(drv.write_table(kTable, table).has_value());
  add_raw_head(0, VirtqDesc{kTable, 32, VIRTQ_DESC_F_INDIRECT, 0});

  EXPECT_EQ(pop_fault(), QueueFault::IndirectChainLoop);
}

// --- hostile guest ---

TEST_F(SplitQueueTest, DescriptorLoopBreaksQueue) {
  ASSERT_TRUE(drv.write_desc(1, VirtqDesc{kBuf, 8, VIRTQ_DESC_F_NEXT, 0}).has_value());
  add_raw_head(0, VirtqDesc{kBuf, 8, VIRTQ_DESC_F_NEXT, 1});

  EXPECT_EQ(pop_fault(), QueueFault::ChainLoop);
  EXPECT_NE(last_error.find("descriptor chain loops (longer than queue size 16"), std::string::npos)
      << last_error;
  EXPECT_TRUE(q.broken());
}

TEST_F(SplitQueueTest, SelfLoopingDescriptorBreaksQueue) {
  add_raw_head(3, VirtqDesc{kBuf, 8, VIRTQ_DESC_F_NEXT, 3});

  EXPECT_EQ(pop_fault(), QueueFault::ChainLoop);
}

TEST_F(SplitQueueTest, ChainThroughEveryDescriptorAndBackBreaksQueue) {
  // 0 -> 1 -> ... -> 15 -> 0: no short cycle, but longer than the queue size.
  ASSERT_TRUE(write_ring_of_descriptors(drv, kSize).has_value());
  ASSERT_TRUE(drv.publish_head(0).has_value());

  EXPECT_EQ(pop_fault(), QueueFault::ChainLoop);
  EXPECT_TRUE(q.broken());
}

TEST_F(SplitQueueTest, BufferOutsideMemoryBreaksQueue) {
  const Buf bufs[] = {{kBuf, 8, false}, {2 * kMiB, 8, true}};
  ASSERT_TRUE(drv.add_chain(bufs).has_value());

  EXPECT_EQ(pop_fault(), QueueFault::BufferOutsideMemory);
  EXPECT_TRUE(q.broken());
}

TEST_F(SplitQueueTest, BufferCrossingEndOfMemoryBreaksQueue) {
  const Buf bufs[] = {{kMiB - 4, 8, false}};
  ASSERT_TRUE(drv.add_chain(bufs).has_value());

  EXPECT_EQ(pop_fault(), QueueFault::BufferOutsideMemory);
}

TEST(SplitQueueHostile, BufferStraddlingTwoRegionsBreaksQueue) {
  // Adjacent regions are still two mappings: a buffer may not cross from one to the other.
  const RegionSpec specs[] = {{0, kMiB}, {kMiB, kMiB}};
  auto mem = GuestMemory::create(specs);
  ASSERT_TRUE(mem.has_value()) << mem.error().message();
  auto drv = make_driver_queue(*mem);
  SplitQueue q = make_device_queue();
  const Buf bufs[] = {{kMiB - 8, 16, false}};
  ASSERT_TRUE(drv.add_chain(bufs).has_value());

  auto r = q.pop(*mem);

  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(q.fault(), QueueFault::BufferOutsideMemory);
}

TEST(SplitQueueHostile, TotalLengthOverflowBreaksQueue) {
  // Two 2 GiB buffers, each inside a (sparse) 3 GiB guest: together 2^32 bytes.
  const RegionSpec specs[] = {{0, 3ull << 30}};
  auto mem = GuestMemory::create(specs);
  ASSERT_TRUE(mem.has_value()) << mem.error().message();
  auto drv = make_driver_queue(*mem);
  SplitQueue q = make_device_queue();
  ASSERT_TRUE(drv.write_desc(1, VirtqDesc{kBuf, 0x80000000u, VIRTQ_DESC_F_WRITE, 0}).has_value());
  ASSERT_TRUE(drv.write_desc(0, VirtqDesc{kBuf, 0x80000000u, VIRTQ_DESC_F_NEXT, 1}).has_value());
  ASSERT_TRUE(drv.publish_head(0).has_value());

  auto r = q.pop(*mem);

  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(q.fault(), QueueFault::LengthOverflow);
  EXPECT_TRUE(q.broken());
}

TEST_F(SplitQueueTest, MaximumLengthBufferOutsideMemoryBreaksQueue) {
  add_raw_head(0, VirtqDesc{kBuf, 0xffffffffu, 0, 0});

  EXPECT_EQ(pop_fault(), QueueFault::BufferOutsideMemory);
}

TEST_F(SplitQueueTest, ReadableAfterWritableDescriptorBreaksQueue) {
  const Buf bufs[] = {{kBuf, 8, true}, {kBuf + 8, 8, false}};
  ASSERT_TRUE(drv.add_chain(bufs).has_value());

  EXPECT_EQ(pop_fault(), QueueFault::ReadAfterWrite);
}

TEST_F(SplitQueueTest, AvailIndexJumpingPastQueueSizeBreaksQueue) {
  ASSERT_TRUE(drv.set_avail_idx(kSize + 1).has_value());

  EXPECT_EQ(pop_fault(), QueueFault::AvailIdxJump);
  EXPECT_TRUE(q.broken());
}

TEST_F(SplitQueueTest, AvailIndexExactlyQueueSizeAheadIsAccepted) {
  ASSERT_TRUE(drv.set_avail_idx(kSize).has_value());

  auto r = q.pop(mem);

  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_TRUE(r->has_value());
}

TEST_F(SplitQueueTest, HeadIndexOutOfRangeBreaksQueue) {
  ASSERT_TRUE(drv.publish_head(kSize).has_value());

  EXPECT_EQ(pop_fault(), QueueFault::HeadOutOfRange);
}

TEST_F(SplitQueueTest, NextIndexOutOfRangeBreaksQueue) {
  add_raw_head(0, VirtqDesc{kBuf, 8, VIRTQ_DESC_F_NEXT, kSize});

  EXPECT_EQ(pop_fault(), QueueFault::NextOutOfRange);
}

TEST_F(SplitQueueTest, PopOnBrokenQueueFailsEvenWithValidChain) {
  ASSERT_TRUE(drv.set_avail_idx(kSize + 1).has_value());
  ASSERT_FALSE(q.pop(mem).has_value());
  ASSERT_TRUE(drv.set_avail_idx(0).has_value());

  auto r = q.pop(mem);

  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("broken"), std::string::npos);
  EXPECT_EQ(q.fault(), QueueFault::AvailIdxJump);
}

TEST_F(SplitQueueTest, ResetClearsBrokenState) {
  ASSERT_TRUE(drv.set_avail_idx(kSize + 1).has_value());
  ASSERT_FALSE(q.pop(mem).has_value());

  q.reset();

  EXPECT_FALSE(q.broken());
  EXPECT_FALSE(q.ready());
  EXPECT_EQ(q.next_avail(), 0);
}

TEST_F(SplitQueueTest, PushOfHeadOutOfRangeBreaksQueue) {
  auto st = q.push(mem, kSize, 0);

  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(q.fault(), QueueFault::UsedHeadOutOfRange);
}

TEST_F(SplitQueueTest, PopOnQueueNotReadyFails) {
  q.set_ready(false);

  auto r = q.pop(mem);

  EXPECT_FALSE(r.has_value());
}

// --- interrupt suppression (section 2.7.10) ---

TEST(VringNeedEvent, NotifiesWhenEventIndexInsideNewRange) {
  EXPECT_TRUE(vring_need_event(5, 6, 5));
  EXPECT_TRUE(vring_need_event(5, 10, 3));
  EXPECT_FALSE(vring_need_event(5, 5, 3));
  EXPECT_FALSE(vring_need_event(10, 10, 10));
}

TEST(VringNeedEvent, HandlesSixteenBitWrap) {
  EXPECT_TRUE(vring_need_event(65535, 2, 65534));
  EXPECT_TRUE(vring_need_event(0, 1, 65535));
  EXPECT_FALSE(vring_need_event(3, 2, 65534));
  EXPECT_FALSE(vring_need_event(65533, 2, 65534));
}

class SplitQueueNotifyTest : public SplitQueueTest {
 protected:
  // Pops and pushes one chain.
  void complete_one() {
    const Buf bufs[] = {{kBuf, 8, true}};
    ASSERT_TRUE(drv.add_chain(bufs).has_value());
    auto c = q.pop(mem);
    ASSERT_TRUE(c.has_value() && c->has_value());
    ASSERT_TRUE(q.push(mem, (*c)->head, 8).has_value());
    ASSERT_TRUE(drv.take_used().has_value());
  }
  bool decide() {
    auto r = q.needs_notification(mem);
    EXPECT_TRUE(r.has_value());
    return r.value_or(false);
  }
};

TEST_F(SplitQueueNotifyTest, WithoutEventIdxNotifiesByDefault) {
  complete_one();

  EXPECT_TRUE(decide());
}

TEST_F(SplitQueueNotifyTest, WithoutEventIdxNoInterruptFlagSuppresses) {
  ASSERT_TRUE(drv.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT).has_value());
  complete_one();

  EXPECT_FALSE(decide());
}

TEST_F(SplitQueueNotifyTest, WithEventIdxFirstDecisionNotifies) {
  q.set_event_idx(true);
  ASSERT_TRUE(drv.set_used_event(100).has_value());
  complete_one();

  EXPECT_TRUE(decide());
}

TEST_F(SplitQueueNotifyTest, WithEventIdxNotifiesOnlyWhenUsedEventCrossed) {
  q.set_event_idx(true);
  complete_one();
  ASSERT_TRUE(decide());                           // first decision, used idx 1
  ASSERT_TRUE(drv.set_used_event(2).has_value());  // driver wants to hear when idx passes 2
  complete_one();                                  // used idx 2: event 2 not crossed yet
  const bool at_two = decide();
  complete_one();  // used idx 3: crossed 2

  const bool at_three = decide();

  EXPECT_FALSE(at_two);
  EXPECT_TRUE(at_three);
}

TEST_F(SplitQueueNotifyTest, WithEventIdxNoNewUsedEntriesDoesNotNotifyTwice) {
  q.set_event_idx(true);
  ASSERT_TRUE(drv.set_used_event(0).has_value());
  complete_one();
  ASSERT_TRUE(decide());

  EXPECT_FALSE(decide());
}

TEST_F(SplitQueueNotifyTest, WithEventIdxIgnoresNoInterruptFlag) {
  q.set_event_idx(true);
  ASSERT_TRUE(drv.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT).has_value());
  ASSERT_TRUE(drv.set_used_event(0).has_value());

  complete_one();

  EXPECT_TRUE(decide());
}

TEST_F(SplitQueueNotifyTest, WithEventIdxDecisionWrapsAroundSixteenBits) {
  q.set_event_idx(true);
  q.set_next_avail(65534);
  q.set_next_used(65534);
  ASSERT_TRUE(drv.set_avail_idx(65534).has_value());
  ASSERT_TRUE(decide());  // first decision at 65534
  ASSERT_TRUE(drv.set_used_event(65535).has_value());
  complete_one();  // used idx 65535: event not crossed
  const bool before = decide();
  complete_one();  // used idx 0: crossed 65535 across the wrap

  const bool after = decide();

  EXPECT_FALSE(before);
  EXPECT_TRUE(after);
}

// --- driver notification suppression ---

TEST_F(SplitQueueTest, DisableNotificationSetsNoNotifyWithoutEventIdx) {
  ASSERT_TRUE(q.disable_notification(mem).has_value());

  auto flags = drv.used_flags();

  ASSERT_TRUE(flags.has_value());
  EXPECT_EQ(*flags, VIRTQ_USED_F_NO_NOTIFY);
}

TEST_F(SplitQueueTest, EnableNotificationClearsNoNotifyAndReportsPendingBuffers) {
  ASSERT_TRUE(q.disable_notification(mem).has_value());
  const Buf bufs[] = {{kBuf, 8, false}};
  ASSERT_TRUE(drv.add_chain(bufs).has_value());

  auto pending = q.enable_notification(mem);

  ASSERT_TRUE(pending.has_value());
  EXPECT_TRUE(*pending);
  EXPECT_EQ(drv.used_flags().value_or(0xffff), 0);
}

TEST_F(SplitQueueTest, EnableNotificationWithEventIdxWritesAvailEvent) {
  q.set_event_idx(true);
  const Buf bufs[] = {{kBuf, 8, false}};
  ASSERT_TRUE(drv.add_chain(bufs).has_value());
  ASSERT_TRUE(q.pop(mem).has_value());

  auto pending = q.enable_notification(mem);

  ASSERT_TRUE(pending.has_value());
  EXPECT_FALSE(*pending);
  EXPECT_EQ(drv.avail_event().value_or(0), 1);
}

TEST_F(SplitQueueTest, SetAvailEventWritesUsedRingTail) {
  ASSERT_TRUE(q.set_avail_event(mem, 0x1234).has_value());

  EXPECT_EQ(drv.avail_event().value_or(0), 0x1234);
}

// ---- inflight tracking (INFLIGHT_SHMFD, inflight.hpp) ----

class InflightTest : public SplitQueueTest {
 protected:
  std::vector<uint8_t> area = std::vector<uint8_t>(inflight_split_queue_bytes(kSize));
  InflightSplitHeader& hdr() { return *reinterpret_cast<InflightSplitHeader*>(area.data()); }
  InflightDescSplit& desc(uint16_t i) {
    return reinterpret_cast<InflightDescSplit*>(area.data() + sizeof(InflightSplitHeader))[i];
  }
  uint16_t add(uint64_t off) {
    const Buf b{kBuf + off, 8, false};
    auto h = drv.add_chain(std::span<const Buf>(&b, 1));
    EXPECT_TRUE(h.has_value());
    return *h;
  }
  uint16_t pop_head(SplitQueue& sq) {
    auto c = sq.pop(mem);
    EXPECT_TRUE(c.has_value() && c->has_value()) << (c ? "ring empty" : c.error().message());
    return c && *c ? (*c)->head : 0xffff;
  }
};

// A back-end pops A, B, C, completes B and dies; its successor resubmits A then C (the order
// they were popped), never B, and then carries on with the ring after them.
TEST_F(InflightTest, SuccessorResubmitsWhatWasInFlightOldestFirst) {
  ASSERT_TRUE(q.attach_inflight(mem, area).has_value());
  EXPECT_EQ(hdr().version, kInflightVersion);
  EXPECT_EQ(hdr().desc_num, kSize);
  const uint16_t a = add(0), b = add(8), c = add(16);
  EXPECT_EQ(pop_head(q), a);
  EXPECT_EQ(pop_head(q), b);
  EXPECT_EQ(pop_head(q), c);
  EXPECT_EQ(desc(a).inflight + desc(b).inflight + desc(c).inflight, 3);
  ASSERT_TRUE(q.push(mem, b, 0).has_value());
  EXPECT_EQ(desc(b).inflight, 0);
  EXPECT_EQ(hdr().used_idx, 1);

  SplitQueue next = make_device_queue();  // the new back-end
  ASSERT_TRUE(next.attach_inflight(mem, area).has_value());
  EXPECT_EQ(next.resubmit_pending(), 2u);
  EXPECT_EQ(next.next_avail(), 3);
  EXPECT_EQ(next.next_used(), 1);
  EXPECT_EQ(pop_head(next), a);
  EXPECT_EQ(pop_head(next), c);
  auto empty = next.pop(mem);
  ASSERT_TRUE(empty.has_value());
  EXPECT_FALSE(empty->has_value()) << "B was completed and must not come back";
  const uint16_t d = add(24);
  EXPECT_EQ(pop_head(next), d);
  ASSERT_TRUE(next.push(mem, c, 0).has_value());
  ASSERT_TRUE(next.push(mem, a, 0).has_value());
  EXPECT_EQ(desc(a).inflight + desc(c).inflight, 0);
  EXPECT_EQ(desc(d).inflight, 1);
}

// Death between publishing a batch's used idx and clearing its marks: the successor finishes the
// batch from last_batch_head instead of resubmitting completed requests.
TEST_F(InflightTest, ABatchPublishedButNotClearedIsFinishedOnAttach) {
  ASSERT_TRUE(q.attach_inflight(mem, area).has_value());
  const uint16_t a = add(0), b = add(8);
  pop_head(q);
  pop_head(q);
  ASSERT_TRUE(q.push_deferred(mem, a, 0).has_value());
  ASSERT_TRUE(q.push_deferred(mem, b, 0).has_value());
  EXPECT_EQ(hdr().last_batch_head, b);
  EXPECT_EQ(desc(b).next, a);
  ASSERT_TRUE(q.publish_used(mem).has_value());
  // Undo what publish_used() did after the used idx store: the marks and used_idx.
  desc(a).inflight = desc(b).inflight = 1;
  hdr().used_idx = 0;
  SplitQueue next = make_device_queue();
  ASSERT_TRUE(next.attach_inflight(mem, area).has_value());
  EXPECT_EQ(next.resubmit_pending(), 0u);
  EXPECT_EQ(desc(a).inflight + desc(b).inflight, 0);
  EXPECT_EQ(hdr().used_idx, 2);
  EXPECT_EQ(next.next_avail(), 2);
}

// The area is the front-end's: one that does not fit the ring is refused, one with a used_idx
// far from the ring's is refused, and a marked head out of the queue is never walked.
TEST_F(InflightTest, AHostileAreaIsRefusedOrBounded) {
  hdr().version = 7;
  EXPECT_FALSE(q.attach_inflight(mem, area).has_value());
  hdr().version = kInflightVersion;
  hdr().desc_num = kSize * 2;
  auto r = q.attach_inflight(mem, area);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("descriptors"), std::string::npos) << r.error().message();
  hdr().desc_num = kSize;
  hdr().used_idx = 100;  // used idx in the ring is 0
  EXPECT_FALSE(q.attach_inflight(mem, area).has_value());
  hdr().used_idx = 0;
  EXPECT_FALSE(q.attach_inflight(mem, std::span<uint8_t>(area.data(), 16)).has_value());
  // A corrupt batch list (next pointing outside the queue) stops the walk.
  hdr().used_idx = 0;
  hdr().last_batch_head = 3;
  desc(3).next = 0xffff;
  desc(3).inflight = 1;
  SplitQueue next = make_device_queue();
  ASSERT_TRUE(next.attach_inflight(mem, area).has_value());
  EXPECT_EQ(next.resubmit_pending(), 1u);  // head 3 still marked: resubmitted, walked safely
  auto c = next.pop(mem);
  EXPECT_TRUE(c.has_value());  // descriptor 3 is all zeros: a zero-length chain, no fault
}


// --- pop_direct: the burst form of pop() ---

// Pops the queue dry with pop_direct() (bursts of `burst`) and pop() where it stops, and lists
// what came out: head and segments, in order.
struct Popped {
  uint16_t head;
  std::vector<std::tuple<uint64_t, uint32_t, bool>> segs;
  bool operator==(const Popped&) const = default;
};

std::vector<Popped> drain(SplitQueue& sq, const GuestMemory& mem, bool direct, size_t burst) {
  std::vector<Popped> out;
  std::vector<DirectChain> dc(burst);
  for (int guard = 0; guard < 1000; ++guard) {
    if (direct) {
      auto d = sq.pop_direct(mem, dc);
      EXPECT_TRUE(d.has_value()) << d.error().message();
      if (!d) return out;
      for (uint32_t i = 0; i < d->count; ++i) {
        EXPECT_EQ(dc[i].host, mem.span(dc[i].seg.addr, dc[i].seg.len)->data());
        out.push_back({dc[i].head, {{dc[i].seg.addr, dc[i].seg.len, dc[i].seg.write}}});
      }
      if (d->count > 0 && !d->blocked) continue;
      if (d->count == 0 && !d->blocked) return out;
    }
    auto c = sq.pop(mem);
    EXPECT_TRUE(c.has_value()) << c.error().message();
    if (!c || !*c) return out;
    Popped p{(*c)->head, {}};
    for (const Segment& sg : (*c)->segments) p.segs.emplace_back(sg.addr, sg.len, sg.write);
    out.push_back(p);
  }
  ADD_FAILURE() << "the queue never ran dry";
  return out;
}

// A ring mixing one-descriptor chains (readable, writable, zero-length), longer chains and
// indirect tables comes out of pop_direct() + pop() exactly as out of pop() alone, whatever the
// burst size; pop_direct() stops at each chain of another shape.
TEST_F(SplitQueueIndirectTest, PopDirectReturnsWhatPopReturnsInTheSameOrder) {
  for (size_t burst : {1u, 3u, 16u}) {
    GuestMemory m = make_memory();
    DriverQueue d = make_driver_queue(m);
    uint64_t addr = kBuf;
    auto one = [&](uint32_t len, bool write) {
      const Buf b[] = {{addr, len, write}};
      addr += 0x100;
      ASSERT_TRUE(d.add_chain(b).has_value());
    };
    one(64, false);
    one(76, false);
    one(2048, true);
    {
      const Buf b[] = {{addr, 12, false}, {addr + 0x40, 64, false}};
      addr += 0x100;
      ASSERT_TRUE(d.add_chain(b).has_value());
    }
    one(0, false);
    one(1, true);
    {
      const Buf b[] = {{addr, 100, false}};
      addr += 0x100;
      ASSERT_TRUE(d.add_indirect_chain(b, kTable).has_value());
    }
    one(60, false);
    SplitQueue a = make_device_queue(false, true);
    SplitQueue b = make_device_queue(false, true);
    const auto want = drain(a, m, false, burst);
    const auto got = drain(b, m, true, burst);
    ASSERT_EQ(want.size(), 8u);
    EXPECT_EQ(got, want) << "burst " << burst;
    EXPECT_EQ(b.next_avail(), a.next_avail());
    EXPECT_FALSE(b.broken());
  }
}

TEST_F(SplitQueueTest, PopDirectStopsAtTheBurstSizeAndReadsOnAcrossTheWrap) {
  std::vector<DirectChain> dc(4);
  for (int lap = 0; lap < 5; ++lap) {  // 5 x 6 chains through a ring of 16
    std::vector<uint16_t> heads;
    for (int i = 0; i < 6; ++i) {
      const Buf b[] = {{kBuf + 0x100u * static_cast<unsigned>(i), 64, false}};
      auto h = drv.add_chain(b);
      ASSERT_TRUE(h.has_value());
      heads.push_back(*h);
    }
    auto r = q.pop_direct(mem, dc);
    ASSERT_TRUE(r.has_value()) << r.error().message();
    EXPECT_EQ(r->count, 4u);
    EXPECT_FALSE(r->blocked);
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(dc[i].head, heads[i]);
    r = q.pop_direct(mem, dc);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->count, 2u);
    EXPECT_EQ(dc[1].head, heads[5]);
    r = q.pop_direct(mem, dc);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->count, 0u) << "ring empty";
    for (uint16_t h : heads) ASSERT_TRUE(q.push_deferred(mem, h, 0).has_value());
    ASSERT_TRUE(q.publish_used(mem).has_value());
    for (uint16_t h : heads) {  // the driver gets its descriptors back, in order
      auto u = drv.take_used();
      ASSERT_TRUE(u.has_value() && u->has_value());
      EXPECT_EQ((*u)->id, h);
    }
  }
}

// The faults pop() would record, recorded by pop_direct() too.
TEST_F(SplitQueueTest, PopDirectFaultsOnAHeadOutOfRange) {
  const Buf b[] = {{kBuf, 64, false}};
  ASSERT_TRUE(drv.add_chain(b).has_value());
  ASSERT_TRUE(drv.publish_head(kSize).has_value());
  std::vector<DirectChain> dc(8);
  auto r = q.pop_direct(mem, dc);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(q.fault(), QueueFault::HeadOutOfRange);
  EXPECT_NE(r.error().message().find("head 16"), std::string::npos) << r.error().message();
  EXPECT_FALSE(q.pop_direct(mem, dc).has_value()) << "a broken queue stays broken";
}

TEST_F(SplitQueueTest, PopDirectFaultsOnABufferOutsideMemory) {
  const Buf ok[] = {{kBuf, 64, false}};
  ASSERT_TRUE(drv.add_chain(ok).has_value());
  const Buf wild[] = {{kMiB - 4, 8, true}};
  ASSERT_TRUE(drv.add_chain(wild).has_value());
  std::vector<DirectChain> dc(8);
  auto r = q.pop_direct(mem, dc);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(q.fault(), QueueFault::BufferOutsideMemory);
  EXPECT_TRUE(q.broken());
}

TEST_F(SplitQueueTest, PopDirectFaultsOnAnAvailIndexJump) {
  ASSERT_TRUE(drv.set_avail_idx(kSize + 1).has_value());
  std::vector<DirectChain> dc(8);
  EXPECT_FALSE(q.pop_direct(mem, dc).has_value());
  EXPECT_EQ(q.fault(), QueueFault::AvailIdxJump);
}

// An indirect descriptor without the feature is not a one-descriptor chain: pop_direct() leaves
// it to pop(), which faults as before.
TEST_F(SplitQueueTest, PopDirectLeavesAnUnnegotiatedIndirectToPop) {
  const Buf b[] = {{kBuf, 10, false}};
  ASSERT_TRUE(drv.add_indirect_chain(b, kTable).has_value());
  std::vector<DirectChain> dc(8);
  auto r = q.pop_direct(mem, dc);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->count, 0u);
  EXPECT_TRUE(r->blocked);
  EXPECT_EQ(pop_fault(), QueueFault::IndirectNotNegotiated);
}

// pop_direct() marks what it takes in the inflight area as pop() does, and leaves heads a
// predecessor left in flight to pop(), which resubmits them first.
TEST_F(InflightTest, PopDirectMarksWhatItTakesAndLeavesResubmissionsToPop) {
  ASSERT_TRUE(q.attach_inflight(mem, area).has_value());
  const uint16_t a = add(0), b = add(8), c = add(16);
  std::vector<DirectChain> dc(2);
  auto r = q.pop_direct(mem, dc);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->count, 2u);
  EXPECT_EQ(desc(a).inflight + desc(b).inflight, 2);
  EXPECT_LT(desc(a).counter, desc(b).counter);
  EXPECT_EQ(desc(c).inflight, 0);
  ASSERT_TRUE(q.push(mem, a, 0).has_value());

  SplitQueue next = make_device_queue();  // b was in flight when the back-end died
  ASSERT_TRUE(next.attach_inflight(mem, area).has_value());
  r = next.pop_direct(mem, dc);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->count, 0u);
  EXPECT_TRUE(r->blocked);
  EXPECT_EQ(pop_head(next), b);
  r = next.pop_direct(mem, dc);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->count, 1u);
  EXPECT_EQ(dc[0].head, c);
  EXPECT_EQ(desc(c).inflight, 1);
}

}  // namespace
}  // namespace iovirt::virtio
