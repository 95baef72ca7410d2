// The INTx path a passthrough device uses, on the host's real KVM: an irqfd on an IOAPIC GSI
// (16..23, where the VMM's _PRT routes PCI INTx) registered with a resamplefd. A tiny guest
// programs that IOAPIC pin level-triggered, active low (as Linux does from the _PRT) and its
// handler EOIs the LAPIC. Each trigger write must reach the handler, and KVM must signal the
// resamplefd once per interrupt, at the guest's EOI: that signal is what VFIO uses as its unmask
// eventfd to re-arm the real device's line. (What this does not tell apart: KVM also signals a
// resampler at the EOI of an edge-programmed pin, so the test passes with bit 15 clear too; the
// level programming itself is Linux's, checked in the lab.) Without the resamplefd it fails.
#include <poll.h>

#include <gtest/gtest.h>


#include "iovirt/core/eventfd.hpp"
#include "iovirt/vmm/pci_root.hpp"
#include "tiny_guest.hpp"

namespace iovirt::tiny {
namespace {

constexpr uint8_t kVector = 0x41;
constexpr uint32_t kIoapic = 0xfec00000;
constexpr uint32_t kIoregsel = kIoapic;
constexpr uint32_t kIowin = kIoapic + 0x10;
constexpr uint64_t kCounter = kData;
constexpr uint64_t kReady = kData + 8;
constexpr uint64_t kStop = kData + 16;
constexpr uint32_t kInterrupts = 3;
// Redirection entry (82093AA IOAPIC datasheet §3.2.4): vector, fixed, physical, active low
// (bit 13), level (bit 15), unmasked; destination APIC id 0 in the high dword.
constexpr uint32_t kRedirLow = kVector | (1u << 13) | (1u << 15);

Asm intx_guest(uint32_t pin) {
  Asm a;
  a.mov_ebx(kLapicSvr).mov_eax_mem_rbx().or_eax(kSvrApicEnable).mov_mem_rbx_eax();
  // High dword first, then the low dword (which unmasks the pin).
  a.mov_ebx(kIoregsel).mov_mem_rbx_imm32(0x10 + 2 * pin + 1);
  a.mov_ebx(kIowin).mov_mem_rbx_imm32(0);
  a.mov_ebx(kIoregsel).mov_mem_rbx_imm32(0x10 + 2 * pin);
  a.mov_ebx(kIowin).mov_mem_rbx_imm32(kRedirLow);
  a.mov_ebx(kReady).mov_mem_rbx_imm32(1);
  a.mov_ebx(kStop);
  const size_t spin = a.here();
  a.pause().mov_eax_mem_rbx().test_eax_eax().jz_back(spin);
  a.done();
  return a;
}

// Waits (bounded: a broken path must not hang the test) for `fd` to become readable.
bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 10000) == 1;
}

class IntxResampleTest : public TinyGuestTest {};

TEST_F(IntxResampleTest, LevelIrqfdOnAPrtGsiDeliversAndSignalsTheResamplefdAfterEachEoi) {
  // A GSI the _PRT hands out: slot 3, INTA#.
  const uint32_t gsi = pci_intx_gsi(3, 1);
  ASSERT_GE(gsi, 16u);
  ASSERT_LE(gsi, 23u);
  auto t = make_tiny_vm(kvm(), {.irqchip = true, .handler_cs = kKernelCs,
                                .interrupts_enabled = true});
  ASSERT_TRUE(t) << t.error().message();
  // Map the IOAPIC's 2 MiB page, uncached (the tiny guest maps only the LAPIC's).
  ASSERT_TRUE(t->mem.write_obj<uint64_t>(kPdHigh + ((kIoapic >> 21) & 0x1ff) * 8,
                                         uint64_t{kIoapic} | 0x87 | 0x18));
  ASSERT_TRUE(t->load(kCode, intx_guest(gsi)));
  ASSERT_TRUE(t->load(kHandler, counting_handler(kCounter)));
  ASSERT_TRUE(t->set_gate(kVector, kHandler, kKernelCs, GateType::Interrupt));
  // KVM_CREATE_IRQCHIP's default routes map GSIs 0..23 to the IOAPIC pins: no routing needed.
  auto trigger = EventFd::create();
  auto resample = EventFd::create();
  ASSERT_TRUE(trigger && resample);
  ASSERT_TRUE(t->vm.register_irqfd(trigger->fd(), gsi, resample->fd()));
  Bus pio("pio"), mmio("mmio");
  GuestThread vcpu(*t, pio, mmio, kStop);
  ASSERT_TRUE(wait_for(*t, kReady, 1)) << "the guest never programmed its IOAPIC pin";

  for (uint32_t n = 1; n <= kInterrupts; ++n) {
    ASSERT_TRUE(trigger->write(1));
    ASSERT_TRUE(wait_for(*t, kCounter, n)) << "interrupt " << n << " never reached the handler";
    ASSERT_TRUE(readable(resample->fd())) << "no resample after the EOI of interrupt " << n;
    auto v = resample->read();
    ASSERT_TRUE(v);
    EXPECT_EQ(*v, 1u) << "one resample per level interrupt";
  }
  const RunResult& result = vcpu.join();
  ASSERT_TRUE(result.done) << result.failure;
  EXPECT_EQ(t->peek<uint32_t>(kCounter), kInterrupts);
  EXPECT_TRUE(t->vm.unregister_irqfd(trigger->fd(), gsi));
}

}  // namespace
}  // namespace iovirt::tiny
