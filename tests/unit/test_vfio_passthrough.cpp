#include <gtest/gtest.h>
#include <linux/vfio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "iovirt/core/bus.hpp"
#include "iovirt/core/log.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/core/pci_config.hpp"
#include "iovirt/irq/gsi_router.hpp"
#include "iovirt/irq/recording_irq_chip.hpp"
#include "iovirt/vfio/passthrough.hpp"
#include "iovirt/vfio/testing/recording_transport.hpp"
#include "iovirt/vmm/pci_root.hpp"

namespace iovirt::vfio {
namespace {

using testing::RecordingMemoryMapper;
using testing::RecordingTransport;
using IrqKind = RecordingTransport::IrqCall::Kind;

constexpr uint64_t kPage = 4096;

// Little-endian pokes into a real device's config bytes.
struct ConfigBytes {
  std::vector<uint8_t> b;
  explicit ConfigBytes(size_t size = 4096) : b(size, 0) {}
  ConfigBytes& w8(size_t off, uint8_t v) {
    b[off] = v;
    return *this;
  }
  ConfigBytes& w16(size_t off, uint16_t v) {
    for (size_t i = 0; i < 2; ++i) b[off + i] = static_cast<uint8_t>(v >> (8 * i));
    return *this;
  }
  ConfigBytes& w32(size_t off, uint32_t v) {
    for (size_t i = 0; i < 4; ++i) b[off + i] = static_cast<uint8_t>(v >> (8 * i));
    return *this;
  }
};

// An 82574L (e1000e)-like function: BAR0 128 KiB mem32, BAR2 32-byte I/O, BAR3 16 KiB with a
// 5-vector MSI-X table at 0 and the PBA at 0x2000; capabilities PM@0xc8 -> MSI@0xd0 ->
// PCIe@0xe0 -> vendor-specific@0xf8 -> MSI-X@0xa0; an AER extended capability at 0x100.
ConfigBytes e1000e_config() {
  ConfigBytes c;
  c.w16(0x00, 0x8086).w16(0x02, 0x10d3).w16(0x04, 0).w16(0x06, pci_status::kCapabilitiesList);
  c.w8(0x08, 0x00).w8(0x09, 0x00).w8(0x0a, 0x00).w8(0x0b, 0x02).w8(0x0e, 0x00);
  c.w32(0x10, 0x0).w32(0x14, 0x0).w32(0x18, 0x1).w32(0x1c, 0x0);
  c.w16(0x2c, 0x8086).w16(0x2e, 0xa01f).w32(0x30, 0xfffc0001);
  c.w8(0x34, 0xc8).w8(0x3c, 0x0b).w8(0x3d, 0x01);
  // PM: version 2, PME from D0/D3hot/D3cold, device in D3hot with No_Soft_Reset.
  c.w8(0xc8, 0x01).w8(0xc9, 0xd0).w16(0xca, 0xc822).w16(0xcc, 0x010b);
  // MSI: 64-bit, 1 message, no masking; stale address/data from the host driver.
  c.w8(0xd0, 0x05).w8(0xd1, 0xe0).w16(0xd2, 0x0081).w32(0xd4, 0xfee0100c).w16(0xdc, 0x4055);
  // PCIe v1 endpoint: DevCtl with MPS 256, DevSta with error bits, LnkCtl ASPM L1.
  c.w8(0xe0, 0x10).w8(0xe1, 0xf8).w16(0xe2, 0x0001).w32(0xe4, 0x00008cc1);
  c.w16(0xe8, 0x2830).w16(0xea, 0x0009).w32(0xec, 0x00013c11).w16(0xf0, 0x0042).w16(0xf2, 0x1011);
  // Vendor-specific, 8 bytes.
  c.w8(0xf8, 0x09).w8(0xf9, 0xa0).w8(0xfa, 0x08).w8(0xfb, 0xaa).w32(0xfc, 0xdeadbeef);
  // MSI-X: 5 vectors, table BAR3+0, PBA BAR3+0x2000.
  c.w8(0xa0, 0x11).w8(0xa1, 0x00).w16(0xa2, 0x0004).w32(0xa4, 0x00000003).w32(0xa8, 0x00002003);
  // AER at 0x100.
  c.w32(0x100, 0x14010001);
  return c;
}

void e1000e_regions(RecordingTransport& t) {
  t.add_bar(0, 128 * 1024, true);
  t.add_bar(2, 32, false);
  t.add_bar(3, 16 * 1024, true);
  t.add_bar(VFIO_PCI_ROM_REGION_INDEX, 256 * 1024, false);
  t.set_irq_count(VFIO_PCI_INTX_IRQ_INDEX, 1);
  t.set_irq_count(VFIO_PCI_MSI_IRQ_INDEX, 1);
  t.set_irq_count(VFIO_PCI_MSIX_IRQ_INDEX, 5);
}

// An edu-like function: BAR0 1 MiB (mem32 unless `bar0_raw` says otherwise), MSI only (32-bit,
// up to 4 messages, per-vector masking), pin 1.
ConfigBytes edu_config(uint32_t bar0_raw = 0) {
  ConfigBytes c(256);
  c.w16(0x00, 0x1234).w16(0x02, 0x11e8).w16(0x06, pci_status::kCapabilitiesList);
  c.w8(0x08, 0x10).w8(0x0b, 0x00).w8(0x0a, 0xff);
  c.w32(0x10, bar0_raw).w8(0x34, 0x40).w8(0x3d, 0x01);
  c.w8(0x40, 0x05).w8(0x41, 0x00).w16(0x42, 0x0104);  // MMC 2 (4 vectors), per-vector masking
  return c;
}

class PassthroughTest : public ::testing::Test {
 protected:
  Result<std::unique_ptr<PassthroughDevice>> make(RecordingTransport& t) {
    return PassthroughDevice::create(t, mapper_, router_, chip_, metrics_, "0000:02:00.0");
  }
  std::unique_ptr<PassthroughDevice> make_e1000e() {
    t_ = std::make_unique<RecordingTransport>(e1000e_config().b);
    e1000e_regions(*t_);
    auto d = make(*t_);
    EXPECT_TRUE(d) << (d ? "" : d.error().message());
    return d ? std::move(*d) : nullptr;
  }
  std::unique_ptr<PassthroughDevice> make_edu(uint32_t bar0_raw = 0, uint32_t msi_count = 4) {
    t_ = std::make_unique<RecordingTransport>(edu_config(bar0_raw).b);
    t_->add_bar(0, 1 << 20, true);
    t_->set_irq_count(VFIO_PCI_INTX_IRQ_INDEX, 1);
    t_->set_irq_count(VFIO_PCI_MSI_IRQ_INDEX, msi_count);
    auto d = make(*t_);
    EXPECT_TRUE(d) << (d ? "" : d.error().message());
    return d ? std::move(*d) : nullptr;
  }

  static uint32_t cfg32(PciDevice& d, uint16_t off) {
    std::array<uint8_t, 4> b{};
    d.config_read(off, b);
    return uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
  }
  static uint16_t cfg16(PciDevice& d, uint16_t off) {
    std::array<uint8_t, 2> b{};
    d.config_read(off, b);
    return static_cast<uint16_t>(b[0] | b[1] << 8);
  }
  static void wcfg32(PciDevice& d, uint16_t off, uint32_t v) {
    std::array<uint8_t, 4> b{};
    for (size_t i = 0; i < 4; ++i) b[i] = static_cast<uint8_t>(v >> (8 * i));
    d.config_write(off, b);
  }
  static void wcfg16(PciDevice& d, uint16_t off, uint16_t v) {
    const std::array<uint8_t, 2> b{static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8)};
    d.config_write(off, b);
  }
  static void bar32w(PciDevice& d, int bar, uint64_t off, uint32_t v) {
    std::array<uint8_t, 4> b{};
    for (size_t i = 0; i < 4; ++i) b[i] = static_cast<uint8_t>(v >> (8 * i));
    d.bar_write(bar, off, b);
  }
  static uint32_t bar32r(PciDevice& d, int bar, uint64_t off) {
    std::array<uint8_t, 4> b{};
    d.bar_read(bar, off, b);
    return uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
  }
  // Programs MSI-X table entry `v` (address, data, vector control).
  static void msix_entry(PciDevice& d, uint16_t v, uint64_t addr, uint32_t data, bool masked) {
    const uint64_t e = uint64_t{v} * 16;
    bar32w(d, 3, e + 0, static_cast<uint32_t>(addr));
    bar32w(d, 3, e + 4, static_cast<uint32_t>(addr >> 32));
    bar32w(d, 3, e + 8, data);
    bar32w(d, 3, e + 12, masked ? 1 : 0);
  }
  std::vector<RecordingTransport::IrqCall> irq_calls(IrqKind kind, uint32_t index) const {
    std::vector<RecordingTransport::IrqCall> out;
    for (const auto& c : t_->irq_calls())
      if (c.kind == kind && c.index == index) out.push_back(c);
    return out;
  }

  RecordingIrqChip chip_;
  GsiRouter router_{chip_};
  MetricsRegistry metrics_;
  RecordingMemoryMapper mapper_;
  std::unique_ptr<RecordingTransport> t_;
};

// ---- identity, header, BARs ----

TEST_F(PassthroughTest, IdentityIsCopiedAndReadOnly) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  EXPECT_EQ(t_->resets(), 1u) << "the function is reset at attach";
  EXPECT_EQ(cfg32(*d, 0x00), 0x10d38086u);
  EXPECT_EQ(cfg32(*d, 0x08), 0x02000000u);  // class 02/00/00, revision 0
  EXPECT_EQ(cfg32(*d, 0x2c), 0xa01f8086u);
  wcfg32(*d, 0x00, 0x12345678);
  wcfg32(*d, 0x08, 0xffffffff);
  wcfg32(*d, 0x2c, 0);
  EXPECT_EQ(cfg32(*d, 0x00), 0x10d38086u);
  EXPECT_EQ(cfg32(*d, 0x08), 0x02000000u);
  EXPECT_EQ(cfg32(*d, 0x2c), 0xa01f8086u);
  EXPECT_TRUE(t_->config_writes().empty()) << "identity writes never reach the device";
  // INTx is offered only once the VMM wires it (set_intx_gsi).
  EXPECT_EQ(cfg16(*d, 0x3c) >> 8, 0u);
}

TEST_F(PassthroughTest, BarSizingReportsTheRegionSizesAndKinds) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  for (int i = 0; i < kPciNumBars; ++i) wcfg32(*d, pci_bar_offset(i), 0xffffffff);
  EXPECT_EQ(cfg32(*d, 0x10), 0xfffe0000u);  // 128 KiB mem32
  EXPECT_EQ(cfg32(*d, 0x14), 0u);           // no BAR1
  EXPECT_EQ(cfg32(*d, 0x18), 0xffffffe1u);  // 32-byte I/O
  EXPECT_EQ(cfg32(*d, 0x1c), 0xffffc000u);  // 16 KiB mem32
  EXPECT_EQ(cfg32(*d, 0x20), 0u);
  EXPECT_EQ(cfg32(*d, 0x24), 0u);
  wcfg32(*d, 0x10, 0xe0000000);
  EXPECT_EQ(d->config().bar_address(0), 0xe0000000u);
  EXPECT_TRUE(t_->config_writes().empty()) << "BAR programming stays in the emulated copy";
}

TEST_F(PassthroughTest, SixtyFourBitPrefetchableBarTakesTwoSlots) {
  auto d = make_edu(/*bar0_raw=*/0x0c);  // 64-bit, prefetchable
  ASSERT_TRUE(d);
  auto info = d->config().bar(0);
  ASSERT_TRUE(info);
  EXPECT_EQ(info->kind, PciBarKind::Mem64);
  EXPECT_TRUE(info->prefetchable);
  EXPECT_FALSE(d->config().bar(1));
  wcfg32(*d, 0x10, 0xffffffff);
  wcfg32(*d, 0x14, 0xffffffff);
  EXPECT_EQ(cfg32(*d, 0x10), 0xfff0000cu);
  EXPECT_EQ(cfg32(*d, 0x14), 0xffffffffu);
  wcfg32(*d, 0x10, 0x00000000);
  wcfg32(*d, 0x14, 0x00000080);
  EXPECT_EQ(d->config().bar_address(0), 0x8000000000u);
}

TEST_F(PassthroughTest, RomBarIsHidden) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  EXPECT_EQ(cfg32(*d, 0x30), 0u);
  wcfg32(*d, 0x30, 0xffffffff);
  EXPECT_EQ(cfg32(*d, 0x30), 0u) << "a sizing write finds no ROM";
}

TEST_F(PassthroughTest, BarThatIsNotAPowerOfTwoIsHidden) {
  t_ = std::make_unique<RecordingTransport>(edu_config().b);
  t_->add_bar(0, 3 * kPage, true);
  t_->set_irq_count(VFIO_PCI_MSI_IRQ_INDEX, 1);
  auto d = make(*t_);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_FALSE((*d)->config().bar(0));
  wcfg32(**d, 0x10, 0xffffffff);
  EXPECT_EQ(cfg32(**d, 0x10), 0u);
}

// ---- capabilities ----

TEST_F(PassthroughTest, CapabilityChainIsRebuiltAtTheDeviceOffsets) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  auto walk = walk_pci_capabilities(d->config().bytes());
  ASSERT_TRUE(walk) << walk.error().message();
  std::vector<std::pair<uint8_t, uint8_t>> got;
  for (const auto& c : *walk) got.emplace_back(c.id, c.offset);
  const std::vector<std::pair<uint8_t, uint8_t>> want{
      {0x01, 0xc8}, {0x05, 0xd0}, {0x10, 0xe0}, {0x11, 0xa0}};
  EXPECT_EQ(got, want);
  EXPECT_EQ(cfg16(*d, 0x06) & pci_status::kCapabilitiesList, pci_status::kCapabilitiesList);
  EXPECT_EQ(cfg32(*d, 0xe0) >> 8 & 0xff, 0xa0u) << "PCIe now links over the hidden vendor cap";
  EXPECT_EQ(cfg32(*d, 0xf8), 0u) << "the vendor-specific capability is gone";
  EXPECT_EQ(cfg32(*d, 0xfc), 0u);
  EXPECT_EQ(cfg32(*d, 0x100), 0u) << "extended capabilities are hidden";
  // MSI-X keeps its table/PBA location, so drivers that hardcode it still work.
  EXPECT_EQ(cfg32(*d, 0xa4), 0x00000003u);
  EXPECT_EQ(cfg32(*d, 0xa8), 0x00002003u);
  EXPECT_EQ(cfg16(*d, 0xa2), 0x0004u);
}

TEST_F(PassthroughTest, PowerManagementIsAlwaysD0AndReadOnly) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  EXPECT_EQ(cfg16(*d, 0xca) & 0xfe00, 0u) << "no PME, no D1/D2 advertised";
  EXPECT_EQ(cfg16(*d, 0xca) & 0x7, 2u) << "PM version kept";
  EXPECT_EQ(cfg16(*d, 0xcc), 0x0008u) << "D0, No_Soft_Reset kept";
  wcfg16(*d, 0xcc, 0x0003);  // the guest tries D3hot
  EXPECT_EQ(cfg16(*d, 0xcc) & 3, 0u);
  EXPECT_TRUE(t_->config_writes().empty());
}

TEST_F(PassthroughTest, PcieControlWritesStayInTheShadow) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  EXPECT_EQ(cfg16(*d, 0xea), 0u) << "Device Status error bits are the host's";
  EXPECT_EQ(cfg32(*d, 0xe4), 0x00008cc1u) << "Device Capabilities copied";
  wcfg16(*d, 0xe8, 0x8050);  // Initiate FLR + MPS 512 + relaxed ordering
  EXPECT_EQ(cfg16(*d, 0xe8), 0x0050u) << "FLR bit dropped, the rest shadowed";
  wcfg16(*d, 0xf0, 0x0000);
  EXPECT_EQ(cfg16(*d, 0xf0), 0u);
  wcfg32(*d, 0xe4, 0);
  EXPECT_EQ(cfg32(*d, 0xe4), 0x00008cc1u) << "Device Capabilities read-only";
  EXPECT_TRUE(t_->config_writes().empty()) << "nothing of the PCIe capability reaches the device";
}

TEST_F(PassthroughTest, LoopingCapabilityListHidesEveryCapability) {
  ConfigBytes c = edu_config();
  c.w8(0x41, 0x40);  // MSI points at itself
  t_ = std::make_unique<RecordingTransport>(c.b);
  t_->add_bar(0, 1 << 20, true);
  t_->set_irq_count(VFIO_PCI_MSI_IRQ_INDEX, 1);
  auto d = make(*t_);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(cfg16(**d, 0x06) & pci_status::kCapabilitiesList, 0);
  EXPECT_EQ(cfg32(**d, 0x34) & 0xff, 0u);
  EXPECT_EQ(cfg32(**d, 0x40), 0u);
  auto walk = walk_pci_capabilities((*d)->config().bytes());
  ASSERT_TRUE(walk);
  EXPECT_TRUE(walk->empty());
}

TEST_F(PassthroughTest, MisalignedCapabilityPointerHidesEveryCapability) {
  ConfigBytes c = edu_config();
  c.w8(0x34, 0x41);
  t_ = std::make_unique<RecordingTransport>(c.b);
  t_->add_bar(0, 1 << 20, true);
  auto d = make(*t_);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_TRUE((*d)->guest_capabilities().empty());
  EXPECT_EQ(cfg32(**d, 0x34) & 0xff, 0u);
}

TEST_F(PassthroughTest, MsixPointingAtAMissingBarIsHiddenAndTheRestKept) {
  ConfigBytes c = e1000e_config();
  c.w32(0xa4, 0x00000004);  // table in BAR4, which does not exist
  t_ = std::make_unique<RecordingTransport>(c.b);
  e1000e_regions(*t_);
  auto d = make(*t_);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ((*d)->msix(), nullptr);
  auto walk = walk_pci_capabilities((*d)->config().bytes());
  ASSERT_TRUE(walk);
  ASSERT_EQ(walk->size(), 3u);
  EXPECT_EQ(walk->back().id, 0x10);
  EXPECT_EQ(cfg32(**d, 0xa0), 0u);
  EXPECT_EQ(cfg32(**d, 0xe0) >> 8 & 0xff, 0u) << "PCIe is now the last capability";
}

TEST_F(PassthroughTest, CapabilityRunningPastConfigSpaceIsHidden) {
  ConfigBytes c = edu_config();
  c.w8(0x41, 0xfc).w8(0xfc, 0x10).w16(0xfe, 0x0002);  // a PCIe v2 cap at 0xfc needs 0x3c bytes
  t_ = std::make_unique<RecordingTransport>(c.b);
  t_->add_bar(0, 1 << 20, true);
  t_->set_irq_count(VFIO_PCI_MSI_IRQ_INDEX, 1);
  auto d = make(*t_);
  ASSERT_TRUE(d) << d.error().message();
  auto caps = (*d)->guest_capabilities();
  ASSERT_EQ(caps.size(), 1u);
  EXPECT_EQ(caps[0].id, 0x05);
  EXPECT_EQ(cfg32(**d, 0x40) >> 8 & 0xff, 0u);
}

TEST_F(PassthroughTest, HostileConfigBytesNeverCrashAndAlwaysWalk) {
  const LogLevel saved = log_level();
  set_log_level(LogLevel::Error);  // thousands of expected "hidden" warnings
  std::mt19937 rng(1234);
  constexpr std::array<uint8_t, 7> kIds{0x01, 0x05, 0x09, 0x10, 0x11, 0xff, 0x00};
  unsigned created = 0;
  unsigned with_caps = 0;
  for (int iter = 0; iter < 600; ++iter) {
    ConfigBytes c(256);
    for (auto& b : c.b) b = static_cast<uint8_t>(rng());
    c.w16(0x00, 0x1af4).w8(0x0e, 0);
    if (iter % 3 != 0) {
      // A plausible chain: dword-aligned pointers, interesting IDs, possibly overlapping, looping
      // or running off the end, with random bodies (MSI/MSI-X/PCIe control words included).
      const unsigned n = 1 + rng() % 6;
      std::vector<uint8_t> offs;
      for (unsigned i = 0; i < n; ++i) offs.push_back(static_cast<uint8_t>(0x40 + 4 * (rng() % 48)));
      c.w8(0x34, offs[0]).w16(0x06, pci_status::kCapabilitiesList);
      for (unsigned i = 0; i < n; ++i) {
        c.w8(offs[i], kIds[rng() % kIds.size()]);
        const bool loop = rng() % 8 == 0;
        c.w8(offs[i] + 1u, i + 1 < n ? offs[i + 1] : (loop ? offs[0] : 0));
      }
    }
    RecordingTransport t(c.b);
    t.add_bar(0, 1 << 16, true);
    t.add_bar(1, 3 * kPage, true);
    t.add_bar(2, 256, false);
    t.add_bar(3, 1 << 14, true);
    t.set_irq_count(VFIO_PCI_MSI_IRQ_INDEX, static_cast<uint32_t>(rng() % 40));
    t.set_irq_count(VFIO_PCI_MSIX_IRQ_INDEX, static_cast<uint32_t>(rng() % 3000));
    auto d = make(t);
    if (!d) continue;
    ++created;
    if (!(*d)->guest_capabilities().empty()) ++with_caps;
    auto walk = walk_pci_capabilities((*d)->config().bytes());
    ASSERT_TRUE(walk) << "iteration " << iter << ": " << walk.error().message();
    EXPECT_EQ(walk->size(), (*d)->guest_capabilities().size()) << "iteration " << iter;
    // Poke every dword of config space with all-ones and zeros, and the BARs: nothing may crash.
    for (uint16_t off = 0; off < 256; off += 4) {
      wcfg32(**d, off, 0xffffffff);
      wcfg32(**d, off, 0);
      wcfg32(**d, off, 0xffffffff);
    }
    for (int bar = 0; bar < kPciNumBars; ++bar)
      for (uint64_t off : {uint64_t{0}, uint64_t{0x800}, uint64_t{0x2000}, uint64_t{0xfffc}}) {
        bar32w(**d, bar, off, 0);
        (void)bar32r(**d, bar, off);
      }
    ASSERT_TRUE(walk_pci_capabilities((*d)->config().bytes()));
  }
  set_log_level(saved);
  EXPECT_GT(created, 500u);
  EXPECT_GT(with_caps, 100u) << "the generator must reach the capability code";
}

TEST_F(PassthroughTest, AbsentOrBridgeFunctionsAreRefused) {
  {
    ConfigBytes c = edu_config();
    c.w16(0x00, 0xffff);
    RecordingTransport t(c.b);
    auto d = make(t);
    ASSERT_FALSE(d);
    EXPECT_NE(d.error().message().find("absent"), std::string::npos) << d.error().message();
  }
  {
    ConfigBytes c = edu_config();
    c.w8(0x0e, 0x01);
    RecordingTransport t(c.b);
    auto d = make(t);
    ASSERT_FALSE(d);
    EXPECT_NE(d.error().message().find("header type 1"), std::string::npos);
  }
  {
    RecordingTransport t(std::vector<uint8_t>(32, 0));
    EXPECT_FALSE(make(t));
  }
}

// ---- command register ----

TEST_F(PassthroughTest, CommandDecodeAndBusMasterBitsAreForwarded) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  wcfg16(*d, 0x04,
         pci_command::kMemorySpace | pci_command::kBusMaster | pci_command::kParityErrorResponse);
  ASSERT_EQ(t_->config_writes().size(), 1u);
  EXPECT_EQ(t_->config_writes()[0].offset, 4u);
  const auto real = static_cast<uint16_t>(t_->config_bytes()[4] | t_->config_bytes()[5] << 8);
  EXPECT_EQ(real, pci_command::kMemorySpace | pci_command::kBusMaster)
      << "parity response stays emulated";
  EXPECT_TRUE(d->config().mem_enabled()) << "the root's decode logic sees the bits";
  wcfg16(*d, 0x04, pci_command::kMemorySpace | pci_command::kBusMaster |
                       pci_command::kIoSpace | pci_command::kInterruptDisable);
  const auto real2 = static_cast<uint16_t>(t_->config_bytes()[4] | t_->config_bytes()[5] << 8);
  EXPECT_EQ(real2, pci_command::kMemorySpace | pci_command::kBusMaster | pci_command::kIoSpace |
                       pci_command::kInterruptDisable);
  // An unchanged value is not re-sent.
  const size_t writes = t_->config_writes().size();
  wcfg16(*d, 0x04, cfg16(*d, 0x04));
  EXPECT_EQ(t_->config_writes().size(), writes);
}

// ---- MSI-X ----

TEST_F(PassthroughTest, MsixEnableHandsTheIrqfdEventfdsToTheDevice) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  ASSERT_NE(d->msix(), nullptr);
  ASSERT_EQ(d->msix()->num_vectors(), 5);
  msix_entry(*d, 0, 0xfee00000, 0x4041, false);
  msix_entry(*d, 3, 0xfee01000, 0x4062, false);
  EXPECT_EQ(chip_.irqfd_count(), 0u) << "nothing is routed while MSI-X is disabled";
  wcfg16(*d, 0xa2, msix::kEnable);
  auto calls = irq_calls(IrqKind::Eventfds, VFIO_PCI_MSIX_IRQ_INDEX);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].start, 0u);
  std::vector<int> want;
  for (uint16_t v = 0; v < 5; ++v) want.push_back(d->msix()->notifier(v));
  EXPECT_EQ(calls[0].fds, want);
  // Vectors 0 and 3 are unmasked: their eventfds are KVM irqfds on routes with their messages.
  for (uint16_t v : {uint16_t{0}, uint16_t{3}}) {
    auto gsi = chip_.irqfd_gsi(d->msix()->notifier(v));
    ASSERT_TRUE(gsi) << "vector " << v;
    auto route = chip_.route(*gsi);
    ASSERT_TRUE(route);
    EXPECT_EQ(route->u.msi.address_lo, v == 0 ? 0xfee00000u : 0xfee01000u);
    EXPECT_EQ(route->u.msi.data, v == 0 ? 0x4041u : 0x4062u);
  }
  EXPECT_FALSE(chip_.irqfd_gsi(d->msix()->notifier(1)));
  EXPECT_EQ(cfg16(*d, 0xa2), msix::kEnable | 4);

  // Mask vector 0: irqfd deassigned; unmask: reassigned.
  bar32w(*d, 3, 12, 1);
  EXPECT_FALSE(chip_.irqfd_gsi(d->msix()->notifier(0)));
  bar32w(*d, 3, 12, 0);
  EXPECT_TRUE(chip_.irqfd_gsi(d->msix()->notifier(0)));

  wcfg16(*d, 0xa2, 0);
  EXPECT_EQ(irq_calls(IrqKind::Disable, VFIO_PCI_MSIX_IRQ_INDEX).size(), 1u);
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  EXPECT_EQ(router_.msi_routes(), 0u);
}

TEST_F(PassthroughTest, MsixTableAndPbaAreEmulatedAndOutOfRangeWritesCreateNothing) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  msix_entry(*d, 2, 0xfee00000, 0x4050, true);
  EXPECT_EQ(bar32r(*d, 3, 2 * 16 + 8), 0x4050u);
  EXPECT_EQ(bar32r(*d, 3, 2 * 16 + 12), 1u);
  EXPECT_EQ(t_->bar_value(3, 2 * 16 + 8, 4), 0u) << "table writes never reach the device's table";
  EXPECT_EQ(bar32r(*d, 3, 0x2000), 0u) << "PBA: nothing pending";
  wcfg16(*d, 0xa2, msix::kEnable);
  const size_t routes = router_.msi_routes();
  // Entry 5 does not exist (table size 5): the write is not a table write.
  msix_entry(*d, 5, 0xfee00000, 0x4070, false);
  EXPECT_EQ(router_.msi_routes(), routes);
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  // Writes past the BAR are dropped, reads are all-ones.
  bar32w(*d, 3, 16 * 1024, 0x1);
  EXPECT_EQ(bar32r(*d, 3, 16 * 1024), 0xffffffffu);
  EXPECT_EQ(bar32r(*d, 3, 16 * 1024 - 2), 0xffffffffu);
  const std::string expo = metrics_.expose();
  EXPECT_NE(expo.find("iovirt_vfio_msix_table_writes_total{device=\"0000:02:00.0\",vector=\"2\"} 4"),
            std::string::npos)
      << expo;
}

TEST_F(PassthroughTest, MsixFunctionMaskHoldsEveryVector) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  msix_entry(*d, 0, 0xfee00000, 0x4041, false);
  wcfg16(*d, 0xa2, msix::kEnable | msix::kFunctionMask);
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  EXPECT_EQ(irq_calls(IrqKind::Eventfds, VFIO_PCI_MSIX_IRQ_INDEX).size(), 1u)
      << "the device gets its eventfds at enable even while function-masked";
  wcfg16(*d, 0xa2, msix::kEnable);
  EXPECT_EQ(chip_.irqfd_count(), 1u);
}

TEST_F(PassthroughTest, TrappedAccessesOutsideTheTableReachTheDeviceRegion) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  // BAR3 0x1800 is in the table's neighbour page; BAR2 is I/O (never mmap'ed).
  bar32w(*d, 3, 0x0800, 0xcafef00d);  // past the 5-entry table, same page
  EXPECT_EQ(t_->bar_value(3, 0x800, 4), 0xcafef00du);
  const std::array<uint8_t, 4> io{0x44, 0x33, 0x22, 0x11};
  ASSERT_TRUE(t_->region_write(2, 8, io));
  EXPECT_EQ(bar32r(*d, 2, 8), 0x11223344u);
  bar32w(*d, 2, 0, 0x55);
  EXPECT_EQ(t_->bar_value(2, 0, 4), 0x55u);
  EXPECT_EQ(bar32r(*d, 2, 30), 0xffffffffu) << "an access past a 32-byte I/O BAR";
  EXPECT_EQ(bar32r(*d, 1, 0), 0xffffffffu) << "no BAR1";
}

// ---- MSI ----

TEST_F(PassthroughTest, MsiEnableCreatesRoutesAndHandsTheEventfdToTheDevice) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  EXPECT_EQ(cfg16(*d, 0xd2), msi::k64Bit) << "MMC 0, disabled, stale data cleared";
  EXPECT_EQ(cfg32(*d, 0xd4), 0u);
  wcfg32(*d, 0xd4, 0xfee0200f);  // bits 1:0 reserved
  wcfg32(*d, 0xd8, 0);
  wcfg16(*d, 0xdc, 0x4033);
  EXPECT_FALSE(d->msi_enabled());
  wcfg16(*d, 0xd2, msi::kEnable | (5u << 4));  // asks for 32 vectors; only 1 is offered
  ASSERT_TRUE(d->msi_enabled());
  auto fds = d->msi_notifiers();
  ASSERT_EQ(fds.size(), 1u);
  auto calls = irq_calls(IrqKind::Eventfds, VFIO_PCI_MSI_IRQ_INDEX);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].fds, fds);
  auto gsi = chip_.irqfd_gsi(fds[0]);
  ASSERT_TRUE(gsi);
  auto route = chip_.route(*gsi);
  ASSERT_TRUE(route);
  EXPECT_EQ(route->u.msi.address_lo, 0xfee0200cu);
  EXPECT_EQ(route->u.msi.data, 0x4033u);
  // A data rewrite re-points the route in place.
  wcfg16(*d, 0xdc, 0x4044);
  EXPECT_EQ(chip_.route(*gsi)->u.msi.data, 0x4044u);
  EXPECT_EQ(chip_.irqfd_gsi(fds[0]), gsi);
  // Disable tears it all down.
  wcfg16(*d, 0xd2, 0);
  EXPECT_FALSE(d->msi_enabled());
  EXPECT_EQ(irq_calls(IrqKind::Disable, VFIO_PCI_MSI_IRQ_INDEX).size(), 1u);
  EXPECT_EQ(router_.msi_routes(), 0u);
  EXPECT_EQ(chip_.irqfd_count(), 0u);
}

TEST_F(PassthroughTest, MultiMessageMsiGetsOneRoutePerVectorAndHonoursMaskBits) {
  auto d = make_edu();
  ASSERT_TRUE(d);
  EXPECT_EQ(cfg16(*d, 0x42), (2u << 1) | msi::kPerVectorMasking);
  // 32-bit layout with masking: address 0x44, data 0x48, mask 0x4c, pending 0x50.
  wcfg32(*d, 0x44, 0xfee00000);
  wcfg16(*d, 0x48, 0x4060);
  wcfg32(*d, 0x4c, 0x2);  // vector 1 masked
  wcfg16(*d, 0x42, msi::kEnable | (2u << 4));
  auto fds = d->msi_notifiers();
  ASSERT_EQ(fds.size(), 4u);
  EXPECT_EQ(irq_calls(IrqKind::Eventfds, VFIO_PCI_MSI_IRQ_INDEX).at(0).fds, fds);
  EXPECT_EQ(router_.msi_routes(), 4u);
  for (uint32_t v = 0; v < 4; ++v) {
    auto gsi = chip_.irqfd_gsi(fds[v]);
    if (v == 1) {
      EXPECT_FALSE(gsi) << "masked vector has no irqfd";
      continue;
    }
    ASSERT_TRUE(gsi);
    EXPECT_EQ(chip_.route(*gsi)->u.msi.data, 0x4060u + v) << "vector in the low data bits";
  }
  wcfg32(*d, 0x4c, 0x8);  // unmask 1, mask 3
  EXPECT_TRUE(chip_.irqfd_gsi(fds[1]));
  EXPECT_FALSE(chip_.irqfd_gsi(fds[3]));
  EXPECT_EQ(cfg32(*d, 0x50), 0u) << "pending bits read 0";
  // Changing the vector count re-creates everything.
  wcfg16(*d, 0x42, msi::kEnable | (1u << 4));
  EXPECT_EQ(d->msi_notifiers().size(), 2u);
  EXPECT_EQ(router_.msi_routes(), 2u);
}

TEST_F(PassthroughTest, MsiVectorCountIsLimitedByTheTransport) {
  auto d = make_edu(0, /*msi_count=*/3);
  ASSERT_TRUE(d);
  EXPECT_EQ((cfg16(*d, 0x42) & msi::kMultipleMessageCapableMask) >> 1, 1u) << "2 of 3";
  wcfg32(*d, 0x4c, 0xffffffff);
  EXPECT_EQ(cfg32(*d, 0x4c), 0x3u) << "mask bits exist only for offered vectors";
}

TEST_F(PassthroughTest, SwitchingFromMsiToMsixDisablesMsiFirst) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  wcfg32(*d, 0xd4, 0xfee00000);
  wcfg16(*d, 0xd2, msi::kEnable);
  ASSERT_TRUE(d->msi_enabled());
  wcfg16(*d, 0xa2, msix::kEnable);
  EXPECT_FALSE(d->msi_enabled());
  const auto& calls = t_->irq_calls();
  ASSERT_GE(calls.size(), 3u);
  EXPECT_EQ(calls[calls.size() - 2].kind, IrqKind::Disable);
  EXPECT_EQ(calls[calls.size() - 2].index, VFIO_PCI_MSI_IRQ_INDEX);
  EXPECT_EQ(calls.back().kind, IrqKind::Eventfds);
  EXPECT_EQ(calls.back().index, VFIO_PCI_MSIX_IRQ_INDEX);
}

TEST_F(PassthroughTest, InterruptCapabilitiesWithoutTransportVectorsAreHidden) {
  t_ = std::make_unique<RecordingTransport>(e1000e_config().b);
  e1000e_regions(*t_);
  t_->set_irq_count(VFIO_PCI_MSI_IRQ_INDEX, 0);
  t_->set_irq_count(VFIO_PCI_MSIX_IRQ_INDEX, 3);  // fewer than the table's 5
  auto d = make(*t_);
  ASSERT_TRUE(d) << d.error().message();
  std::vector<uint8_t> ids;
  for (const auto& c : (*d)->guest_capabilities()) ids.push_back(c.id);
  EXPECT_EQ(ids, (std::vector<uint8_t>{0x01, 0x10, 0x11}));
  EXPECT_EQ(cfg32(**d, 0xd0), 0u) << "MSI hidden";
  ASSERT_NE((*d)->msix(), nullptr);
  EXPECT_EQ((*d)->msix()->num_vectors(), 3) << "table size capped at the transport's count";
  EXPECT_EQ(cfg16(**d, 0xa2) & msix::kTableSizeMask, 2);
}

TEST_F(PassthroughTest, ConcurrentTableWritesAndEnableTogglesStayConsistent) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  std::atomic<bool> stop{false};
  std::thread vcpu([&] {
    uint32_t i = 0;
    while (!stop.load()) {
      const auto v = static_cast<uint16_t>(i % 5);
      msix_entry(*d, v, 0xfee00000 + (i % 7) * 0x1000, 0x4000 + i % 256, (i & 8) != 0);
      (void)bar32r(*d, 3, 0x2000);
      ++i;
    }
  });
  for (int i = 0; i < 200; ++i) {
    wcfg16(*d, 0xa2, msix::kEnable);
    wcfg16(*d, 0xa2, msix::kEnable | msix::kFunctionMask);
    wcfg16(*d, 0xa2, 0);
  }
  stop = true;
  vcpu.join();
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  EXPECT_EQ(router_.msi_routes(), 0u);
  EXPECT_EQ(irq_calls(IrqKind::Eventfds, VFIO_PCI_MSIX_IRQ_INDEX).size(), 200u);
  EXPECT_EQ(irq_calls(IrqKind::Disable, VFIO_PCI_MSIX_IRQ_INDEX).size(), 200u);
}

// ---- BAR memory ----

TEST_F(PassthroughTest, BarMemoryIsMappedAroundTheMsixPagesAndFollowsMoves) {
  if (::sysconf(_SC_PAGESIZE) != static_cast<long>(kPage)) GTEST_SKIP() << "4 KiB pages assumed";
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  // Mapped once at create: BAR0 whole; BAR3 without the table page (0) and the PBA page (0x2000).
  const std::vector<std::array<uint64_t, 3>> want_maps{
      {0, 0, 128 * 1024}, {3, 0x1000, 0x1000}, {3, 0x3000, 0x1000}};
  EXPECT_EQ(t_->map_calls(), want_maps);

  d->bar_decode_changed(3, 0xe0000000);
  auto m = mapper_.mappings();
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].gpa, 0xe0001000u);
  EXPECT_EQ(m[0].size, 0x1000u);
  EXPECT_EQ(m[1].gpa, 0xe0003000u);
  EXPECT_EQ(m[1].size, 0x1000u);
  // The slot's host memory is the device's BAR: a guest store through it lands in the BAR.
  static_cast<uint8_t*>(m[1].host)[0x10] = 0x5a;
  EXPECT_EQ(t_->bar_value(3, 0x3010), 0x5au);

  d->bar_decode_changed(3, 0xe0100000);
  EXPECT_EQ(mapper_.unmaps(), 2u);
  m = mapper_.mappings();
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].gpa, 0xe0101000u);
  EXPECT_EQ(m[1].gpa, 0xe0103000u);

  d->bar_decode_changed(3, std::nullopt);
  EXPECT_TRUE(mapper_.mappings().empty());
  // I/O BARs are never mapped.
  d->bar_decode_changed(2, 0xc000);
  EXPECT_TRUE(mapper_.mappings().empty());
}

TEST_F(PassthroughTest, SparseMmapAreasAreHonoured) {
  if (::sysconf(_SC_PAGESIZE) != static_cast<long>(kPage)) GTEST_SKIP() << "4 KiB pages assumed";
  t_ = std::make_unique<RecordingTransport>(edu_config().b);
  // Only [0x2000, 0x5800) may be mmap'ed: the tail half page is not mappable.
  t_->add_bar(0, 1 << 20, true, {{0x2000, 0x3800}});
  t_->set_irq_count(VFIO_PCI_MSI_IRQ_INDEX, 1);
  auto d = make(*t_);
  ASSERT_TRUE(d) << d.error().message();
  const std::vector<std::array<uint64_t, 3>> want{{0, 0x2000, 0x3000}};
  EXPECT_EQ(t_->map_calls(), want);
}

TEST_F(PassthroughTest, BarPlacedOverGuestRamIsRefusedAndStillTraps) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  mapper_.add_reserved(0, 1ull << 30);
  d->bar_decode_changed(0, 0x10000000);  // inside RAM
  EXPECT_TRUE(mapper_.mappings().empty());
  EXPECT_EQ(mapper_.map_calls(), 1u);
  // The access path still works through the transport.
  bar32w(*d, 0, 0x100, 0x12345678);
  EXPECT_EQ(bar32r(*d, 0, 0x100), 0x12345678u);
  // Moving it somewhere legal maps it.
  d->bar_decode_changed(0, 0xe0000000);
  EXPECT_EQ(mapper_.mappings().size(), 1u);
}

TEST_F(PassthroughTest, TwoBarsOnTheSameAddressAreRefusedByTheMapper) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  d->bar_decode_changed(0, 0xe0000000);
  d->bar_decode_changed(3, 0xe0000000);  // overlaps BAR0's slot
  auto m = mapper_.mappings();
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].size, 128u * 1024);
}

TEST_F(PassthroughTest, MmapFailureLeavesTheBarTrapped) {
  t_ = std::make_unique<RecordingTransport>(e1000e_config().b);
  e1000e_regions(*t_);
  t_->fail_map_region(true);
  auto d = make(*t_);
  ASSERT_TRUE(d) << d.error().message();
  (*d)->bar_decode_changed(0, 0xe0000000);
  EXPECT_TRUE(mapper_.mappings().empty());
  bar32w(**d, 0, 0x40, 0xabcd);
  EXPECT_EQ(bar32r(**d, 0, 0x40), 0xabcdu);
}

// ---- lifecycle ----

TEST_F(PassthroughTest, DetachDisablesInterruptsUnmapsAndResets) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  msix_entry(*d, 0, 0xfee00000, 0x4041, false);
  wcfg16(*d, 0xa2, msix::kEnable);
  d->bar_decode_changed(0, 0xe0000000);
  ASSERT_EQ(mapper_.mappings().size(), 1u);
  ASSERT_EQ(chip_.irqfd_count(), 1u);
  d->detach();
  EXPECT_TRUE(mapper_.mappings().empty());
  EXPECT_EQ(irq_calls(IrqKind::Disable, VFIO_PCI_MSIX_IRQ_INDEX).size(), 1u);
  EXPECT_EQ(chip_.irqfd_count(), 0u) << "MSI-X irqfds go at detach, not at destruction";
  EXPECT_EQ(router_.msi_routes(), 0u);
  EXPECT_EQ(t_->resets(), 2u);
  EXPECT_EQ(bar32r(*d, 0, 0), 0xffffffffu);
  d->detach();  // idempotent
  EXPECT_EQ(t_->resets(), 2u);
  d.reset();
  EXPECT_EQ(t_->resets(), 2u);
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  EXPECT_EQ(router_.msi_routes(), 0u);
}

TEST_F(PassthroughTest, DestructionDetachesAndANonResettableDeviceIsNotReset) {
  t_ = std::make_unique<RecordingTransport>(edu_config().b);
  t_->add_bar(0, 1 << 20, true);
  t_->set_irq_count(VFIO_PCI_MSI_IRQ_INDEX, 4);
  t_->set_resettable(false);
  {
    auto d = make(*t_);
    ASSERT_TRUE(d);
    wcfg32(**d, 0x44, 0xfee00000);
    wcfg16(**d, 0x42, msi::kEnable);
    (*d)->bar_decode_changed(0, 0xe0000000);
    EXPECT_EQ(mapper_.mappings().size(), 1u);
  }
  EXPECT_EQ(t_->resets(), 0u);
  EXPECT_TRUE(mapper_.mappings().empty());
  EXPECT_EQ(irq_calls(IrqKind::Disable, VFIO_PCI_MSI_IRQ_INDEX).size(), 1u);
  EXPECT_EQ(chip_.irqfd_count(), 0u);
}

// ---- INTx ----

// Calls to IRQ index `index` of any kind, in order.
std::vector<RecordingTransport::IrqCall> calls_for(const RecordingTransport& t, uint32_t index) {
  std::vector<RecordingTransport::IrqCall> out;
  for (const auto& c : t.irq_calls())
    if (c.index == index) out.push_back(c);
  return out;
}

constexpr uint32_t kIntx = VFIO_PCI_INTX_IRQ_INDEX;
constexpr uint32_t kIntxGsi = 19;

TEST_F(PassthroughTest, IntxIsHiddenUntilTheVmmWiresIt) {
  auto d = make_edu();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->intx_pin(), 1u) << "the device's own pin";
  EXPECT_EQ(cfg16(*d, 0x3c), 0u) << "pin 0 until set_intx_gsi";
  EXPECT_TRUE(calls_for(*t_, kIntx).empty());
  EXPECT_EQ(d->intx_trigger_fd(), -1);
  EXPECT_FALSE(d->intx_gsi());
}

TEST_F(PassthroughTest, IntxWiresOneEventfdAsKvmIrqfdWithResamplefdAndVfioTriggerPlusUnmask) {
  auto d = make_edu();
  ASSERT_TRUE(d);
  ASSERT_TRUE(d->set_intx_gsi(kIntxGsi));
  // Guest view: Interrupt Pin is the device's (INTA#), Interrupt Line the GSI.
  EXPECT_EQ(cfg16(*d, 0x3c), 0x0100u | kIntxGsi);
  EXPECT_EQ(d->intx_gsi(), kIntxGsi);
  ASSERT_TRUE(d->intx_enabled());
  const int trigger = d->intx_trigger_fd();
  const int resample = d->intx_resample_fd();
  ASSERT_GE(trigger, 0);
  ASSERT_GE(resample, 0);
  EXPECT_NE(trigger, resample);
  // KVM: a level irqfd on the GSI, with the resamplefd.
  EXPECT_EQ(chip_.irqfd_gsi(trigger), kIntxGsi);
  EXPECT_EQ(chip_.irqfd_resamplefd(trigger), resample);
  EXPECT_EQ(chip_.irqfd_count(), 1u);
  EXPECT_EQ(router_.msi_routes(), 0u) << "INTx uses the irqchip route, no MSI GSI";
  // VFIO: the same trigger, then the same resamplefd as the unmask eventfd (trigger first: VFIO
  // refuses an unmask eventfd while INTx is off).
  auto calls = calls_for(*t_, kIntx);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].kind, IrqKind::Eventfds);
  EXPECT_EQ(calls[0].start, 0u);
  EXPECT_EQ(calls[0].fds, std::vector<int>{trigger});
  EXPECT_EQ(calls[1].kind, IrqKind::Unmask);
  EXPECT_EQ(calls[1].fds, std::vector<int>{resample});
  // Wiring twice is refused and changes nothing.
  EXPECT_FALSE(d->set_intx_gsi(kIntxGsi + 1));
  EXPECT_EQ(d->intx_gsi(), kIntxGsi);
  EXPECT_EQ(calls_for(*t_, kIntx).size(), 2u);
  // The guest may rewrite Interrupt Line (firmware does); Pin stays read-only.
  wcfg16(*d, 0x3c, 0x040a);
  EXPECT_EQ(cfg16(*d, 0x3c), 0x010au);
}

TEST_F(PassthroughTest, MsiEnableTearsIntxDownAndMsiDisableRestoresIt) {
  auto d = make_edu();
  ASSERT_TRUE(d);
  ASSERT_TRUE(d->set_intx_gsi(kIntxGsi));
  const int trigger = d->intx_trigger_fd();
  const int resample = d->intx_resample_fd();
  wcfg32(*d, 0x44, 0xfee00000);
  wcfg16(*d, 0x48, 0x4050);
  wcfg16(*d, 0x42, msi::kEnable);
  ASSERT_TRUE(d->msi_enabled());
  EXPECT_FALSE(d->intx_enabled());
  EXPECT_FALSE(chip_.irqfd_gsi(trigger)) << "the INTx irqfd is gone";
  EXPECT_EQ(chip_.irqfd_count(), 1u) << "only the MSI vector's";
  // VFIO saw INTx disabled before MSI was enabled (one index at a time).
  const auto& all = t_->irq_calls();
  ASSERT_GE(all.size(), 4u);
  EXPECT_EQ(all[2].kind, IrqKind::Disable);
  EXPECT_EQ(all[2].index, kIntx);
  EXPECT_EQ(all[3].kind, IrqKind::Eventfds);
  EXPECT_EQ(all[3].index, VFIO_PCI_MSI_IRQ_INDEX);
  // A data rewrite while MSI is on leaves INTx off.
  wcfg16(*d, 0x48, 0x4051);
  EXPECT_FALSE(d->intx_enabled());
  EXPECT_EQ(calls_for(*t_, kIntx).size(), 3u);
  // MSI off: INTx comes back with the same eventfds, MSI disabled on the device first.
  wcfg16(*d, 0x42, 0);
  EXPECT_FALSE(d->msi_enabled());
  ASSERT_TRUE(d->intx_enabled());
  EXPECT_EQ(chip_.irqfd_gsi(trigger), kIntxGsi);
  EXPECT_EQ(chip_.irqfd_resamplefd(trigger), resample);
  EXPECT_EQ(chip_.irqfd_count(), 1u);
  auto intx = calls_for(*t_, kIntx);
  ASSERT_EQ(intx.size(), 5u);
  EXPECT_EQ(intx[3].kind, IrqKind::Eventfds);
  EXPECT_EQ(intx[3].fds, std::vector<int>{trigger});
  EXPECT_EQ(intx[4].kind, IrqKind::Unmask);
  EXPECT_EQ(intx[4].fds, std::vector<int>{resample});
  const auto& after = t_->irq_calls();
  const auto msi_off = std::find_if(after.begin(), after.end(), [](const auto& c) {
    return c.kind == IrqKind::Disable && c.index == VFIO_PCI_MSI_IRQ_INDEX;
  });
  ASSERT_NE(msi_off, after.end());
  EXPECT_EQ(after.end() - msi_off, 3) << "MSI off, then INTx trigger and unmask";
}

TEST_F(PassthroughTest, MsixEnableTearsIntxDownAndMsixDisableRestoresIt) {
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  ASSERT_EQ(d->intx_pin(), 1u);
  ASSERT_TRUE(d->set_intx_gsi(kIntxGsi));
  const int trigger = d->intx_trigger_fd();
  msix_entry(*d, 0, 0xfee00000, 0x4041, false);
  wcfg16(*d, 0xa2, msix::kEnable);
  EXPECT_FALSE(d->intx_enabled());
  EXPECT_FALSE(chip_.irqfd_gsi(trigger));
  const auto& calls = t_->irq_calls();
  ASSERT_GE(calls.size(), 2u);
  EXPECT_EQ(calls[calls.size() - 2].kind, IrqKind::Disable);
  EXPECT_EQ(calls[calls.size() - 2].index, kIntx);
  EXPECT_EQ(calls.back().index, VFIO_PCI_MSIX_IRQ_INDEX);
  wcfg16(*d, 0xa2, 0);
  EXPECT_TRUE(d->intx_enabled());
  EXPECT_EQ(chip_.irqfd_gsi(trigger), kIntxGsi);
  EXPECT_EQ(chip_.irqfd_count(), 1u) << "the MSI-X vector's irqfd went with MSI-X";
}

TEST_F(PassthroughTest, WiringIntxWhileMsiIsOnWaitsForMsiToGoOff) {
  auto d = make_edu();
  ASSERT_TRUE(d);
  wcfg32(*d, 0x44, 0xfee00000);
  wcfg16(*d, 0x42, msi::kEnable);
  ASSERT_TRUE(d->set_intx_gsi(kIntxGsi));
  EXPECT_EQ(cfg16(*d, 0x3c) >> 8, 1u);
  EXPECT_FALSE(d->intx_enabled());
  EXPECT_TRUE(calls_for(*t_, kIntx).empty());
  wcfg16(*d, 0x42, 0);
  EXPECT_TRUE(d->intx_enabled());
}

TEST_F(PassthroughTest, DetachReleasesIntx) {
  auto d = make_edu();
  ASSERT_TRUE(d);
  ASSERT_TRUE(d->set_intx_gsi(kIntxGsi));
  ASSERT_EQ(chip_.irqfd_count(), 1u);
  d->detach();
  EXPECT_FALSE(d->intx_enabled());
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  auto intx = calls_for(*t_, kIntx);
  ASSERT_EQ(intx.size(), 3u);
  EXPECT_EQ(intx.back().kind, IrqKind::Disable);
  // Nothing comes back after detach, whatever the guest writes.
  wcfg16(*d, 0x42, 0);
  EXPECT_EQ(calls_for(*t_, kIntx).size(), 3u);
  EXPECT_FALSE(d->set_intx_gsi(kIntxGsi));
  d.reset();
  EXPECT_EQ(calls_for(*t_, kIntx).size(), 3u) << "destruction after detach does nothing more";
  EXPECT_EQ(chip_.irqfd_count(), 0u);
}

TEST_F(PassthroughTest, DestructionReleasesIntx) {
  {
    auto d = make_edu();
    ASSERT_TRUE(d);
    ASSERT_TRUE(d->set_intx_gsi(kIntxGsi));
  }
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  EXPECT_EQ(calls_for(*t_, kIntx).back().kind, IrqKind::Disable);
}

TEST_F(PassthroughTest, DeviceWithoutIntxKeepsPinZero) {
  // No INTx in VFIO (an SR-IOV VF): the real pin is ignored.
  t_ = std::make_unique<RecordingTransport>(edu_config().b);
  t_->add_bar(0, 1 << 20, true);
  t_->set_irq_count(VFIO_PCI_MSI_IRQ_INDEX, 4);
  auto d = make(*t_);
  ASSERT_TRUE(d);
  EXPECT_EQ((*d)->intx_pin(), 0u);
  EXPECT_TRUE((*d)->set_intx_gsi(kIntxGsi)) << "a no-op, not an error";
  EXPECT_EQ(cfg16(**d, 0x3c), 0u);
  EXPECT_FALSE((*d)->intx_gsi());
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  EXPECT_TRUE(calls_for(*t_, kIntx).empty());

  // VFIO offers INTx but the real pin is 0, or garbage: still no INTx.
  for (uint8_t pin : {uint8_t{0}, uint8_t{5}, uint8_t{0xff}}) {
    auto cfg = edu_config();
    cfg.w8(0x3d, pin);
    RecordingTransport t(cfg.b);
    t.add_bar(0, 1 << 20, true);
    t.set_irq_count(kIntx, 1);
    auto e = make(t);
    ASSERT_TRUE(e);
    EXPECT_EQ((*e)->intx_pin(), 0u) << "pin " << int{pin};
    EXPECT_TRUE((*e)->set_intx_gsi(kIntxGsi));
    EXPECT_EQ(cfg16(**e, 0x3c), 0u);
  }
}

TEST_F(PassthroughTest, IntxFailureInVfioLeavesNothingRegisteredAndPinZero) {
  auto d = make_edu();
  ASSERT_TRUE(d);
  t_->fail_irq(kIntx, true);
  auto s = d->set_intx_gsi(kIntxGsi);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message().find("GSI 19"), std::string::npos) << s.error().message();
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  EXPECT_EQ(cfg16(*d, 0x3c), 0u);
  EXPECT_FALSE(d->intx_gsi());
  // A failing unmask eventfd rolls back the trigger and the irqfd too.
  t_->fail_irq(kIntx, false);
  t_->fail_unmask(true);
  ASSERT_FALSE(d->set_intx_gsi(kIntxGsi));
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  EXPECT_EQ(calls_for(*t_, kIntx).back().kind, IrqKind::Disable);
  EXPECT_EQ(cfg16(*d, 0x3c), 0u);
  // Nothing is left behind: a later attempt (transport healthy again) works.
  t_->fail_unmask(false);
  EXPECT_TRUE(d->set_intx_gsi(kIntxGsi));
  EXPECT_TRUE(d->intx_enabled());
  EXPECT_EQ(chip_.irqfd_count(), 1u);
}

TEST_F(PassthroughTest, IntxThatCannotComeBackAfterMsiIsNotRetriedOnEveryConfigWrite) {
  auto d = make_edu();
  ASSERT_TRUE(d);
  ASSERT_TRUE(d->set_intx_gsi(kIntxGsi));
  wcfg32(*d, 0x44, 0xfee00000);
  wcfg16(*d, 0x42, msi::kEnable);
  t_->fail_irq(kIntx, true);
  wcfg16(*d, 0x42, 0);  // MSI off: re-enabling INTx fails
  EXPECT_FALSE(d->intx_enabled());
  EXPECT_EQ(chip_.irqfd_count(), 0u) << "rolled back";
  const size_t calls = calls_for(*t_, kIntx).size();
  for (int i = 0; i < 5; ++i) wcfg16(*d, 0x04, pci_command::kMemorySpace);
  EXPECT_EQ(calls_for(*t_, kIntx).size(), calls) << "a guest's config writes do not retry it";
  // The next MSI on/off cycle tries again.
  t_->fail_irq(kIntx, false);
  wcfg16(*d, 0x42, msi::kEnable);
  wcfg16(*d, 0x42, 0);
  EXPECT_TRUE(d->intx_enabled());
}

TEST_F(PassthroughTest, StatusInterruptBitIsReadLiveOnceIntxIsWired) {
  auto d = make_edu();
  ASSERT_TRUE(d);
  // The device asserts INTx (Status bit 3 in its config space).
  std::array<uint8_t, 2> st{pci_status::kInterruptStatus | pci_status::kCapabilitiesList, 0};
  ASSERT_TRUE(t_->region_write(VFIO_PCI_CONFIG_REGION_INDEX, 0x06, st));
  EXPECT_EQ(cfg16(*d, 0x06) & pci_status::kInterruptStatus, 0u) << "not wired: emulated";
  ASSERT_TRUE(d->set_intx_gsi(kIntxGsi));
  EXPECT_EQ(cfg16(*d, 0x06), pci_status::kInterruptStatus | pci_status::kCapabilitiesList);
  st[0] = pci_status::kCapabilitiesList;
  ASSERT_TRUE(t_->region_write(VFIO_PCI_CONFIG_REGION_INDEX, 0x06, st));
  EXPECT_EQ(cfg16(*d, 0x06), pci_status::kCapabilitiesList);
}

// ---- with the real root complex ----

TEST_F(PassthroughTest, RootComplexPlacesTheBarsAndEnablingMemoryMapsThem) {
  if (::sysconf(_SC_PAGESIZE) != static_cast<long>(kPage)) GTEST_SKIP() << "4 KiB pages assumed";
  auto d = make_e1000e();
  ASSERT_TRUE(d);
  Bus pio("pio");
  Bus mmio("mmio");
  PciRoot root(pio, mmio, PciWindows{0xc000, 0x4000, 0xc0000000, 0x10000000, 0, 0});
  ASSERT_TRUE(root.add_device(3, *d));
  const uint64_t bar0 = d->config().bar_address(0);
  const uint64_t bar3 = d->config().bar_address(3);
  ASSERT_NE(bar0, 0u);
  EXPECT_TRUE(mapper_.mappings().empty()) << "memory decoding is off";
  // The guest enables memory decoding through conf1.
  std::array<uint8_t, 4> addr{};
  const uint32_t a = 0x80000000u | 3u << 11 | 0x04;
  for (size_t i = 0; i < 4; ++i) addr[i] = static_cast<uint8_t>(a >> (8 * i));
  root.config_ports().write(0, addr);
  const std::array<uint8_t, 2> cmd{pci_command::kMemorySpace | pci_command::kBusMaster, 0};
  root.config_ports().write(4, cmd);
  auto m = mapper_.mappings();
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0].gpa, std::min(bar0, bar3 + 0x1000));
  // A guest access to the MSI-X table page traps through the MMIO bus to the emulated table.
  std::array<uint8_t, 4> data{0x34, 0x12, 0, 0};
  ASSERT_TRUE(mmio.write(bar3 + 8, data));
  std::array<uint8_t, 4> back{};
  ASSERT_TRUE(mmio.read(bar3 + 8, back));
  EXPECT_EQ(back, data);
  EXPECT_EQ(t_->bar_value(3, 8, 4), 0u);
}

}  // namespace
}  // namespace iovirt::vfio
