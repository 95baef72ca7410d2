#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "iovirt/irq/gsi_router.hpp"
#include "iovirt/irq/recording_irq_chip.hpp"

namespace iovirt {
namespace {

size_t count_irqchip(const std::vector<kvm_irq_routing_entry>& t, uint32_t chip) {
  return static_cast<size_t>(std::count_if(t.begin(), t.end(), [&](const auto& e) {
    return e.type == KVM_IRQ_ROUTING_IRQCHIP && e.u.irqchip.irqchip == chip;
  }));
}

TEST(GsiRouter, DefaultRoutesAreKvmsPicAndIoapicSetWithoutTheCascadePin) {
  const auto t = GsiRouter::default_irqchip_routes();
  EXPECT_EQ(count_irqchip(t, KVM_IRQCHIP_PIC_MASTER), 7u);
  EXPECT_EQ(count_irqchip(t, KVM_IRQCHIP_PIC_SLAVE), 8u);
  EXPECT_EQ(count_irqchip(t, KVM_IRQCHIP_IOAPIC), 24u);
  for (const auto& e : t) {
    EXPECT_LT(e.gsi, 24u);
    if (e.u.irqchip.irqchip == KVM_IRQCHIP_PIC_MASTER) {
      EXPECT_NE(e.gsi, 2u);
      EXPECT_EQ(e.u.irqchip.pin, e.gsi);
    }
    if (e.u.irqchip.irqchip == KVM_IRQCHIP_PIC_SLAVE) {
      EXPECT_EQ(e.u.irqchip.pin, e.gsi - 8);
    }
    if (e.u.irqchip.irqchip == KVM_IRQCHIP_IOAPIC) {
      EXPECT_EQ(e.u.irqchip.pin, e.gsi);
    }
  }
}

TEST(GsiRouter, EveryCommitKeepsTheIrqchipRoutes) {
  RecordingIrqChip chip;
  GsiRouter router(chip);
  auto gsi = router.add_msi_route(0xfee00000, 0x41);
  ASSERT_TRUE(gsi) << gsi.error().message();
  EXPECT_EQ(*gsi, 24u);
  const auto sent = chip.routes();
  EXPECT_EQ(sent.size(), GsiRouter::default_irqchip_routes().size() + 1);
  EXPECT_EQ(count_irqchip(sent, KVM_IRQCHIP_IOAPIC), 24u);
  auto r = chip.route(24);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u.msi.address_lo, 0xfee00000u);
  EXPECT_EQ(r->u.msi.data, 0x41u);

  ASSERT_TRUE(router.remove_route(*gsi));
  EXPECT_EQ(chip.routes().size(), GsiRouter::default_irqchip_routes().size());
  EXPECT_EQ(chip.routing_commits(), 2u);
}

TEST(GsiRouter, WithoutIrqchipOnlyMsiRoutesAreSent) {
  RecordingIrqChip chip;
  GsiRouter router(chip, {.irqchip_routes = false});
  ASSERT_TRUE(router.add_msi_route(0xfee00000, 0x41));
  EXPECT_EQ(chip.routes().size(), 1u);
}

TEST(GsiRouter, AllocatesLowestFreeGsiReusesFreedOnesAndReportsExhaustion) {
  RecordingIrqChip chip;
  GsiRouter router(chip, {.first_msi_gsi = 24, .max_gsi = 26});
  auto a = router.add_msi_route(0xfee00000, 1);
  auto b = router.add_msi_route(0xfee00000, 2);
  auto c = router.add_msi_route(0xfee00000, 3);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(*a, 24u);
  EXPECT_EQ(*b, 25u);
  EXPECT_EQ(*c, 26u);
  auto full = router.add_msi_route(0xfee00000, 4);
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().code(), ENOSPC);

  ASSERT_TRUE(router.remove_route(25));
  auto again = router.add_msi_route(0xfee00000, 5);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, 25u);
  EXPECT_EQ(chip.route(25)->u.msi.data, 5u);
  EXPECT_EQ(router.msi_routes(), 3u);
}

TEST(GsiRouter, UpdateRewritesOneRouteAndUnknownGsisAreErrors) {
  RecordingIrqChip chip;
  GsiRouter router(chip);
  auto gsi = router.add_msi_route(0xfee00000, 0x41);
  ASSERT_TRUE(gsi);
  ASSERT_TRUE(router.update_msi_route(*gsi, 0x1'fee01000ull, 0x42));
  auto r = chip.route(*gsi);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u.msi.address_lo, 0xfee01000u);
  EXPECT_EQ(r->u.msi.address_hi, 1u);
  EXPECT_EQ(r->u.msi.data, 0x42u);
  EXPECT_EQ(router.update_msi_route(99, 0, 0).error().code(), ENOENT);
  EXPECT_EQ(router.remove_route(3).error().code(), ENOENT);  // an irqchip GSI is not ours to free
}

TEST(GsiRouter, AFailedCommitLeavesTheTableUnchanged) {
  RecordingIrqChip chip;
  GsiRouter router(chip);
  auto gsi = router.add_msi_route(0xfee00000, 0x41);
  ASSERT_TRUE(gsi);
  chip.fail_routing(true);
  EXPECT_FALSE(router.add_msi_route(0xfee00000, 0x42));
  EXPECT_FALSE(router.update_msi_route(*gsi, 0xfee00000, 0x43));
  EXPECT_EQ(router.msi_routes(), 1u);
  const auto t = router.table();
  ASSERT_FALSE(t.empty());
  EXPECT_EQ(t.back().u.msi.data, 0x41u);
  chip.fail_routing(false);
  auto next = router.add_msi_route(0xfee00000, 0x44);
  ASSERT_TRUE(next);
  EXPECT_EQ(*next, 25u);
}

}  // namespace
}  // namespace iovirt
