#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "iovirt/core/pci_config.hpp"
#include "iovirt/core/pci_msix.hpp"

namespace iovirt {
namespace {

constexpr int kBar = 0;
constexpr uint32_t kTableOffset = 0x0;
constexpr uint32_t kPbaOffset = 0x2000;

// Entry field offsets inside one 16-byte table entry.
constexpr uint64_t kAddrLo = offsetof(MsixTableEntry, message_address);
constexpr uint64_t kAddrHi = offsetof(MsixTableEntry, message_upper_address);
constexpr uint64_t kData = offsetof(MsixTableEntry, message_data);
constexpr uint64_t kCtrl = offsetof(MsixTableEntry, vector_control);

uint64_t entry_offset(uint16_t vector, uint64_t field) {
  return kTableOffset + vector * sizeof(MsixTableEntry) + field;
}

class MsixTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(config_.add_bar(kBar, 0x4000, PciBarKind::Mem32));
    auto t = MsixTable::create(config_, MsixLayout{4, kBar, kTableOffset, kBar, kPbaOffset});
    ASSERT_TRUE(t) << t.error().message();
    table_.emplace(std::move(*t));
    table_->set_change_hook([this](uint16_t v) { changes_.push_back(v); });
  }

  uint32_t bar_read32(uint64_t off) {
    std::array<uint8_t, 4> b{};
    EXPECT_TRUE(table_->bar_read(kBar, off, b));
    return uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
  }
  uint64_t bar_read64(uint64_t off) {
    std::array<uint8_t, 8> b{};
    EXPECT_TRUE(table_->bar_read(kBar, off, b));
    uint64_t v = 0;
    for (size_t i = 0; i < 8; ++i) v |= uint64_t{b[i]} << (8 * i);
    return v;
  }
  void bar_write32(uint64_t off, uint32_t v) {
    const std::array<uint8_t, 4> b{static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8),
                                   static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 24)};
    EXPECT_TRUE(table_->bar_write(kBar, off, b));
  }
  void bar_write64(uint64_t off, uint64_t v) {
    std::array<uint8_t, 8> b{};
    for (size_t i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(v >> (8 * i));
    EXPECT_TRUE(table_->bar_write(kBar, off, b));
  }
  // A guest config write to Message Control, followed by the notification the device forwards.
  void write_message_control(uint16_t v) {
    const uint16_t off = static_cast<uint16_t>(table_->cap_offset() + 2);
    const std::array<uint8_t, 2> b{static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8)};
    config_.write(off, b);
    table_->config_written(config_, off, b.size());
  }
  uint16_t message_control() const {
    return config_.peek16(static_cast<uint16_t>(table_->cap_offset() + 2));
  }
  void unmask(uint16_t vector) { bar_write32(entry_offset(vector, kCtrl), 0); }

  PciConfigSpace config_;
  std::optional<MsixTable> table_;
  std::vector<uint16_t> changes_;
};

TEST_F(MsixTableTest, CapabilityAdvertisesTableSizeAndLocation) {
  const uint8_t cap = table_->cap_offset();

  EXPECT_EQ(config_.find_capability(PciCapId::MsiX), cap);
  EXPECT_EQ(message_control() & msix::kTableSizeMask, 3);
  EXPECT_EQ(config_.peek32(cap + 4u), kTableOffset | kBar);
  EXPECT_EQ(config_.peek32(cap + 8u), kPbaOffset | kBar);
}

TEST_F(MsixTableTest, EntriesStartMasked) {
  EXPECT_TRUE(table_->entry(0).masked);
  EXPECT_TRUE(table_->entry(3).masked);
  EXPECT_EQ(bar_read32(entry_offset(2, kCtrl)), msix::kVectorControlMaskBit);
}

TEST_F(MsixTableTest, MsixStartsDisabled) {
  EXPECT_FALSE(table_->enabled());
  EXPECT_FALSE(table_->function_masked());
}

TEST_F(MsixTableTest, EntryRoundTripsThroughDwordAccesses) {
  bar_write32(entry_offset(1, kAddrLo), 0xfee01000);
  bar_write32(entry_offset(1, kAddrHi), 0x1);
  bar_write32(entry_offset(1, kData), 0x4041);
  bar_write32(entry_offset(1, kCtrl), 0);

  EXPECT_EQ(bar_read32(entry_offset(1, kAddrLo)), 0xfee01000u);
  EXPECT_EQ(bar_read32(entry_offset(1, kAddrHi)), 0x1u);
  EXPECT_EQ(bar_read32(entry_offset(1, kData)), 0x4041u);
  EXPECT_EQ(bar_read32(entry_offset(1, kCtrl)), 0u);
  const MsixVector v = table_->entry(1);
  EXPECT_EQ(v.address, 0x1fee01000u);
  EXPECT_EQ(v.data, 0x4041u);
  EXPECT_FALSE(v.masked);
}

TEST_F(MsixTableTest, QwordAccessCoversAddressPair) {
  bar_write64(entry_offset(3, kAddrLo), 0x00000002fee00000);

  EXPECT_EQ(table_->entry(3).address, 0x2fee00000u);
  EXPECT_EQ(bar_read64(entry_offset(3, kAddrLo)), 0x00000002fee00000u);
}

TEST_F(MsixTableTest, VectorControlReservedBitsReadZero) {
  bar_write32(entry_offset(0, kCtrl), 0xffffffff);

  EXPECT_EQ(bar_read32(entry_offset(0, kCtrl)), 1u);
}

TEST_F(MsixTableTest, WordAccessToTableReadsAllOnesAndIsDropped) {
  std::array<uint8_t, 2> word{};
  const std::array<uint8_t, 2> ones{0xff, 0xff};

  EXPECT_TRUE(table_->bar_write(kBar, entry_offset(0, kData), ones));
  EXPECT_TRUE(table_->bar_read(kBar, entry_offset(0, kData), word));

  EXPECT_EQ(word, ones);
  EXPECT_EQ(table_->entry(0).data, 0u);
}

TEST_F(MsixTableTest, MisalignedDwordReadsAllOnes) {
  EXPECT_EQ(bar_read32(entry_offset(0, kAddrLo) + 2), 0xffffffffu);
}

TEST_F(MsixTableTest, AccessOutsideTableAndPbaIsNotClaimed) {
  std::array<uint8_t, 4> b{};

  EXPECT_FALSE(table_->bar_read(kBar, 0x1000, b));
  EXPECT_FALSE(table_->bar_write(kBar, 0x1000, b));
  EXPECT_FALSE(table_->bar_read(1, kTableOffset, b));
}

TEST_F(MsixTableTest, EnableAndFunctionMaskAreWritableAndTableSizeIsNot) {
  write_message_control(0xffff);

  EXPECT_EQ(message_control(), msix::kEnable | msix::kFunctionMask | 3);
  EXPECT_TRUE(table_->enabled());
  EXPECT_TRUE(table_->function_masked());
  EXPECT_EQ(changes_, std::vector<uint16_t>{msix::kAllVectors});
}

TEST_F(MsixTableTest, ChangeHookNamesTheWrittenVector) {
  bar_write32(entry_offset(2, kData), 0x30);

  EXPECT_EQ(changes_, std::vector<uint16_t>{2});
}

TEST_F(MsixTableTest, ChangeHookIsQuietWhenNothingChanges) {
  bar_write32(entry_offset(2, kCtrl), 1);  // already masked
  write_message_control(0);                // already disabled

  EXPECT_TRUE(changes_.empty());
}

TEST_F(MsixTableTest, VectorIsDeliverableOnlyWhenEnabledUnmaskedAndFunctionUnmasked) {
  unmask(0);
  const bool before_enable = table_->vector_deliverable(0);
  write_message_control(msix::kEnable | msix::kFunctionMask);
  const bool function_masked = table_->vector_deliverable(0);
  write_message_control(msix::kEnable);
  const bool deliverable = table_->vector_deliverable(0);
  const bool other_masked = table_->vector_deliverable(1);

  EXPECT_FALSE(before_enable);
  EXPECT_FALSE(function_masked);
  EXPECT_TRUE(deliverable);
  EXPECT_FALSE(other_masked);
}

TEST_F(MsixTableTest, PendingMaskedVectorShowsInPba) {
  write_message_control(msix::kEnable);

  table_->set_pending(2);

  EXPECT_TRUE(table_->pending(2));
  EXPECT_EQ(bar_read64(kPbaOffset), 0b100u);
  EXPECT_EQ(bar_read32(kPbaOffset), 0b100u);
  EXPECT_EQ(bar_read32(kPbaOffset + 4), 0u);
}

TEST_F(MsixTableTest, PbaIgnoresGuestWrites) {
  table_->set_pending(1);

  bar_write64(kPbaOffset, 0);

  EXPECT_TRUE(table_->pending(1));
  EXPECT_EQ(bar_read64(kPbaOffset), 0b10u);
}

TEST_F(MsixTableTest, UnmaskingPendingVectorMakesItDeliverableOnce) {
  write_message_control(msix::kEnable);
  table_->set_pending(2);
  changes_.clear();

  unmask(2);
  const std::vector<uint16_t> first = table_->take_deliverable_pending();
  const std::vector<uint16_t> second = table_->take_deliverable_pending();

  EXPECT_EQ(changes_, std::vector<uint16_t>{2});
  EXPECT_EQ(first, std::vector<uint16_t>{2});
  EXPECT_TRUE(second.empty());
  EXPECT_FALSE(table_->pending(2));
  EXPECT_EQ(bar_read64(kPbaOffset), 0u);
}

TEST_F(MsixTableTest, PendingVectorStaysPendingWhileFunctionMasked) {
  write_message_control(msix::kEnable | msix::kFunctionMask);
  unmask(1);
  table_->set_pending(1);

  const std::vector<uint16_t> taken = table_->take_deliverable_pending();

  EXPECT_TRUE(taken.empty());
  EXPECT_TRUE(table_->pending(1));
}

TEST_F(MsixTableTest, ClearingFunctionMaskReleasesPendingVectors) {
  write_message_control(msix::kEnable | msix::kFunctionMask);
  unmask(0);
  unmask(3);
  table_->set_pending(0);
  table_->set_pending(3);
  changes_.clear();

  write_message_control(msix::kEnable);

  EXPECT_EQ(changes_, std::vector<uint16_t>{msix::kAllVectors});
  EXPECT_EQ(table_->take_deliverable_pending(), (std::vector<uint16_t>{0, 3}));
}

TEST_F(MsixTableTest, OutOfRangeVectorIsMaskedAndNeverPending) {
  table_->set_pending(4);

  EXPECT_TRUE(table_->entry(4).masked);
  EXPECT_FALSE(table_->pending(4));
  EXPECT_FALSE(table_->vector_deliverable(4));
}

// ---- construction ----

TEST(MsixTableCreate, RejectsTableThatDoesNotFitItsBar) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(0, 0x100, PciBarKind::Mem32));

  auto t = MsixTable::create(c, MsixLayout{32, 0, 0, 0, 0x80});  // 32 * 16 = 512 bytes

  EXPECT_FALSE(t);
  EXPECT_EQ(c.find_capability(PciCapId::MsiX), std::nullopt);
}

TEST(MsixTableCreate, RejectsOverlappingTableAndPba) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(0, 0x1000, PciBarKind::Mem32));

  EXPECT_FALSE(MsixTable::create(c, MsixLayout{4, 0, 0, 0, 0x30}));
}

TEST(MsixTableCreate, RejectsMissingOrIoBar) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(1, 0x100, PciBarKind::Io));

  EXPECT_FALSE(MsixTable::create(c, MsixLayout{1, 0, 0, 0, 0x800}));
  EXPECT_FALSE(MsixTable::create(c, MsixLayout{1, 1, 0, 1, 0x80}));
}

TEST(MsixTableCreate, RejectsBadVectorCountsAndAlignment) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(0, 0x10000, PciBarKind::Mem32));

  EXPECT_FALSE(MsixTable::create(c, MsixLayout{0, 0, 0, 0, 0x8000}));
  EXPECT_FALSE(MsixTable::create(c, MsixLayout{2049, 0, 0, 0, 0x8000}));
  EXPECT_FALSE(MsixTable::create(c, MsixLayout{1, 0, 0x4, 0, 0x8000}));
}

TEST(MsixTableCreate, TableAndPbaMayLiveInDifferentBars) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(0, 0x1000, PciBarKind::Mem32));
  ASSERT_TRUE(c.add_bar(2, 0x1000, PciBarKind::Mem64));

  auto t = MsixTable::create(c, MsixLayout{8, 0, 0x800, 2, 0});

  ASSERT_TRUE(t);
  std::array<uint8_t, 8> pba{};
  EXPECT_TRUE(t->bar_read(2, 0, pba));
  EXPECT_FALSE(t->bar_read(0, 0, pba));
}

TEST(MsixTableFromCapability, AdoptsExistingCapabilityAndItsState) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(4, 0x4000, PciBarKind::Mem64));
  // A real device's capability: 5 vectors, table at BAR4+0, PBA at BAR4+0x2000, left enabled.
  const std::array<uint8_t, 10> body{0x04, 0x80, 0x04, 0x00, 0x00, 0x00, 0x04, 0x20, 0x00, 0x00};
  auto off = c.add_capability(PciCapId::MsiX, body);
  ASSERT_TRUE(off);

  auto t = MsixTable::from_capability(c, *off);

  ASSERT_TRUE(t) << t.error().message();
  EXPECT_EQ(t->num_vectors(), 5);
  EXPECT_EQ(t->layout().table_bir, 4);
  EXPECT_EQ(t->layout().pba_offset, 0x2000u);
  EXPECT_TRUE(t->enabled());
}

TEST(MsixTableFromCapability, RejectsHostileLayout) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(0, 0x1000, PciBarKind::Mem32));
  // 2048 vectors (32 KiB of table) claimed inside a 4 KiB BAR; PBA BIR 7 is reserved.
  const std::array<uint8_t, 10> too_big{0xff, 0x07, 0, 0, 0, 0, 0x00, 0x08, 0, 0};
  const std::array<uint8_t, 10> bad_bir{0x00, 0x00, 0, 0, 0, 0, 0x07, 0x08, 0, 0};
  auto a = c.add_capability(PciCapId::MsiX, too_big);
  auto b = c.add_capability(PciCapId::MsiX, bad_bir);
  auto pm = c.add_capability(PciCapId::PowerManagement, std::array<uint8_t, 6>{});
  ASSERT_TRUE(a && b && pm);

  EXPECT_FALSE(MsixTable::from_capability(c, *a));
  EXPECT_FALSE(MsixTable::from_capability(c, *b));
  EXPECT_FALSE(MsixTable::from_capability(c, *pm));  // not an MSI-X capability
  EXPECT_FALSE(MsixTable::from_capability(c, 0x10));
}

}  // namespace
}  // namespace iovirt
