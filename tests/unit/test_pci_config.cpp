#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <vector>

#include "iovirt/core/pci_config.hpp"

namespace iovirt {
namespace {

uint32_t read32(const PciConfigSpace& c, uint16_t off) {
  std::array<uint8_t, 4> b{};
  c.read(off, b);
  return uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
}
uint16_t read16(const PciConfigSpace& c, uint16_t off) {
  std::array<uint8_t, 2> b{};
  c.read(off, b);
  return static_cast<uint16_t>(b[0] | b[1] << 8);
}
uint8_t read8(const PciConfigSpace& c, uint16_t off) {
  std::array<uint8_t, 1> b{};
  c.read(off, b);
  return b[0];
}
void write32(PciConfigSpace& c, uint16_t off, uint32_t v) {
  const std::array<uint8_t, 4> b{static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8),
                                 static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 24)};
  c.write(off, b);
}
void write16(PciConfigSpace& c, uint16_t off, uint16_t v) {
  const std::array<uint8_t, 2> b{static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8)};
  c.write(off, b);
}
void write8(PciConfigSpace& c, uint16_t off, uint8_t v) {
  const std::array<uint8_t, 1> b{v};
  c.write(off, b);
}

constexpr uint16_t kCommand = pci_offset(PciReg16::Command);
constexpr uint16_t kStatus = pci_offset(PciReg16::StatusRegister);
constexpr uint16_t kCapPtr = pci_offset(PciReg8::CapabilitiesPointer);

PciConfigSpace identified_device() {
  PciConfigSpace c;
  c.set_vendor_id(0x1af4);
  c.set_device_id(0x1041);
  c.set_subsystem(0x1af4, 0x0001);
  c.set_class_code(0x02, 0x00, 0x00);
  c.set_revision_id(0x01);
  c.set_interrupt_pin(1);
  return c;
}

// ---- header registers ----

TEST(PciConfigSpace, IdentityRegistersReadBack) {
  const PciConfigSpace c = identified_device();

  EXPECT_EQ(read32(c, 0x00), 0x10411af4u);
  EXPECT_EQ(read32(c, 0x08), 0x02000001u);
  EXPECT_EQ(read32(c, 0x2c), 0x00011af4u);
  EXPECT_EQ(read8(c, pci_offset(PciReg8::HeaderType)), 0x00);
  EXPECT_EQ(read8(c, pci_offset(PciReg8::InterruptPin)), 1);
}

TEST(PciConfigSpace, ReadOnlyRegistersIgnoreGuestWrites) {
  PciConfigSpace c = identified_device();

  write32(c, 0x00, 0xffffffff);
  write32(c, 0x08, 0xffffffff);
  write8(c, pci_offset(PciReg8::HeaderType), 0xff);
  write32(c, 0x2c, 0xffffffff);
  write8(c, kCapPtr, 0x80);
  write8(c, pci_offset(PciReg8::InterruptPin), 4);
  write32(c, pci_offset(PciReg32::ExpansionRomBaseAddress), 0xffffffff);

  EXPECT_EQ(read32(c, 0x00), 0x10411af4u);
  EXPECT_EQ(read32(c, 0x08), 0x02000001u);
  EXPECT_EQ(read8(c, pci_offset(PciReg8::HeaderType)), 0x00);
  EXPECT_EQ(read32(c, 0x2c), 0x00011af4u);
  EXPECT_EQ(read8(c, kCapPtr), 0x00);
  EXPECT_EQ(read8(c, pci_offset(PciReg8::InterruptPin)), 1);
  EXPECT_EQ(read32(c, pci_offset(PciReg32::ExpansionRomBaseAddress)), 0u);
}

TEST(PciConfigSpace, InterruptLineAndCacheLineSizeAreWritable) {
  PciConfigSpace c = identified_device();

  write8(c, pci_offset(PciReg8::InterruptLine), 11);
  write8(c, pci_offset(PciReg8::CacheLineSize), 16);

  EXPECT_EQ(read8(c, pci_offset(PciReg8::InterruptLine)), 11);
  EXPECT_EQ(read8(c, pci_offset(PciReg8::CacheLineSize)), 16);
}

TEST(PciConfigSpace, CommandDecodeBitsAreHardwiredZeroWithoutBars) {
  PciConfigSpace c;

  write16(c, kCommand, 0xffff);

  EXPECT_EQ(read16(c, kCommand), pci_command::kBusMaster | pci_command::kParityErrorResponse |
                                     pci_command::kSerrEnable | pci_command::kInterruptDisable);
  EXPECT_FALSE(c.mem_enabled());
  EXPECT_FALSE(c.io_enabled());
}

TEST(PciConfigSpace, CommandDecodeBitsBecomeWritableWithMatchingBars) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(0, 0x20, PciBarKind::Io));
  ASSERT_TRUE(c.add_bar(1, 0x1000, PciBarKind::Mem32));

  write16(c, kCommand, pci_command::kIoSpace | pci_command::kMemorySpace);

  EXPECT_TRUE(c.io_enabled());
  EXPECT_TRUE(c.mem_enabled());
}

TEST(PciConfigSpace, StatusErrorBitsAreWriteOneToClear) {
  PciConfigSpace c;
  c.set(PciReg16::StatusRegister, pci_status::kRw1cMask | pci_status::kCapabilitiesList);

  write16(c, kStatus, pci_status::kReceivedMasterAbort);

  EXPECT_EQ(read16(c, kStatus), (pci_status::kRw1cMask & ~pci_status::kReceivedMasterAbort) |
                                    pci_status::kCapabilitiesList);
}

TEST(PciConfigSpace, StatusWriteOfAllOnesLeavesReadOnlyBits) {
  PciConfigSpace c;
  c.set(PciReg16::StatusRegister, pci_status::kRw1cMask | pci_status::kCapabilitiesList);

  write16(c, kStatus, 0xffff);

  EXPECT_EQ(read16(c, kStatus), pci_status::kCapabilitiesList);
}

TEST(PciConfigSpace, StatusWriteOfZeroClearsNothing) {
  PciConfigSpace c;
  c.set(PciReg16::StatusRegister, pci_status::kSignaledTargetAbort);

  write16(c, kStatus, 0);

  EXPECT_EQ(read16(c, kStatus), pci_status::kSignaledTargetAbort);
}

// ---- access rules ----

TEST(PciConfigSpace, MisalignedReadReturnsAllOnes) {
  const PciConfigSpace c = identified_device();

  EXPECT_EQ(read32(c, 0x02), 0xffffffffu);
  EXPECT_EQ(read16(c, 0x01), 0xffffu);
}

TEST(PciConfigSpace, MisalignedWriteIsDropped) {
  PciConfigSpace c;

  write16(c, 0x3b, 0x0b0b);  // would cover Interrupt Line at 0x3c

  EXPECT_EQ(read8(c, pci_offset(PciReg8::InterruptLine)), 0);
}

TEST(PciConfigSpace, OddSizedAccessReadsAllOnes) {
  const PciConfigSpace c = identified_device();
  std::array<uint8_t, 3> three{};

  c.read(0x00, three);

  EXPECT_EQ(three, (std::array<uint8_t, 3>{0xff, 0xff, 0xff}));
}

TEST(PciConfigSpace, AccessPastTheEndReadsAllOnes) {
  const PciConfigSpace c;

  EXPECT_EQ(read32(c, 4096), 0xffffffffu);
  EXPECT_EQ(read8(c, 0xffff), 0xff);
}

TEST(PciConfigSpace, ExtendedConfigSpaceReadsZero) {
  const PciConfigSpace c = identified_device();

  EXPECT_EQ(read32(c, 0x100), 0u);
  EXPECT_EQ(read32(c, 0xffc), 0u);
}

// ---- BARs ----

TEST(PciConfigSpace, IoBarSizingReturnsSizeMaskAndIoFlag) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(0, 0x20, PciBarKind::Io));

  write32(c, pci_bar_offset(0), 0xffffffff);

  EXPECT_EQ(read32(c, pci_bar_offset(0)), 0xffffffe1u);
}

TEST(PciConfigSpace, Mem32BarSizingReturnsSizeMask) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(1, 0x1000, PciBarKind::Mem32));

  write32(c, pci_bar_offset(1), 0xffffffff);

  EXPECT_EQ(read32(c, pci_bar_offset(1)), 0xfffff000u);
}

TEST(PciConfigSpace, PrefetchableMem32BarSetsBit3) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(2, 0x100000, PciBarKind::Mem32, true));

  write32(c, pci_bar_offset(2), 0xffffffff);

  EXPECT_EQ(read32(c, pci_bar_offset(2)), 0xfff00008u);
}

TEST(PciConfigSpace, Mem64BarSizesBothHalves) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(2, 0x4000, PciBarKind::Mem64, true));

  write32(c, pci_bar_offset(2), 0xffffffff);
  write32(c, pci_bar_offset(3), 0xffffffff);

  EXPECT_EQ(read32(c, pci_bar_offset(2)), 0xffffc00cu);  // 64-bit (10b << 1) | prefetchable
  EXPECT_EQ(read32(c, pci_bar_offset(3)), 0xffffffffu);
}

TEST(PciConfigSpace, Mem64BarLargerThan4GiBSizesInUpperHalf) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(0, uint64_t{8} << 30, PciBarKind::Mem64));

  write32(c, pci_bar_offset(0), 0xffffffff);
  write32(c, pci_bar_offset(1), 0xffffffff);

  EXPECT_EQ(read32(c, pci_bar_offset(0)), 0x00000004u);
  EXPECT_EQ(read32(c, pci_bar_offset(1)), 0xfffffffeu);
}

TEST(PciConfigSpace, UnusedBarReadsZeroAndIgnoresWrites) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(0, 0x1000, PciBarKind::Mem32));

  write32(c, pci_bar_offset(5), 0xffffffff);

  EXPECT_EQ(read32(c, pci_bar_offset(5)), 0u);
  EXPECT_FALSE(c.bar(5).has_value());
  EXPECT_EQ(c.bar_address(5), 0u);
}

TEST(PciConfigSpace, GuestProgrammedMem64AddressCombinesBothHalves) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(0, 0x4000, PciBarKind::Mem64));

  write32(c, pci_bar_offset(0), 0xfe00c123);  // low bits below the size are not writable
  write32(c, pci_bar_offset(1), 0x00000080);

  EXPECT_EQ(c.bar_address(0), 0x80fe00c000u);
  EXPECT_FALSE(c.bar(1).has_value());  // the upper half is not a BAR of its own
}

TEST(PciConfigSpace, SetBarAddressProgramsRegistersKeepingFlags) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(4, 0x1000, PciBarKind::Mem64, true));

  c.set_bar_address(4, 0x123400005000);

  EXPECT_EQ(read32(c, pci_bar_offset(4)), 0x0000500cu);
  EXPECT_EQ(read32(c, pci_bar_offset(5)), 0x00001234u);
  EXPECT_EQ(c.bar_address(4), 0x123400005000u);
}

TEST(PciConfigSpace, BarChangeHookReportsEachHalfOf64BitBarWithCombinedAddress) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(2, 0x1000, PciBarKind::Mem64));
  struct Change {
    int index;
    uint64_t old_addr, new_addr;
    bool operator==(const Change&) const = default;
  };
  std::vector<Change> changes;
  c.set_bar_change_hook([&](int i, uint64_t o, uint64_t n) { changes.push_back({i, o, n}); });

  write32(c, pci_bar_offset(2), 0xe0000000);
  write32(c, pci_bar_offset(3), 0x1);

  EXPECT_EQ(changes, (std::vector<Change>{{2, 0, 0xe0000000}, {2, 0xe0000000, 0x1e0000000}}));
}

TEST(PciConfigSpace, BarChangeHookIsQuietWhenAddressStaysTheSame) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(0, 0x1000, PciBarKind::Mem32));
  c.set_bar_address(0, 0xc0000000);
  int calls = 0;
  c.set_bar_change_hook([&](int, uint64_t, uint64_t) { ++calls; });

  write32(c, pci_bar_offset(0), 0xc0000fff);  // only bits below the size differ
  write16(c, kCommand, pci_command::kMemorySpace);

  EXPECT_EQ(calls, 0);
}

TEST(PciConfigSpace, ByteWriteToBarUpdatesAddress) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(0, 0x1000, PciBarKind::Mem32));

  write8(c, pci_bar_offset(0) + 3, 0xd0);

  EXPECT_EQ(c.bar_address(0), 0xd0000000u);
}

TEST(PciConfigSpace, AddBarRejectsInvalidRequests) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_bar(1, 0x1000, PciBarKind::Mem64));

  EXPECT_FALSE(c.add_bar(0, 0x3000, PciBarKind::Mem32));   // not a power of two
  EXPECT_FALSE(c.add_bar(0, 8, PciBarKind::Mem32));        // below 16 bytes
  EXPECT_FALSE(c.add_bar(0, 2, PciBarKind::Io));           // below 4 bytes
  EXPECT_FALSE(c.add_bar(0, 0x20, PciBarKind::Io, true));  // prefetchable I/O
  EXPECT_FALSE(c.add_bar(5, 0x1000, PciBarKind::Mem64));   // needs slot 6
  EXPECT_FALSE(c.add_bar(2, 0x1000, PciBarKind::Mem32));   // upper half of BAR1
  EXPECT_FALSE(c.add_bar(0, 0x1000, PciBarKind::Mem64));   // would take slot 1
  EXPECT_FALSE(c.add_bar(6, 0x1000, PciBarKind::Mem32));
  EXPECT_FALSE(c.add_bar(-1, 0x1000, PciBarKind::Mem32));
  EXPECT_TRUE(c.add_bar(0, 0x20, PciBarKind::Io));
}

// ---- capabilities ----

TEST(PciConfigSpace, ChainOfThreeCapabilitiesIsLinkedAndFound) {
  PciConfigSpace c;
  const std::array<uint8_t, 6> pm{};
  const std::array<uint8_t, 10> msix{};
  const std::array<uint8_t, 14> vendor{};

  auto a = c.add_capability(PciCapId::PowerManagement, pm);
  auto b = c.add_capability(PciCapId::MsiX, msix);
  auto v = c.add_capability(PciCapId::VendorSpecific, vendor);

  ASSERT_TRUE(a && b && v);
  EXPECT_EQ(*a, 0x40);
  EXPECT_EQ(*b, 0x48);
  EXPECT_EQ(*v, 0x54);
  EXPECT_EQ(read8(c, kCapPtr), 0x40);
  EXPECT_NE(read16(c, kStatus) & pci_status::kCapabilitiesList, 0);
  EXPECT_EQ(c.find_capability(PciCapId::PowerManagement), 0x40);
  EXPECT_EQ(c.find_capability(PciCapId::MsiX), 0x48);
  EXPECT_EQ(c.find_capability(PciCapId::VendorSpecific), 0x54);
  EXPECT_EQ(c.find_capability(PciCapId::Msi), std::nullopt);
  auto walk = walk_pci_capabilities(c.bytes());
  ASSERT_TRUE(walk);
  ASSERT_EQ(walk->size(), 3u);
  EXPECT_EQ((*walk)[2].id, static_cast<uint8_t>(PciCapId::VendorSpecific));
  EXPECT_EQ(read8(c, 0x55), 0);  // the last next pointer ends the list
}

TEST(PciConfigSpace, CapabilityBodyHonoursWriteMaskAndHeaderIsReadOnly) {
  PciConfigSpace c;
  const std::array<uint8_t, 2> body{0x11, 0x22};
  const std::array<uint8_t, 2> mask{0x00, 0xf0};
  auto off = c.add_capability(0x09, body, mask);
  ASSERT_TRUE(off);

  write32(c, *off, 0xffffffff);

  EXPECT_EQ(read32(c, *off), 0xf2110009u);
}

TEST(PciConfigSpace, AddCapabilityRefusesWhenConfigSpaceIsFull) {
  PciConfigSpace c;
  const std::vector<uint8_t> big(186);  // 0x40 + 188 = 0xfc
  const std::array<uint8_t, 6> small{};
  ASSERT_TRUE(c.add_capability(0x09, big));

  auto r = c.add_capability(0x09, small);

  EXPECT_FALSE(r);
  auto walk = walk_pci_capabilities(c.bytes());
  ASSERT_TRUE(walk);
  EXPECT_EQ(walk->size(), 1u);
}

TEST(PciConfigSpace, AddCapabilityRejectsMaskOfWrongLength) {
  PciConfigSpace c;
  const std::array<uint8_t, 4> body{};
  const std::array<uint8_t, 2> mask{};

  EXPECT_FALSE(c.add_capability(0x09, body, mask));
}

// ---- the walker on hostile bytes ----

std::array<uint8_t, 256> raw_with_caps() {
  std::array<uint8_t, 256> cfg{};
  cfg[pci_offset(PciReg16::StatusRegister)] = pci_status::kCapabilitiesList;
  return cfg;
}

TEST(PciCapabilityWalk, NoCapabilitiesListBitMeansEmptyList) {
  std::array<uint8_t, 256> cfg{};
  cfg[0x34] = 0x40;  // garbage pointer, ignored without the status bit
  cfg[0x40] = 0x11;

  auto walk = walk_pci_capabilities(cfg);

  ASSERT_TRUE(walk);
  EXPECT_TRUE(walk->empty());
}

TEST(PciCapabilityWalk, LoopIsDetected) {
  auto cfg = raw_with_caps();
  cfg[0x34] = 0x40;
  cfg[0x40] = 0x01;
  cfg[0x41] = 0x50;
  cfg[0x50] = 0x05;
  cfg[0x51] = 0x40;

  EXPECT_FALSE(walk_pci_capabilities(cfg));
  EXPECT_FALSE(find_pci_capability(cfg, 0x11));
}

TEST(PciCapabilityWalk, SelfLoopIsDetected) {
  auto cfg = raw_with_caps();
  cfg[0x34] = 0x40;
  cfg[0x40] = 0x01;
  cfg[0x41] = 0x40;

  EXPECT_FALSE(walk_pci_capabilities(cfg));
}

TEST(PciCapabilityWalk, PointerIntoHeaderFails) {
  auto cfg = raw_with_caps();
  cfg[0x34] = 0x40;
  cfg[0x40] = 0x01;
  cfg[0x41] = 0x20;

  EXPECT_FALSE(walk_pci_capabilities(cfg));
}

TEST(PciCapabilityWalk, MisalignedPointerFails) {
  auto cfg = raw_with_caps();
  cfg[0x34] = 0x41;
  cfg[0x40] = 0x11;
  cfg[0x41] = 0x11;

  EXPECT_FALSE(walk_pci_capabilities(cfg));
}

TEST(PciCapabilityWalk, PointerPastTheEndOfTheBytesFails) {
  auto full = raw_with_caps();
  full[0x34] = 0xc0;
  const std::span<const uint8_t> short_read = std::span(full).first(0x80);

  EXPECT_FALSE(walk_pci_capabilities(short_read));
}

TEST(PciCapabilityWalk, AllOnesFunctionFails) {
  std::array<uint8_t, 256> cfg{};
  cfg.fill(0xff);

  EXPECT_FALSE(walk_pci_capabilities(cfg));
}

TEST(PciCapabilityWalk, SpanShorterThanHeaderFails) {
  const std::array<uint8_t, 16> cfg{};

  EXPECT_FALSE(walk_pci_capabilities(cfg));
}

TEST(PciCapabilityWalk, LastSlotAt0xfcIsValid) {
  auto cfg = raw_with_caps();
  cfg[0x34] = 0xfc;
  cfg[0xfc] = 0x11;
  cfg[0xfd] = 0x00;

  auto found = find_pci_capability(cfg, 0x11);

  ASSERT_TRUE(found);
  EXPECT_EQ(*found, 0xfc);
}

TEST(PciCapabilityWalk, MalformedChainMakesFindCapabilityReturnNothing) {
  PciConfigSpace c;
  ASSERT_TRUE(c.add_capability(PciCapId::MsiX, std::array<uint8_t, 2>{}));
  c.poke8(0x41, 0x40);  // device-side corruption: the list now loops

  EXPECT_EQ(c.find_capability(PciCapId::Msi), std::nullopt);
}

}  // namespace
}  // namespace iovirt
