// irq/ on the host's /dev/kvm: a GsiRouter and MsixInterrupts on a real VmFd deliver an MSI-X
// vector programmed into an MsixTable to a tiny guest's IDT handler, hold it while the entry is
// masked (PBA set, guest count unchanged) and deliver it once at unmask.
//
// The guest (tiny_guest.hpp) enables its LAPIC, then spins at CPL 3 bumping a heartbeat until told
// to stop; the handler counts and EOIs. "Nothing arrived while masked" is shown without timing:
// after the trigger, the test waits until the guest has run its loop many more times with
// RFLAGS.IF = 1 -- an interrupt sitting in the LAPIC would have been taken by then.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <memory>
#include <optional>

#include "iovirt/core/metrics.hpp"
#include "iovirt/core/pci_config.hpp"
#include "iovirt/core/pci_msix.hpp"
#include "iovirt/irq/gsi_router.hpp"
#include "iovirt/irq/irq_chip.hpp"
#include "iovirt/irq/msix_interrupts.hpp"
#include "tiny_guest.hpp"

namespace iovirt::tiny {
namespace {

constexpr uint8_t kVector = 0x41;
constexpr uint64_t kCounter = kData;
constexpr uint64_t kReady = kData + 8;
constexpr uint64_t kStop = kData + 16;
constexpr uint64_t kHeartbeat = kData + 24;
constexpr int kBar = 0;

Asm heartbeat_guest() {
  Asm a;
  a.mov_ebx(kLapicSvr).mov_eax_mem_rbx().or_eax(kSvrApicEnable).mov_mem_rbx_eax();
  a.mov_ebx(kReady).mov_mem_rbx_imm32(1);
  const size_t loop = a.here();
  a.pause().mov_ebx(kHeartbeat).inc_mem_rbx();  // ++heartbeat
  a.mov_ebx(kStop).mov_eax_mem_rbx().test_eax_eax().jz_back(loop);
  a.done();
  return a;
}

// The guest ran its interrupts-enabled loop `n` more times.
bool guest_ran(const TinyVm& t, uint32_t n) {
  return wait_for(t, kHeartbeat, t.peek<uint32_t>(kHeartbeat) + n);
}

class IrqMsixKvmTest : public TinyGuestTest {};

TEST_F(IrqMsixKvmTest, MsixVectorReachesGuestAndIsHeldWhileMasked) {
  auto t =
      make_tiny_vm(kvm(), {.irqchip = true, .handler_cs = kUserCs, .interrupts_enabled = true});
  ASSERT_TRUE(t) << t.error().message();
  ASSERT_TRUE(t->load(kCode, heartbeat_guest()));
  ASSERT_TRUE(t->load(kHandler, counting_handler(kCounter)));
  ASSERT_TRUE(t->set_gate(kVector, kHandler, kUserCs, GateType::Trap));

  KvmIrqChip chip(t->vm);
  GsiRouter router(chip);
  ASSERT_TRUE(router.commit());  // the irqchip defaults alone: KVM accepts them as they are
  MetricsRegistry metrics;
  PciConfigSpace config;
  ASSERT_TRUE(config.add_bar(kBar, 0x4000, PciBarKind::Mem32));
  auto table = MsixTable::create(config, MsixLayout{2, kBar, 0, kBar, 0x2000});
  ASSERT_TRUE(table) << table.error().message();
  auto made = MsixInterrupts::create(*table, router, chip, metrics, "tiny");
  ASSERT_TRUE(made) << made.error().message();
  MsixInterrupts& irq = **made;

  auto write32 = [&](uint64_t off, uint32_t v) {
    const std::array<uint8_t, 4> b{static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8),
                                   static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 24)};
    auto lock = irq.lock();
    return table->bar_write(kBar, off, b);
  };
  auto mask = [&](bool on) { return write32(12, on ? msix::kVectorControlMaskBit : 0); };
  // Vector 0 -> APIC id 0, fixed delivery, edge, kVector; then MSI-X Enable.
  ASSERT_TRUE(write32(0, 0xfee00000));
  ASSERT_TRUE(write32(4, 0));
  ASSERT_TRUE(write32(8, kVector));
  {
    const uint16_t off = static_cast<uint16_t>(table->cap_offset() + 2);
    const std::array<uint8_t, 2> mc{0, static_cast<uint8_t>(msix::kEnable >> 8)};
    auto lock = irq.lock();
    config.write(off, mc);
    table->config_written(config, off, mc.size());
  }
  ASSERT_TRUE(mask(false));
  ASSERT_TRUE(irq.vector(0)->irqfd_assigned());
  ASSERT_TRUE(irq.vector(0)->gsi());
  EXPECT_GE(*irq.vector(0)->gsi(), 24u);

  Bus pio("pio"), mmio("mmio");
  GuestThread vcpu(*t, pio, mmio, kStop, 100000);
  ASSERT_TRUE(wait_for(*t, kReady, 1)) << "the guest never enabled its LAPIC";

  // 1. The notifier eventfd (what VFIO/vhost would be handed) delivers through the irqfd.
  const uint64_t one = 1;
  ASSERT_EQ(::write(irq.notifier(0), &one, sizeof one), static_cast<ssize_t>(sizeof one));
  ASSERT_TRUE(wait_for(*t, kCounter, 1)) << "notifier write never reached the guest";
  // 2. So does trigger() from an emulated device.
  EXPECT_TRUE(irq.trigger(0));
  ASSERT_TRUE(wait_for(*t, kCounter, 2)) << "trigger() never reached the guest";

  // 3. Masked: trigger() sets the PBA bit and the guest sees nothing.
  ASSERT_TRUE(mask(true));
  EXPECT_FALSE(irq.vector(0)->irqfd_assigned());
  EXPECT_FALSE(irq.trigger(0));
  EXPECT_TRUE(table->pending(0));
  ASSERT_TRUE(guest_ran(*t, 1000));
  EXPECT_EQ(t->peek<uint32_t>(kCounter), 2u) << "a masked vector reached the guest";

  // 4. Unmask: the pending message is sent once and the PBA bit clears.
  ASSERT_TRUE(mask(false));
  EXPECT_FALSE(table->pending(0));
  ASSERT_TRUE(wait_for(*t, kCounter, 3)) << "the pending vector was not sent at unmask";

  // 5. An external signal while masked waits in the eventfd; KVM_IRQFD assign sends it at unmask.
  ASSERT_TRUE(mask(true));
  ASSERT_EQ(::write(irq.notifier(0), &one, sizeof one), static_cast<ssize_t>(sizeof one));
  ASSERT_TRUE(guest_ran(*t, 1000));
  EXPECT_EQ(t->peek<uint32_t>(kCounter), 3u) << "an external signal passed a masked vector";
  ASSERT_TRUE(mask(false));
  ASSERT_TRUE(wait_for(*t, kCounter, 4)) << "the held external signal was lost at unmask";

  ASSERT_TRUE(guest_ran(*t, 1000));
  const RunResult& result = vcpu.join();
  ASSERT_TRUE(result.done) << result.failure;
  EXPECT_EQ(t->peek<uint32_t>(kCounter), 4u);
  EXPECT_EQ(
      metrics.counter("iovirt_irq_vector_triggers_total", "", {{"device", "tiny"}, {"vector", "0"}})
          .value(),
      2u);
  EXPECT_EQ(metrics
                .counter("iovirt_irq_vector_masked_pending_total", "",
                         {{"device", "tiny"}, {"vector", "0"}})
                .value(),
            1u);
}

}  // namespace
}  // namespace iovirt::tiny
