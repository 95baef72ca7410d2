// An irqfd raises an MSI that a tiny guest observes in its IDT handler: in-kernel irqchip, one
// MSI route (KVM_SET_GSI_ROUTING), KVM_IRQFD, and three eventfd writes from the host.
//
// The guest software-enables its LAPIC (SVR bit 8, through a register: 0xfee000f0 does not fit a
// sign-extended displacement), reports "ready" in memory, then spins at CPL 3 on a stop flag. The
// vector's handler increments a counter in memory and writes the LAPIC EOI register.
//
// Where the handler runs (both shapes are tested, both work on the PVM KVM):
//  - Kernel-mode handler: a 64-bit interrupt gate to the DPL-0 code segment. An interrupt taken
//    at CPL 3 switches to TSS.RSP0 (tiny_guest.hpp sets it up) and `iretq` at CPL 0 restores the
//    interrupted RFLAGS including IF. On PVM each handler instruction is emulated (slow), which is
//    fine for three interrupts.
//  - User-mode handler: a gate to the DPL-3 code segment is an intra-privilege interrupt (no
//    stack switch) and runs natively. It must be a *trap* gate: an interrupt gate clears IF on
//    entry and, on PVM, `iretq` at CPL 3 cannot set IF again (IOPL is effectively 0), so only
//    the first interrupt would ever arrive -- observed while writing this test.
// The guest never executes `sti` (it raises #GP at CPL 3 on PVM): the host starts it with
// RFLAGS.IF = 1.
#include <gtest/gtest.h>

#include <chrono>

#include "iovirt/core/eventfd.hpp"
#include "tiny_guest.hpp"

namespace iovirt::tiny {
namespace {

constexpr uint8_t kVector = 0x40;
constexpr uint32_t kGsi = 24;  // past the 24 IOAPIC pins; the route table is ours alone
constexpr uint64_t kCounter = kData;
constexpr uint64_t kReady = kData + 8;
constexpr uint64_t kStop = kData + 16;
constexpr uint32_t kInterrupts = 3;

Asm spinning_guest() {
  Asm a;
  a.mov_ebx(kLapicSvr).mov_eax_mem_rbx().or_eax(kSvrApicEnable).mov_mem_rbx_eax();  // SVR |= 0x100
  a.mov_ebx(kReady).mov_mem_rbx_imm32(1);                                           // ready = 1
  a.mov_ebx(kStop);
  const size_t spin = a.here();
  a.pause().mov_eax_mem_rbx().test_eax_eax().jz_back(spin);  // while (!stop) pause;
  a.done();
  return a;
}


struct HandlerShape {
  const char* name;
  uint16_t cs;
  GateType gate;
};

class IrqfdTest : public TinyGuestTest, public ::testing::WithParamInterface<HandlerShape> {};

TEST_P(IrqfdTest, EachEventfdWriteRaisesTheRoutedMsiInTheGuest) {
  const HandlerShape shape = GetParam();
  auto t =
      make_tiny_vm(kvm(), {.irqchip = true, .handler_cs = shape.cs, .interrupts_enabled = true});
  ASSERT_TRUE(t) << t.error().message();
  ASSERT_TRUE(t->load(kCode, spinning_guest()));
  ASSERT_TRUE(t->load(kHandler, counting_handler(kCounter)));
  ASSERT_TRUE(t->set_gate(kVector, kHandler, shape.cs, shape.gate));
  kvm_irq_routing_entry route{};
  route.gsi = kGsi;
  route.type = KVM_IRQ_ROUTING_MSI;
  route.u.msi.address_lo = 0xfee00000;  // destination APIC id 0 (bits 19:12), physical mode
  route.u.msi.address_hi = 0;
  route.u.msi.data = kVector;  // fixed delivery, edge, vector 0x40
  ASSERT_TRUE(t->vm.set_gsi_routing(std::span(&route, 1)));
  auto irq = EventFd::create();
  ASSERT_TRUE(irq);
  ASSERT_TRUE(t->vm.register_irqfd(irq->fd(), kGsi));
  Bus pio("pio"), mmio("mmio");
  GuestThread vcpu(*t, pio, mmio, kStop);
  ASSERT_TRUE(wait_for(*t, kReady, 1)) << "the guest never enabled its LAPIC";

  // Act: one eventfd write per interrupt, each after the previous one was handled (two writes
  // in a row could legitimately coalesce into one pending interrupt).
  for (uint32_t n = 1; n <= kInterrupts; ++n) {
    ASSERT_TRUE(irq->write(1));
    ASSERT_TRUE(wait_for(*t, kCounter, n)) << "interrupt " << n << " never reached the handler";
  }
  const RunResult& result = vcpu.join();

  ASSERT_TRUE(result.done) << result.failure;
  EXPECT_EQ(t->peek<uint32_t>(kCounter), kInterrupts);
  // Every interrupt was completed with an EOI: nothing is left in service or pending.
  auto lapic = t->vcpu.get_lapic();
  ASSERT_TRUE(lapic) << lapic.error().message();
  auto reg = [&](size_t off) {
    uint32_t v;
    std::memcpy(&v, lapic->regs + off, sizeof v);
    return v;
  };
  const size_t bank = 0x10 * (kVector / 32);
  const uint32_t bit = 1u << (kVector % 32);
  EXPECT_EQ(reg(0x100 + bank) & bit, 0u) << "ISR still holds the vector: no EOI";
  EXPECT_EQ(reg(0x200 + bank) & bit, 0u) << "IRR still holds the vector";
  EXPECT_NE(reg(0xf0) & kSvrApicEnable, 0u) << "the guest's SVR write did not reach the LAPIC";
}

INSTANTIATE_TEST_SUITE_P(
    HandlerShapes, IrqfdTest,
    ::testing::Values(HandlerShape{"KernelModeInterruptGate", kKernelCs, GateType::Interrupt},
                      HandlerShape{"UserModeTrapGate", kUserCs, GateType::Trap}),
    [](const ::testing::TestParamInfo<HandlerShape>& p) { return std::string(p.param.name); });

}  // namespace
}  // namespace iovirt::tiny
