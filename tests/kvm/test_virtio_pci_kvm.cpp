// The virtio-pci transport on this host's /dev/kvm: placed by the PCI root complex, its notify
// doorbells are KVM ioeventfds (any-width, len 0), so a guest's queue kicks land in the queue's
// kick eventfd with no exit to userspace, while its common-config reads still exit and reach
// the transport through the MMIO bus.
#include <gtest/gtest.h>

#include <array>
#include <cstring>

#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/irq/gsi_router.hpp"
#include "iovirt/irq/irq_chip.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/pci_transport.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/vmm/pci_root.hpp"
#include "tiny_guest.hpp"

namespace iovirt::tiny {
namespace {

using namespace virtio;

// The device side of the seam, doing nothing: this test is about the transport and KVM.
class IdleDevice final : public VirtioDevice {
 public:
  std::string_view name() const override { return "idle0"; }
  uint16_t device_id() const override { return kDeviceIdBlock; }
  uint64_t features() const override { return feature_bit(VIRTIO_F_VERSION_1); }
  uint16_t num_queues() const override { return 2; }
  uint16_t queue_max_size() const override { return 16; }
  uint32_t config_size() const override { return 0; }
  void read_config(uint32_t, std::span<uint8_t>) override {}
  Status activate(ActivateContext) override { return {}; }
  void reset() override {}
};

TEST_F(TinyGuestTest, VirtioPciDoorbellsAreIoeventfdsAndCommonConfigReadsExit) {
  auto t = make_tiny_vm(kvm());
  ASSERT_TRUE(t) << t.error().message();
  KvmIrqChip chip(t->vm);
  GsiRouter router(chip);
  MetricsRegistry metrics;
  IdleDevice dev;
  auto pci = VirtioPciDevice::create(dev, t->mem, router, chip, metrics);
  ASSERT_TRUE(pci) << pci.error().message();
  Bus pio("pio"), mmio("mmio");
  // Only a 32-bit window, inside the tiny guest's identity map: the 64-bit BAR goes there.
  PciRoot root(pio, mmio, PciWindows{0xc000, 0x4000, kMmioBase, 0x1000'0000, 0, 0});
  ASSERT_TRUE(root.add_device(2, **pci));
  // Firmware's step: Memory Space on through conf1 (bus 0, device 2, register 4).
  const uint32_t addr = 0x8000'0000u | (2u << 11) | 0x04;
  std::array<uint8_t, 4> a{};
  std::memcpy(a.data(), &addr, 4);
  root.config_ports().write(0, a);
  root.config_ports().write(4, std::array<uint8_t, 2>{0x02, 0});
  const uint64_t bar = (*pci)->config().bar_address(pci_layout::kBar);
  ASSERT_GE(bar, kMmioBase);
  ASSERT_TRUE((*pci)->ioeventfd_live(0) && (*pci)->ioeventfd_live(1))
      << "KVM refused the any-width MMIO ioeventfds";

  constexpr uint32_t kKicks = 100;
  const uint64_t notify1 = bar + pci_layout::kNotifyOffset + pci_layout::kNotifyMultiplier;
  const uint64_t numq = bar + pci_layout::kCommonOffset + common_cfg::kNumQueues;
  Asm g;
  g.mov_ebx(static_cast<uint32_t>(numq)).mov_eax_mem_rbx();  // num_queues (exits)
  g.mov_ebx(static_cast<uint32_t>(kData)).mov_mem_rbx_eax();
  g.mov_ebx(static_cast<uint32_t>(notify1)).mov_ecx(kKicks);
  const size_t loop = g.here();
  g.mov_mem_rbx_eax().dec_ecx().jnz_back(loop);  // queue 1 doorbell (no exit)
  g.done();
  ASSERT_TRUE(t->load(kCode, g));

  RunResult r = run_guest(*t, pio, mmio);

  ASSERT_TRUE(r.done) << r.failure;
  EXPECT_EQ(r.mmio_exits.count(notify1), 0u) << "queue 1's doorbell exited to userspace";
  EXPECT_EQ(r.mmio_exits[numq], 1u);
  EXPECT_EQ(t->peek<uint32_t>(kData) & 0xffff, 2u) << "num_queues as the guest read it";
  uint64_t kicks = 0;
  ASSERT_EQ(::read((*pci)->kick_fd(1), &kicks, sizeof kicks), static_cast<ssize_t>(sizeof kicks));
  EXPECT_EQ(kicks, kKicks);
  uint64_t none = 0;
  EXPECT_LT(::read((*pci)->kick_fd(0), &none, sizeof none), 0) << "queue 0 was kicked";
}

}  // namespace
}  // namespace iovirt::tiny
