// The x86 PCI root complex: bus 0 with a host bridge at 00:00.0, configuration mechanism #1 at
// ports 0xcf8-0xcff, and BAR placement on the port-I/O and MMIO buses.
//
// A BAR is on its bus exactly when the guest lets the function decode it: the command register's
// I/O or Memory Space bit is set and the BAR holds a usable address (not 0, not the all-ones
// sizing pattern, inside the 64 KiB port space or below 4 GiB for 32-bit BARs). The root
// re-checks every BAR of a function after each config write to it, so enabling, disabling and
// moving all go through one path.
//
// The root does not own the devices; the VM does, and keeps them alive as long as the root.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string_view>

#include "iovirt/core/bus.hpp"
#include "iovirt/core/error.hpp"
#include "iovirt/core/pci.hpp"

namespace iovirt {

// Address windows BARs are allocated from; the VMM also describes them to the guest (ACPI _CRS).
struct PciWindows {
  uint64_t io_base;
  uint64_t io_size;
  uint64_t mmio32_base;
  uint64_t mmio32_size;
  uint64_t mmio64_base;  // mmio64_size 0: 64-bit BARs go to the 32-bit window
  uint64_t mmio64_size;
};

// PCI INTx routing. Every slot's INTA#..INTD# is wired to one of the in-kernel IOAPIC's pins
// 16..23 by a fixed swizzle, the same rotation a PCI-to-PCI bridge applies (PCI-to-PCI Bridge
// 1.2 §9.1), so functions in neighbouring slots land on different pins:
//     GSI = 16 + (slot + pin - 1) % 8        pin 1..4 = INTA#..INTD# (the Interrupt Pin register)
// Pins 16..23 are the IOAPIC pins no ISA IRQ uses, so no MADT interrupt source override is
// needed. The guest learns the wiring from the DSDT's _PRT (acpi.cpp: one entry per slot 1..31
// and pin) and programs those pins level-triggered, active low, as PCI INTx is. A device that
// raises INTx (a passthrough function; virtio devices are MSI-X only and report pin 0) signals
// the GSI through a KVM irqfd with a resamplefd.
inline constexpr uint32_t kPciIntxFirstGsi = 16;
inline constexpr uint32_t kPciIntxNumGsis = 8;
// `pin` 1..4 (INTA#..INTD#); slot 0..31.
constexpr uint32_t pci_intx_gsi(uint8_t slot, uint8_t pin) {
  return kPciIntxFirstGsi + (uint32_t{slot} + uint32_t{pin} + kPciIntxNumGsis - 1) % kPciIntxNumGsis;
}

// 00:00.0, the host bridge. Red Hat's "QEMU PCIe host bridge" ID, which guests treat as a plain
// host bridge with no driver quirks.
class PciHostBridge final : public PciDevice {
 public:
  static constexpr uint16_t kVendorId = 0x1b36;
  static constexpr uint16_t kDeviceId = 0x0008;

  PciHostBridge();
  std::string_view name() const override { return "host-bridge"; }
  PciConfigSpace& config() override { return config_; }

 private:
  PciConfigSpace config_;
};

class PciRoot final {
 public:
  static constexpr uint16_t kConfigAddressPort = 0xcf8;  // CONFIG_ADDRESS, dword only
  static constexpr uint16_t kConfigDataPort = 0xcfc;     // CONFIG_DATA, 0xcfc-0xcff
  static constexpr uint64_t kConfigPortsLen = 8;
  static constexpr uint8_t kNumSlots = 32;

  PciRoot(Bus& pio, Bus& mmio, const PciWindows& windows);
  // Takes the BARs off the buses without touching the devices.
  ~PciRoot();
  PciRoot(const PciRoot&) = delete;
  PciRoot& operator=(const PciRoot&) = delete;

  // Plugs `dev` in as function 0 of `slot` (1..31) on bus 0, allocates its BARs naturally
  // aligned from the windows (Io from the I/O window; Mem64 from the 64-bit window when there is
  // one; memory BARs at least page aligned so they can be mapped into guest memory slots) and
  // programs them. Fails, changing nothing, on a taken slot or exhausted windows.
  Status add_device(uint8_t slot, PciDevice& dev);
  // Same, in the lowest free slot; returns the slot.
  Result<uint8_t> add_device(PciDevice& dev);

  // The conf1 port device; the VMM inserts it on the PIO bus at kConfigAddressPort,
  // kConfigPortsLen bytes.
  BusDevice& config_ports() { return conf1_; }
  const PciWindows& windows() const { return windows_; }
  PciHostBridge& host_bridge() { return host_bridge_; }
  // The device in `slot`, nullptr when empty.
  PciDevice* device(uint8_t slot) const;

 private:
  // Forwards accesses to one BAR's bus range to its device.
  class BarRange final : public BusDevice {
   public:
    BarRange(PciDevice& dev, int bar) : dev_(dev), bar_(bar) {}
    void read(uint64_t offset, std::span<uint8_t> data) override {
      dev_.bar_read(bar_, offset, data);
    }
    void write(uint64_t offset, std::span<const uint8_t> data) override {
      dev_.bar_write(bar_, offset, data);
    }

   private:
    PciDevice& dev_;
    int bar_;
  };

  class Conf1 final : public BusDevice {
   public:
    explicit Conf1(PciRoot& root) : root_(root) {}
    void read(uint64_t offset, std::span<uint8_t> data) override;
    void write(uint64_t offset, std::span<const uint8_t> data) override;

   private:
    PciRoot& root_;
  };

  struct BarState {
    std::unique_ptr<BarRange> range;
    PciBarKind kind = PciBarKind::Mem32;
    std::optional<uint64_t> mapped;   // base of the range on the bus
    std::optional<uint64_t> refused;  // last address the bus refused, so it is logged once
  };
  struct Slot {
    PciDevice* dev = nullptr;
    std::array<BarState, kPciNumBars> bars;
  };
  struct Allocator {
    uint64_t base;
    uint64_t size;
    uint64_t next;
  };

  Status add_device_locked(uint8_t slot, PciDevice& dev);
  // Brings the bus ranges of the function in `slot` in line with its config space.
  void update_decoding(uint8_t slot);
  Bus& bus_for(PciBarKind kind) { return kind == PciBarKind::Io ? pio_ : mmio_; }
  // Target of the latched CONFIG_ADDRESS, nullptr when disabled / absent.
  PciDevice* addressed_device(uint8_t* slot) const;
  void config_data_read(uint64_t byte, std::span<uint8_t> data);
  void config_data_write(uint64_t byte, std::span<const uint8_t> data);

  Bus& pio_;
  Bus& mmio_;
  PciWindows windows_;
  PciHostBridge host_bridge_;
  Conf1 conf1_{*this};

  // Serializes config cycles, the CONFIG_ADDRESS latch and BAR placement. Never held while a
  // BAR access is dispatched: those go straight from the bus to the device.
  mutable std::mutex mu_;
  uint32_t config_address_ = 0;
  std::array<Slot, kNumSlots> slots_{};
  Allocator io_;
  Allocator mmio32_;
  Allocator mmio64_;
};

}  // namespace iovirt
