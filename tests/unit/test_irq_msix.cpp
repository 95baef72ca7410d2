#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "iovirt/core/metrics.hpp"
#include "iovirt/core/pci_config.hpp"
#include "iovirt/core/pci_msix.hpp"
#include "iovirt/irq/gsi_router.hpp"
#include "iovirt/irq/msix_interrupts.hpp"
#include "iovirt/irq/recording_irq_chip.hpp"

namespace iovirt {
namespace {

constexpr int kBar = 0;
constexpr uint32_t kPbaOffset = 0x2000;
constexpr uint64_t kAddr = 0xfee00000;

class MsixInterruptsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(config_.add_bar(kBar, 0x4000, PciBarKind::Mem32));
    auto t = MsixTable::create(config_, MsixLayout{4, kBar, 0, kBar, kPbaOffset});
    ASSERT_TRUE(t) << t.error().message();
    table_.emplace(std::move(*t));
    auto m = MsixInterrupts::create(*table_, router_, chip_, metrics_, "dev0");
    ASSERT_TRUE(m) << m.error().message();
    irq_ = std::move(*m);
  }
  void TearDown() override { irq_.reset(); }

  void write32(uint64_t off, uint32_t v) {
    const std::array<uint8_t, 4> b{static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8),
                                   static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 24)};
    std::unique_lock<std::recursive_mutex> lock;
    if (irq_) lock = irq_->lock();
    EXPECT_TRUE(table_->bar_write(kBar, off, b));
  }
  void program(uint16_t v, uint64_t addr, uint32_t data) {
    write32(v * 16u + 0, static_cast<uint32_t>(addr));
    write32(v * 16u + 4, static_cast<uint32_t>(addr >> 32));
    write32(v * 16u + 8, data);
  }
  void mask(uint16_t v, bool on) { write32(v * 16u + 12, on ? msix::kVectorControlMaskBit : 0); }
  void message_control(uint16_t mc) {
    const uint16_t off = static_cast<uint16_t>(table_->cap_offset() + 2);
    const std::array<uint8_t, 2> b{static_cast<uint8_t>(mc), static_cast<uint8_t>(mc >> 8)};
    auto lock = irq_->lock();
    config_.write(off, b);
    table_->config_written(config_, off, b.size());
  }
  void enable() { message_control(msix::kEnable); }
  // Drains the vector's eventfd: how many messages reached the irqfd.
  uint64_t signals(uint16_t v) {
    uint64_t value = 0;
    const ssize_t r = ::read(irq_->notifier(v), &value, sizeof value);
    return r == sizeof value ? value : 0;
  }
  std::optional<uint32_t> assigned_gsi(uint16_t v) { return chip_.irqfd_gsi(irq_->notifier(v)); }
  uint64_t counter(const std::string& name, uint16_t v) {
    return metrics_.counter(name, "", {{"device", "dev0"}, {"vector", std::to_string(v)}}).value();
  }

  PciConfigSpace config_;
  std::optional<MsixTable> table_;
  RecordingIrqChip chip_;
  GsiRouter router_{chip_};
  MetricsRegistry metrics_;
  std::unique_ptr<MsixInterrupts> irq_;
};

TEST_F(MsixInterruptsTest, NothingIsRoutedWhileMsixIsDisabled) {
  program(0, kAddr, 0x41);
  mask(0, false);
  EXPECT_EQ(router_.msi_routes(), 0u);
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  EXPECT_FALSE(irq_->trigger(0));
  EXPECT_TRUE(table_->pending(0));
  EXPECT_EQ(signals(0), 0u);
}

TEST_F(MsixInterruptsTest, UnmaskedEnabledVectorGetsARouteAndItsIrqfd) {
  enable();
  program(1, kAddr, 0x41);
  mask(1, false);
  auto gsi = assigned_gsi(1);
  ASSERT_TRUE(gsi);
  EXPECT_EQ(*gsi, 24u);
  auto r = chip_.route(*gsi);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u.msi.address_lo, kAddr);
  EXPECT_EQ(r->u.msi.data, 0x41u);
  EXPECT_FALSE(assigned_gsi(0));  // still masked

  EXPECT_TRUE(irq_->trigger(1));
  EXPECT_EQ(signals(1), 1u);
  EXPECT_EQ(counter("iovirt_irq_vector_triggers_total", 1), 1u);
  EXPECT_NE(irq_->notifier(1), irq_->notifier(0));
  EXPECT_EQ(irq_->notifier(4), -1);
  EXPECT_FALSE(irq_->trigger(4));
}

TEST_F(MsixInterruptsTest, TableWriteUpdatesTheRouteInPlace) {
  enable();
  program(0, kAddr, 0x41);
  mask(0, false);
  const auto gsi = assigned_gsi(0);
  ASSERT_TRUE(gsi);
  const unsigned commits = chip_.routing_commits();
  program(0, kAddr | 0x1000, 0x52);
  auto r = chip_.route(*gsi);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u.msi.address_lo, kAddr | 0x1000);
  EXPECT_EQ(r->u.msi.data, 0x52u);
  EXPECT_EQ(assigned_gsi(0), gsi);  // same GSI, irqfd never moved
  EXPECT_GT(chip_.routing_commits(), commits);
  EXPECT_EQ(router_.msi_routes(), 1u);
}

TEST_F(MsixInterruptsTest, RewriteWhileMaskedTakesEffectAtUnmask) {
  enable();
  program(0, kAddr, 0x41);
  mask(0, false);
  const auto gsi = assigned_gsi(0);
  ASSERT_TRUE(gsi);
  mask(0, true);
  program(0, kAddr | 0x2000, 0x61);  // the usual driver sequence: mask, rewrite, unmask
  mask(0, false);
  EXPECT_EQ(assigned_gsi(0), gsi);
  auto r = chip_.route(*gsi);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u.msi.address_lo, kAddr | 0x2000);
  EXPECT_EQ(r->u.msi.data, 0x61u);
}

TEST_F(MsixInterruptsTest, MaskedTriggerSetsPbaWithoutSignallingAndUnmaskDeliversOnce) {
  enable();
  program(2, kAddr, 0x43);
  mask(2, false);
  ASSERT_TRUE(assigned_gsi(2));
  mask(2, true);
  EXPECT_FALSE(assigned_gsi(2)) << "a masked vector's irqfd must be deassigned";

  EXPECT_FALSE(irq_->trigger(2));
  EXPECT_FALSE(irq_->trigger(2));
  EXPECT_TRUE(table_->pending(2));
  EXPECT_EQ(signals(2), 0u);
  EXPECT_EQ(counter("iovirt_irq_vector_masked_pending_total", 2), 2u);

  mask(2, false);
  EXPECT_TRUE(assigned_gsi(2));
  EXPECT_FALSE(table_->pending(2));
  EXPECT_EQ(signals(2), 1u) << "a pending vector is sent exactly once at unmask";
  mask(2, true);
  mask(2, false);
  EXPECT_EQ(signals(2), 0u);
}

TEST_F(MsixInterruptsTest, FunctionMaskHoldsEveryVector) {
  enable();
  for (uint16_t v = 0; v < 2; ++v) {
    program(v, kAddr, 0x40 + v);
    mask(v, false);
  }
  EXPECT_EQ(chip_.irqfd_count(), 2u);
  message_control(msix::kEnable | msix::kFunctionMask);
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  EXPECT_EQ(router_.msi_routes(), 2u);  // routes are kept for a quick unmask
  EXPECT_FALSE(irq_->trigger(0));
  EXPECT_TRUE(table_->pending(0));
  EXPECT_FALSE(table_->pending(1));

  message_control(msix::kEnable);
  EXPECT_EQ(chip_.irqfd_count(), 2u);
  EXPECT_EQ(signals(0), 1u);
  EXPECT_EQ(signals(1), 0u);
  EXPECT_FALSE(table_->pending(0));
}

TEST_F(MsixInterruptsTest, DisablingMsixFreesRoutesAndReEnablingRestoresThem) {
  enable();
  program(0, kAddr, 0x41);
  mask(0, false);
  ASSERT_EQ(router_.msi_routes(), 1u);
  message_control(0);
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  EXPECT_EQ(router_.msi_routes(), 0u);
  EXPECT_FALSE(irq_->trigger(0));
  EXPECT_TRUE(table_->pending(0));

  enable();
  EXPECT_TRUE(assigned_gsi(0));
  EXPECT_EQ(signals(0), 1u);
  EXPECT_FALSE(table_->pending(0));
}

TEST_F(MsixInterruptsTest, ExternalSignalWhileMaskedStaysInTheEventfd) {
  enable();
  program(0, kAddr, 0x41);
  mask(0, false);
  mask(0, true);
  // VFIO or vhost writes the notifier while the vector is masked: no irqfd consumes it.
  const uint64_t one = 1;
  ASSERT_EQ(::write(irq_->notifier(0), &one, sizeof one), static_cast<ssize_t>(sizeof one));
  mask(0, false);
  // KVM_IRQFD assign injects once for a non-zero counter; the fake leaves it for us to see.
  EXPECT_EQ(signals(0), 1u);
}

TEST_F(MsixInterruptsTest, DestructionReleasesIrqfdsAndRoutes) {
  enable();
  program(0, kAddr, 0x41);
  mask(0, false);
  ASSERT_EQ(chip_.irqfd_count(), 1u);
  irq_.reset();
  EXPECT_EQ(chip_.irqfd_count(), 0u);
  EXPECT_EQ(router_.msi_routes(), 0u);
  mask(0, true);  // the hook is gone: no call into freed memory
}

TEST_F(MsixInterruptsTest, KvmRefusingARouteIsCountedNotFatal) {
  enable();
  program(0, kAddr, 0x41);
  chip_.fail_routing(true);
  mask(0, false);
  EXPECT_FALSE(assigned_gsi(0));
  EXPECT_EQ(metrics_.counter("iovirt_irq_route_errors_total", "", {{"device", "dev0"}}).value(),
            1u);
  chip_.fail_routing(false);
  EXPECT_TRUE(irq_->sync(0));
  EXPECT_TRUE(assigned_gsi(0));
}

}  // namespace
}  // namespace iovirt
