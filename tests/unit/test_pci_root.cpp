#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "iovirt/core/bus.hpp"
#include "iovirt/core/pci.hpp"
#include "iovirt/vmm/pci_root.hpp"

namespace iovirt {
namespace {

constexpr PciWindows kWindows{
    0xc000,       0x4000,        // I/O
    0xc0000000,   0x10000000,    // 32-bit MMIO
    0x8000000000, 0x1000000000,  // 64-bit MMIO
};

struct BarAccess {
  int bar;
  uint64_t offset;
  size_t size;
  bool write;
  bool operator==(const BarAccess&) const = default;
};

// A function that records what reaches its BARs and what the root tells it about decoding.
class RecordingDevice final : public PciDevice {
 public:
  RecordingDevice(uint16_t vendor, uint16_t device) {
    config_.set_vendor_id(vendor);
    config_.set_device_id(device);
    config_.set_class_code(0xff, 0x00, 0x00);
  }
  std::string_view name() const override { return "recorder"; }
  PciConfigSpace& config() override { return config_; }
  void bar_read(int bar, uint64_t offset, std::span<uint8_t> data) override {
    accesses.push_back({bar, offset, data.size(), false});
    for (auto& b : data) b = 0xab;
  }
  void bar_write(int bar, uint64_t offset, std::span<const uint8_t> data) override {
    accesses.push_back({bar, offset, data.size(), true});
  }
  void bar_decode_changed(int bar, std::optional<uint64_t> address) override {
    decode_changes.emplace_back(bar, address);
  }

  std::vector<BarAccess> accesses;
  std::vector<std::pair<int, std::optional<uint64_t>>> decode_changes;

 private:
  PciConfigSpace config_;
};

// Plays the guest's port accesses on the conf1 ports (0xcf8-0xcff).
class Conf1Guest {
 public:
  explicit Conf1Guest(BusDevice& ports) : ports_(ports) {}

  void out32(uint16_t port, uint32_t v) { out(port, v, 4); }
  void out16(uint16_t port, uint16_t v) { out(port, v, 2); }
  void out8(uint16_t port, uint8_t v) { out(port, v, 1); }
  uint32_t in32(uint16_t port) { return static_cast<uint32_t>(in(port, 4)); }
  uint16_t in16(uint16_t port) { return static_cast<uint16_t>(in(port, 2)); }
  uint8_t in8(uint16_t port) { return static_cast<uint8_t>(in(port, 1)); }

  static uint32_t address(uint8_t slot, uint8_t reg, uint8_t bus = 0, uint8_t fn = 0) {
    return 0x80000000u | uint32_t{bus} << 16 | uint32_t{slot} << 11 | uint32_t{fn} << 8 | reg;
  }
  uint32_t read_config(uint8_t slot, uint8_t reg) {
    out32(0xcf8, address(slot, reg));
    return in32(0xcfc);
  }
  void write_config(uint8_t slot, uint8_t reg, uint32_t v) {
    out32(0xcf8, address(slot, reg));
    out32(0xcfc, v);
  }
  void write_command(uint8_t slot, uint16_t v) {
    out32(0xcf8, address(slot, 0x04));
    out16(0xcfc, v);
  }

 private:
  void out(uint16_t port, uint64_t v, size_t n) {
    std::array<uint8_t, 4> b{};
    for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(v >> (8 * i));
    ports_.write(port - PciRoot::kConfigAddressPort, std::span<const uint8_t>(b).first(n));
  }
  uint64_t in(uint16_t port, size_t n) {
    std::array<uint8_t, 4> b{};
    ports_.read(port - PciRoot::kConfigAddressPort, std::span<uint8_t>(b).first(n));
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= uint64_t{b[i]} << (8 * i);
    return v;
  }
  BusDevice& ports_;
};

bool bus_read_claimed(const Bus& bus, uint64_t addr) {
  std::array<uint8_t, 4> b{};
  return bus.read(addr, b);
}

class PciRootTest : public ::testing::Test {
 protected:
  Bus pio_{"pio"};
  Bus mmio_{"mmio"};
  PciRoot root_{pio_, mmio_, kWindows};
  Conf1Guest guest_{root_.config_ports()};
};

// ---- configuration mechanism #1 ----

TEST_F(PciRootTest, HostBridgeIdentifiesAtSlotZero) {
  EXPECT_EQ(guest_.read_config(0, 0x00), 0x00081b36u);
  EXPECT_EQ(guest_.read_config(0, 0x08) >> 8, 0x060000u);   // class 06/00/00
  EXPECT_EQ(guest_.read_config(0, 0x0c) >> 16 & 0x7f, 0u);  // header type 0
}

TEST_F(PciRootTest, AbsentSlotReadsAllOnes) {
  EXPECT_EQ(guest_.read_config(5, 0x00), 0xffffffffu);
}

TEST_F(PciRootTest, OtherBusesAndFunctionsReadAllOnes) {
  guest_.out32(0xcf8, Conf1Guest::address(0, 0x00, 1, 0));
  const uint32_t other_bus = guest_.in32(0xcfc);
  guest_.out32(0xcf8, Conf1Guest::address(0, 0x00, 0, 1));
  const uint32_t other_function = guest_.in32(0xcfc);

  EXPECT_EQ(other_bus, 0xffffffffu);
  EXPECT_EQ(other_function, 0xffffffffu);
}

TEST_F(PciRootTest, DataPortReadsAllOnesWhenEnableBitIsClear) {
  guest_.out32(0xcf8, 0x00000000);

  EXPECT_EQ(guest_.in32(0xcfc), 0xffffffffu);
}

TEST_F(PciRootTest, ByteAndWordAccessesHitTheMatchingConfigBytes) {
  RecordingDevice dev(0x1234, 0x5678);
  ASSERT_TRUE(root_.add_device(3, dev));
  guest_.out32(0xcf8, Conf1Guest::address(3, 0x00));

  EXPECT_EQ(guest_.in8(0xcfc), 0x34);
  EXPECT_EQ(guest_.in8(0xcfd), 0x12);
  EXPECT_EQ(guest_.in16(0xcfe), 0x5678);
  EXPECT_EQ(guest_.in8(0xcff), 0x56);
}

TEST_F(PciRootTest, MisalignedWordAtDataPortReadsAllOnes) {
  guest_.out32(0xcf8, Conf1Guest::address(0, 0x00));

  EXPECT_EQ(guest_.in16(0xcfd), 0xffff);
}

TEST_F(PciRootTest, ByteWriteAtDataPortLandsAtRegisterPlusPortOffset) {
  RecordingDevice dev(0x1234, 0x5678);
  ASSERT_TRUE(root_.add_device(3, dev));
  guest_.out32(0xcf8, Conf1Guest::address(3, 0x3c));

  guest_.out8(0xcfc, 0x0b);  // Interrupt Line
  guest_.out8(0xcfd, 0x04);  // Interrupt Pin, read-only

  EXPECT_EQ(dev.config().get(PciReg8::InterruptLine), 0x0b);
  EXPECT_EQ(dev.config().get(PciReg8::InterruptPin), 0);
}

TEST_F(PciRootTest, ConfigAddressLatchesOnlyDwordWrites) {
  guest_.out32(0xcf8, Conf1Guest::address(2, 0x10) | 0x3);  // bits 1:0 read as zero
  guest_.out8(0xcfb, 0x00);                                 // not a conf1 access

  EXPECT_EQ(guest_.in32(0xcf8), Conf1Guest::address(2, 0x10));
  EXPECT_EQ(guest_.in8(0xcf8), 0xff);
  EXPECT_EQ(guest_.in16(0xcfa), 0xffff);
}

TEST_F(PciRootTest, ConfigAddressDropsReservedAndExtendedRegisterBits) {
  guest_.out32(0xcf8, Conf1Guest::address(0, 0x00) | 0x0f000000);

  EXPECT_EQ(guest_.in32(0xcf8), Conf1Guest::address(0, 0x00));
  EXPECT_EQ(guest_.in32(0xcfc), 0x00081b36u);
}

TEST_F(PciRootTest, WriteToAbsentSlotIsDropped) {
  RecordingDevice dev(0x1234, 0x5678);
  guest_.write_config(7, 0x3c, 0x0b);

  ASSERT_TRUE(root_.add_device(7, dev));

  EXPECT_EQ(dev.config().get(PciReg8::InterruptLine), 0);
}

TEST_F(PciRootTest, ConfigPortsWorkFromThePioBus) {
  ASSERT_TRUE(
      pio_.insert(PciRoot::kConfigAddressPort, PciRoot::kConfigPortsLen, &root_.config_ports()));
  const uint32_t addr = Conf1Guest::address(0, 0x00);
  const std::array<uint8_t, 4> a{static_cast<uint8_t>(addr), static_cast<uint8_t>(addr >> 8),
                                 static_cast<uint8_t>(addr >> 16),
                                 static_cast<uint8_t>(addr >> 24)};
  std::array<uint8_t, 2> vendor{};

  ASSERT_TRUE(pio_.write(0xcf8, a));
  ASSERT_TRUE(pio_.read(0xcfc, vendor));

  EXPECT_EQ(vendor, (std::array<uint8_t, 2>{0x36, 0x1b}));
}

// ---- slots ----

TEST_F(PciRootTest, AddDeviceRejectsSlotZeroOutOfRangeAndTakenSlots) {
  RecordingDevice a(1, 1), b(2, 2);
  ASSERT_TRUE(root_.add_device(4, a));

  EXPECT_FALSE(root_.add_device(0, b));
  EXPECT_FALSE(root_.add_device(32, b));
  EXPECT_FALSE(root_.add_device(4, b));
  EXPECT_EQ(root_.device(4), &a);
}

TEST_F(PciRootTest, AddDeviceWithoutSlotTakesLowestFree) {
  RecordingDevice a(1, 1), b(2, 2), c(3, 3);
  ASSERT_TRUE(root_.add_device(1, a));

  auto sb = root_.add_device(b);
  auto sc = root_.add_device(c);

  ASSERT_TRUE(sb && sc);
  EXPECT_EQ(*sb, 2);
  EXPECT_EQ(*sc, 3);
}

// ---- BAR allocation ----

TEST_F(PciRootTest, BarsAreNaturallyAlignedInsideTheirWindows) {
  RecordingDevice dev(1, 1);
  ASSERT_TRUE(dev.config().add_bar(0, 0x20, PciBarKind::Io));
  ASSERT_TRUE(dev.config().add_bar(1, 0x100, PciBarKind::Mem32));
  ASSERT_TRUE(dev.config().add_bar(2, 0x100000, PciBarKind::Mem32));
  ASSERT_TRUE(dev.config().add_bar(3, 0x4000, PciBarKind::Mem64, true));

  ASSERT_TRUE(root_.add_device(1, dev));

  const PciConfigSpace& c = dev.config();
  EXPECT_EQ(c.bar_address(0) % 0x20, 0u);
  EXPECT_GE(c.bar_address(0), kWindows.io_base);
  EXPECT_LE(c.bar_address(0) + 0x20, kWindows.io_base + kWindows.io_size);
  EXPECT_EQ(c.bar_address(1) % 0x1000, 0u);  // memory BARs at least page aligned
  EXPECT_GE(c.bar_address(1), kWindows.mmio32_base);
  EXPECT_EQ(c.bar_address(2) % 0x100000, 0u);
  EXPECT_LE(c.bar_address(2) + 0x100000, kWindows.mmio32_base + kWindows.mmio32_size);
  EXPECT_EQ(c.bar_address(3) % 0x4000, 0u);
  EXPECT_GE(c.bar_address(3), kWindows.mmio64_base);
  EXPECT_LE(c.bar_address(3) + 0x4000, kWindows.mmio64_base + kWindows.mmio64_size);
}

TEST_F(PciRootTest, BarsOfDifferentDevicesDoNotOverlap) {
  RecordingDevice a(1, 1), b(2, 2);
  ASSERT_TRUE(a.config().add_bar(0, 0x2000, PciBarKind::Mem32));
  ASSERT_TRUE(b.config().add_bar(0, 0x2000, PciBarKind::Mem32));

  ASSERT_TRUE(root_.add_device(1, a));
  ASSERT_TRUE(root_.add_device(2, b));

  const uint64_t x = a.config().bar_address(0), y = b.config().bar_address(0);
  EXPECT_TRUE(x + 0x2000 <= y || y + 0x2000 <= x);
}

TEST(PciRootWindows, Mem64BarFallsBackTo32BitWindowWithoutA64BitWindow) {
  Bus pio("pio"), mmio("mmio");
  PciRoot root(pio, mmio, PciWindows{0xc000, 0x4000, 0xc0000000, 0x10000000, 0, 0});
  RecordingDevice dev(1, 1);
  ASSERT_TRUE(dev.config().add_bar(0, 0x4000, PciBarKind::Mem64));

  ASSERT_TRUE(root.add_device(1, dev));

  EXPECT_GE(dev.config().bar_address(0), 0xc0000000u);
  EXPECT_LT(dev.config().bar_address(0), 0xd0000000u);
}

TEST(PciRootWindows, ExhaustedWindowRefusesDeviceAndLeavesSlotEmpty) {
  Bus pio("pio"), mmio("mmio");
  PciRoot root(pio, mmio, PciWindows{0xc000, 0x100, 0xc0000000, 0x1000, 0, 0});
  RecordingDevice big(1, 1), small(2, 2);
  ASSERT_TRUE(big.config().add_bar(0, 0x2000, PciBarKind::Mem32));
  ASSERT_TRUE(small.config().add_bar(0, 0x1000, PciBarKind::Mem32));

  auto r = root.add_device(1, big);

  EXPECT_FALSE(r);
  EXPECT_EQ(root.device(1), nullptr);
  EXPECT_TRUE(root.add_device(1, small));  // the failed attempt consumed nothing
}

TEST_F(PciRootTest, WindowsAreExposed) {
  EXPECT_EQ(root_.windows().mmio32_base, kWindows.mmio32_base);
  EXPECT_EQ(root_.windows().mmio64_size, kWindows.mmio64_size);
}

// ---- decoding ----

class PciRootDecodeTest : public PciRootTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dev_.config().add_bar(0, 0x20, PciBarKind::Io));
    ASSERT_TRUE(dev_.config().add_bar(1, 0x1000, PciBarKind::Mem32));
    ASSERT_TRUE(dev_.config().add_bar(2, 0x4000, PciBarKind::Mem64));
    ASSERT_TRUE(root_.add_device(kSlot, dev_));
    io_ = dev_.config().bar_address(0);
    mem_ = dev_.config().bar_address(1);
    mem64_ = dev_.config().bar_address(2);
  }
  static constexpr uint8_t kSlot = 2;
  RecordingDevice dev_{0x1af4, 0x1000};
  uint64_t io_ = 0, mem_ = 0, mem64_ = 0;
};

TEST_F(PciRootDecodeTest, BarsAreNotOnTheBusWhileDecodingIsDisabled) {
  EXPECT_FALSE(bus_read_claimed(pio_, io_));
  EXPECT_FALSE(bus_read_claimed(mmio_, mem_));
  EXPECT_FALSE(bus_read_claimed(mmio_, mem64_));
  EXPECT_TRUE(dev_.decode_changes.empty());
}

TEST_F(PciRootDecodeTest, MemorySpaceEnableMapsMemoryBarsOnly) {
  guest_.write_command(kSlot, pci_command::kMemorySpace);

  EXPECT_TRUE(bus_read_claimed(mmio_, mem_ + 0x10));
  EXPECT_TRUE(bus_read_claimed(mmio_, mem64_));
  EXPECT_FALSE(bus_read_claimed(pio_, io_));
  EXPECT_EQ(dev_.accesses[0], (BarAccess{1, 0x10, 4, false}));
}

TEST_F(PciRootDecodeTest, IoSpaceEnableMapsIoBar) {
  guest_.write_command(kSlot, pci_command::kIoSpace);
  const std::array<uint8_t, 1> b{0x5a};

  ASSERT_TRUE(pio_.write(io_ + 3, b));

  EXPECT_EQ(dev_.accesses, (std::vector<BarAccess>{{0, 3, 1, true}}));
  EXPECT_FALSE(bus_read_claimed(mmio_, mem_));
}

TEST_F(PciRootDecodeTest, DeviceHearsAboutDecodeChanges) {
  guest_.write_command(kSlot, pci_command::kMemorySpace);
  guest_.write_command(kSlot, 0);

  using Change = std::pair<int, std::optional<uint64_t>>;
  EXPECT_EQ(dev_.decode_changes,
            (std::vector<Change>{{1, mem_}, {2, mem64_}, {1, std::nullopt}, {2, std::nullopt}}));
}

TEST_F(PciRootDecodeTest, DisablingMemorySpaceTakesBarsOffTheBus) {
  guest_.write_command(kSlot, pci_command::kMemorySpace);

  guest_.write_command(kSlot, 0);

  EXPECT_FALSE(bus_read_claimed(mmio_, mem_));
  EXPECT_FALSE(bus_read_claimed(mmio_, mem64_));
}

TEST_F(PciRootDecodeTest, GuestMovingBarMovesBusRange) {
  guest_.write_command(kSlot, pci_command::kMemorySpace);
  const uint64_t moved = 0xc8000000;

  guest_.write_config(kSlot, 0x14, static_cast<uint32_t>(moved));

  EXPECT_FALSE(bus_read_claimed(mmio_, mem_));
  EXPECT_TRUE(bus_read_claimed(mmio_, moved + 0x20));
  EXPECT_EQ(dev_.accesses.back(), (BarAccess{1, 0x20, 4, false}));
}

TEST_F(PciRootDecodeTest, GuestMovingIoBarMovesPioRange) {
  guest_.write_command(kSlot, pci_command::kIoSpace);

  guest_.write_config(kSlot, 0x10, 0xd000);

  EXPECT_FALSE(bus_read_claimed(pio_, io_));
  EXPECT_TRUE(bus_read_claimed(pio_, 0xd000));
}

TEST_F(PciRootDecodeTest, GuestMoving64BitBarHalfByHalfEndsAtCombinedAddress) {
  guest_.write_command(kSlot, pci_command::kMemorySpace);

  guest_.write_config(kSlot, 0x18, 0x40000000);
  guest_.write_config(kSlot, 0x1c, 0x90);

  EXPECT_FALSE(bus_read_claimed(mmio_, mem64_));
  EXPECT_FALSE(bus_read_claimed(mmio_, 0x40000000));
  EXPECT_TRUE(bus_read_claimed(mmio_, 0x9040000000));
}

TEST_F(PciRootDecodeTest, SizingPatternIsNeverDecoded) {
  guest_.write_command(kSlot, pci_command::kMemorySpace);

  guest_.write_config(kSlot, 0x14, 0xffffffff);

  EXPECT_EQ(guest_.read_config(kSlot, 0x14), 0xfffff000u);
  EXPECT_FALSE(bus_read_claimed(mmio_, 0xfffff000));
  EXPECT_FALSE(bus_read_claimed(mmio_, mem_));
}

TEST_F(PciRootDecodeTest, RestoringBarAfterSizingDecodesItAgain) {
  guest_.write_command(kSlot, pci_command::kMemorySpace);
  guest_.write_config(kSlot, 0x14, 0xffffffff);

  guest_.write_config(kSlot, 0x14, static_cast<uint32_t>(mem_));

  EXPECT_TRUE(bus_read_claimed(mmio_, mem_));
}

TEST_F(PciRootDecodeTest, SizingWithDecodingOffThenEnablingMapsProgrammedAddress) {
  guest_.write_config(kSlot, 0x14, 0xffffffff);
  guest_.write_config(kSlot, 0x14, 0xc9000000);

  guest_.write_command(kSlot, pci_command::kMemorySpace);

  EXPECT_TRUE(bus_read_claimed(mmio_, 0xc9000000));
}

TEST_F(PciRootDecodeTest, BarMovedOntoAnotherBarIsRefusedWithoutCrashing) {
  RecordingDevice other(0x1af4, 0x1001);
  ASSERT_TRUE(other.config().add_bar(0, 0x1000, PciBarKind::Mem32));
  ASSERT_TRUE(root_.add_device(3, other));
  guest_.write_command(kSlot, pci_command::kMemorySpace);
  guest_.write_command(3, pci_command::kMemorySpace);

  guest_.write_config(3, 0x10, static_cast<uint32_t>(mem_));  // onto dev_'s BAR1

  std::array<uint8_t, 4> b{};
  ASSERT_TRUE(mmio_.read(mem_, b));
  EXPECT_EQ(dev_.accesses.back(), (BarAccess{1, 0, 4, false}));
  EXPECT_TRUE(other.accesses.empty());
  EXPECT_EQ(other.decode_changes.back(),
            (std::pair<int, std::optional<uint64_t>>{0, std::nullopt}));
}

TEST_F(PciRootDecodeTest, RefusedBarIsDecodedOnceMovedToAFreeAddress) {
  RecordingDevice other(0x1af4, 0x1001);
  ASSERT_TRUE(other.config().add_bar(0, 0x1000, PciBarKind::Mem32));
  ASSERT_TRUE(root_.add_device(3, other));
  guest_.write_command(kSlot, pci_command::kMemorySpace);
  guest_.write_command(3, pci_command::kMemorySpace);
  guest_.write_config(3, 0x10, static_cast<uint32_t>(mem_));

  guest_.write_config(3, 0x10, 0xca000000);

  std::array<uint8_t, 4> b{};
  ASSERT_TRUE(mmio_.read(0xca000000, b));
  EXPECT_EQ(other.accesses.size(), 1u);
}

// Regression: Bus::write must not hold the PIO bus lock while it calls the conf1 device, since
// mapping the I/O BAR then takes that bus lock exclusively (this deadlocked once).
TEST(PciRootOnPioBus, EnablingIoDecodeThroughThePioBusMapsTheIoBar) {
  Bus pio("pio"), mmio("mmio");
  RecordingDevice dev(1, 1);
  ASSERT_TRUE(dev.config().add_bar(0, 0x20, PciBarKind::Io));
  PciRoot root(pio, mmio, kWindows);
  ASSERT_TRUE(root.add_device(1, dev));
  ASSERT_TRUE(
      pio.insert(PciRoot::kConfigAddressPort, PciRoot::kConfigPortsLen, &root.config_ports()));
  const uint32_t addr = Conf1Guest::address(1, 0x04);
  const std::array<uint8_t, 4> a{static_cast<uint8_t>(addr), static_cast<uint8_t>(addr >> 8),
                                 static_cast<uint8_t>(addr >> 16),
                                 static_cast<uint8_t>(addr >> 24)};
  const std::array<uint8_t, 2> command{pci_command::kIoSpace, 0};
  ASSERT_TRUE(pio.write(0xcf8, a));

  ASSERT_TRUE(pio.write(0xcfc, command));

  EXPECT_TRUE(bus_read_claimed(pio, dev.config().bar_address(0)));
}

TEST(PciRootLifetime, DestroyingRootTakesBarsOffTheBuses) {
  Bus pio("pio"), mmio("mmio");
  RecordingDevice dev(1, 1);
  ASSERT_TRUE(dev.config().add_bar(0, 0x1000, PciBarKind::Mem32));
  uint64_t addr = 0;
  {
    PciRoot root(pio, mmio, kWindows);
    ASSERT_TRUE(root.add_device(1, dev));
    Conf1Guest guest(root.config_ports());
    guest.write_command(1, pci_command::kMemorySpace);
    addr = dev.config().bar_address(0);
    ASSERT_TRUE(bus_read_claimed(mmio, addr));
  }

  EXPECT_FALSE(bus_read_claimed(mmio, addr));
}

}  // namespace
}  // namespace iovirt
