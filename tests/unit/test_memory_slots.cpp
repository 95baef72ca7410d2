// DeviceMemorySlots: where passthrough BARs become KVM memory slots; the guest picks the addresses.
#include <gtest/gtest.h>

#include <tuple>
#include <vector>

#include "iovirt/vmm/memory_slots.hpp"

namespace iovirt {
namespace {

struct Call {
  uint32_t slot;
  uint64_t gpa;
  uint64_t size;
  void* host;
};

class MemorySlotsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RegionSpec r[] = {{0, 64ull << 20}, {4ull << 30, 64ull << 20}};
    auto m = GuestMemory::create(r);
    ASSERT_TRUE(m) << m.error().what();
    mem_.emplace(std::move(*m));
    slots_.emplace(*mem_, 2, 3, [this](uint32_t slot, uint64_t gpa, uint64_t size, void* host) -> Status {
      if (fail_next_) {
        fail_next_ = false;
        return fail("KVM_SET_USER_MEMORY_REGION (injected)", EINVAL);
      }
      calls_.push_back({slot, gpa, size, host});
      return {};
    });
  }
  void* host(uint64_t page) { return reinterpret_cast<void*>(0x7f0000000000ull + page * 4096); }

  std::optional<GuestMemory> mem_;
  std::optional<DeviceMemorySlots> slots_;
  std::vector<Call> calls_;
  bool fail_next_ = false;
};

TEST_F(MemorySlotsTest, MapsAboveRamSlotsAndUnmapsWithSizeZero) {
  auto a = slots_->map(0xc0000000, 0x20000, host(0), "dev BAR0");
  ASSERT_TRUE(a) << a.error().what();
  EXPECT_EQ(*a, 2u);
  auto b = slots_->map(0xc0020000, 0x1000, host(64), "dev BAR3");
  ASSERT_TRUE(b) << b.error().what();
  EXPECT_EQ(*b, 3u);
  ASSERT_EQ(calls_.size(), 2u);
  EXPECT_EQ(calls_[0].gpa, 0xc0000000u);
  EXPECT_EQ(calls_[0].size, 0x20000u);
  EXPECT_EQ(calls_[0].host, host(0));
  ASSERT_TRUE(slots_->unmap(*a));
  ASSERT_EQ(calls_.size(), 3u);
  EXPECT_EQ(calls_[2].slot, 2u);
  EXPECT_EQ(calls_[2].size, 0u);
  EXPECT_EQ(slots_->live(), 1u);
  // The freed slot number is reused.
  auto c = slots_->map(0xd0000000, 0x1000, host(1), "dev BAR0");
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, 2u);
}

TEST_F(MemorySlotsTest, RefusesGuestPlacementsOverRamOrAnotherBar) {
  // A BAR moved by the guest over low RAM, over high RAM, straddling RAM's end.
  EXPECT_FALSE(slots_->map(0x100000, 0x1000, host(0), "BAR0"));
  EXPECT_FALSE(slots_->map(4ull << 30, 0x1000, host(0), "BAR0"));
  auto straddle = slots_->map((64ull << 20) - 0x1000, 0x2000, host(0), "BAR0");
  ASSERT_FALSE(straddle);
  EXPECT_NE(straddle.error().what().find("over guest RAM"), std::string::npos);
  ASSERT_TRUE(slots_->map(0xc0000000, 0x4000, host(0), "dev0 BAR0"));
  auto over = slots_->map(0xc0003000, 0x1000, host(8), "dev1 BAR2");
  ASSERT_FALSE(over);
  EXPECT_NE(over.error().what().find("dev0 BAR0"), std::string::npos) << over.error().what();
  EXPECT_EQ(calls_.size(), 1u);  // nothing reached KVM for the refused ones
}

TEST_F(MemorySlotsTest, RefusesUnalignedWrappingAndTooMany) {
  EXPECT_FALSE(slots_->map(0xc0000800, 0x1000, host(0), "BAR"));
  EXPECT_FALSE(slots_->map(0xc0000000, 0x800, host(0), "BAR"));
  EXPECT_FALSE(slots_->map(0xc0000000, 0x1000, reinterpret_cast<void*>(0x7f0000000010ull), "BAR"));
  EXPECT_FALSE(slots_->map(0xfffffffffffff000ull, 0x2000, host(0), "BAR"));
  EXPECT_FALSE(slots_->map(0xc0000000, 0, host(0), "BAR"));
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(slots_->map(0xc0000000 + 0x10000ull * static_cast<uint64_t>(i), 0x1000, host(0), "BAR"));
  auto full = slots_->map(0xd0000000, 0x1000, host(0), "BAR");
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().code(), ENOSPC);
}

TEST_F(MemorySlotsTest, KvmFailureLeavesNothingLiveAndUnknownUnmapFails) {
  fail_next_ = true;
  EXPECT_FALSE(slots_->map(0xc0000000, 0x1000, host(0), "BAR"));
  EXPECT_EQ(slots_->live(), 0u);
  EXPECT_FALSE(slots_->unmap(7));
}

}  // namespace
}  // namespace iovirt
