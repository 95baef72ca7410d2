// A real PCI function given to the guest: PassthroughDevice is the PciDevice the root complex
// sees, built over the DeviceTransport seam (the VFIO device fd today) and the MemoryMapper seam
// (KVM memory slots for BAR memory).
//
// What the guest sees is an emulated copy of the device's config space, never the real bytes
// (they come from the device and are hostile, see docs/threat-model.md):
//  - identity (vendor, device, class, subsystem, revision) copied;
//  - BARs emulated from the transport's region sizes and the real BARs' type bits; the guest
//    programs and sizes them in the copy only (VFIO virtualizes the real BARs anyway);
//  - the expansion ROM BAR reads 0 (hidden): the ROM would need its own trapped region, our guests
//    boot without running option ROMs, and on many devices the ROM shares its address decoder with
//    a memory BAR, so enabling it in the guest could silently turn a BAR off;
//  - Interrupt Pin: 0 until the VMM wires INTx (set_intx_gsi), then the device's own pin, with
//    Interrupt Line preset to the GSI (see INTx below);
//  - the capability list rebuilt at the device's own offsets (drivers hardcode them): MSI-X
//    (table and PBA emulated, vectors delivered by the device straight into KVM irqfds), MSI
//    (emulated, likewise), PCI Express (a read-mostly shadow, see below), Power Management
//    (always D0); every other capability and all extended capabilities (>= 0x100) are hidden.
//
// Guest writes reach the real device only for the Command register's I/O, Memory, Bus Master and
// Interrupt Disable bits. The PCI Express capability's Device Control (except Initiate FLR) and
// Link Control are writable in the shadow only: the host owns the link and the payload/error
// configuration, and a guest-chosen Max Payload Size larger than the path supports corrupts
// traffic. Status is emulated, except that once INTx is wired its Interrupt Status bit (3) is
// read live from the device; the RW1C error bits stay host-side.
//
// INTx (level-triggered, PCI 3.0 §2.2.6): when the function has an INTx (VFIO offers one and the
// real Interrupt Pin is 1..4), the VMM routes the slot's pin to a GSI (pci_intx_gsi, an IOAPIC
// pin the DSDT's _PRT describes) and calls set_intx_gsi. Wiring: one eventfd T registered as a
// KVM irqfd on the GSI with a resamplefd R; VFIO gets T as the INTx trigger and R as the unmask
// eventfd. The host's vfio-pci masks the line at each interrupt and signals T; KVM asserts the
// GSI until the guest's EOI, then deasserts it and signals R; VFIO unmasks, and a device still
// asserting interrupts again. So INTx never passes through iovirt either. VFIO allows one of
// INTx, MSI and MSI-X at a time: INTx is on while the guest has neither MSI nor MSI-X enabled,
// torn down (VFIO and KVM) before either is enabled and restored when both are off again.
//
// BAR memory: every page-aligned mmap-able area is mapped once at create; when the root places a
// memory BAR (bar_decode_changed) the areas become KVM memory slots at the BAR's address, except
// the pages holding the MSI-X table and PBA, which stay trapped so the table is emulated. Trapped
// accesses (those pages, BARs without mmap, I/O BARs) go through bar_read/bar_write: MSI-X table
// or PBA, else the transport's region read/write.
//
// Threading: config cycles come from vCPU threads under the root's lock; BAR accesses from vCPU
// threads without it. The device's own mutex serializes config writes, BAR placement and MSI;
// MsixInterrupts::lock() guards the MSI-X table (taken after the device mutex, never before).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/core/pci.hpp"
#include "iovirt/irq/gsi_router.hpp"
#include "iovirt/irq/irq_chip.hpp"
#include "iovirt/irq/msix_interrupts.hpp"
#include "iovirt/vfio/memory_mapper.hpp"
#include "iovirt/vfio/transport.hpp"

namespace iovirt::vfio {

// MSI capability (PCI 3.0 §6.8.1) Message Control bits.
namespace msi {
inline constexpr uint16_t kEnable = 1u << 0;
inline constexpr uint16_t kMultipleMessageCapableMask = 0x7u << 1;
inline constexpr uint16_t kMultipleMessageEnableMask = 0x7u << 4;
inline constexpr uint16_t k64Bit = 1u << 7;
inline constexpr uint16_t kPerVectorMasking = 1u << 8;
inline constexpr unsigned kMaxVectors = 32;
}  // namespace msi

class PassthroughDevice final : public PciDevice {
 public:
  // Resets the function (when the transport says it can), reads and validates its config space
  // and builds the guest view. transport, mapper, router, chip and metrics must outlive the
  // device. `name` labels logs and metrics (e.g. the PCI address). Fails on a function that is
  // absent (vendor 0xffff), not a type-0 header or whose config region cannot be read.
  static Result<std::unique_ptr<PassthroughDevice>> create(DeviceTransport& transport,
                                                           MemoryMapper& mapper, GsiRouter& router,
                                                           IrqChip& chip, MetricsRegistry& metrics,
                                                           std::string name);

  // The function's INTx pin (1..4 = INTA#..INTD#) when it can be offered: VFIO reports one INTx
  // and the real Interrupt Pin register is 1..4; 0 otherwise (the guest then sees pin 0).
  uint8_t intx_pin() const { return intx_pin_; }
  // Wires INTx to `gsi` (an IOAPIC pin the guest's _PRT routes this slot's pin to; the VMM
  // computes it from the slot the root gave the device) and makes Interrupt Pin and Line
  // visible. Call once, after plugging the device in and before the guest runs. On failure
  // nothing stays registered and the guest keeps seeing pin 0. A no-op for a device without
  // INTx (intx_pin() == 0).
  Status set_intx_gsi(uint32_t gsi);
  // detach().
  ~PassthroughDevice() override;
  PassthroughDevice(const PassthroughDevice&) = delete;
  PassthroughDevice& operator=(const PassthroughDevice&) = delete;

  // Stops the device: INTx/MSI/MSI-X off on the device, irqfds and interrupt routes freed, BAR memory slots
  // removed and BAR mappings dropped, function reset. Idempotent; the device only answers
  // all-ones afterwards. The VMM calls it before tearing down the VM's memory (the destructor
  // does it too).
  void detach();

  // --- PciDevice ---
  std::string_view name() const override { return name_; }
  PciConfigSpace& config() override { return config_; }
  void config_read(uint16_t offset, std::span<uint8_t> data) override;
  void config_write(uint16_t offset, std::span<const uint8_t> data) override;
  void bar_read(int bar, uint64_t offset, std::span<uint8_t> data) override;
  void bar_write(int bar, uint64_t offset, std::span<const uint8_t> data) override;
  void bar_decode_changed(int bar, std::optional<uint64_t> address) override;

  // --- inspection (tests, the interrupt-path report) ---
  // The capability offsets kept in the guest view, as (id, offset) in list order.
  std::vector<PciCapabilityRef> guest_capabilities() const;
  MsixInterrupts* msix() const { return msix_.get(); }
  bool msi_enabled() const;
  // INTx: whether the line is enabled on the device and in KVM right now, its GSI, and the
  // trigger and resample eventfds (-1 when INTx is not wired).
  bool intx_enabled() const;
  std::optional<uint32_t> intx_gsi() const;
  int intx_trigger_fd() const;
  int intx_resample_fd() const;
  // The eventfds of the enabled MSI vectors (empty when MSI is off).
  std::vector<int> msi_notifiers() const;
  std::vector<std::optional<uint32_t>> msi_gsis() const;

 private:
  // One page-aligned piece of a BAR's mmap-able memory, mapped in iovirt at create.
  struct BarPiece {
    uint64_t offset = 0;  // in the BAR
    uint64_t size = 0;
    RegionMapping mapping;
    std::optional<uint32_t> slot;  // MemoryMapper handle while placed in the guest
  };
  struct Bar {
    bool present = false;
    PciBarKind kind = PciBarKind::Mem32;
    uint64_t size = 0;
    std::vector<MmapArea> mmap_areas;  // from the transport; empty: not mmap-able
    std::vector<BarPiece> pieces;
  };
  struct MsiVectorState {
    EventFd fd;
    std::optional<uint32_t> gsi;
    bool irqfd = false;
  };
  struct Intx {
    uint32_t gsi = 0;
    EventFd trigger;   // KVM irqfd on gsi; VFIO's INTx trigger
    EventFd resample;  // KVM's resamplefd; VFIO's unmask eventfd
    bool enabled = false;
    // Re-enabling failed: not retried on every config write (the guest drives those) but at
    // the next MSI/MSI-X off transition.
    bool failed = false;
  };
  struct MsiCap {
    uint8_t offset = 0;
    bool is64 = false;
    bool maskable = false;
    unsigned max_vectors = 1;  // min(Multiple Message Capable, the transport's MSI count)
  };

  PassthroughDevice(DeviceTransport& transport, MemoryMapper& mapper, GsiRouter& router,
                    IrqChip& chip, MetricsRegistry& metrics, std::string name);
  Status init();
  Status build_bars(std::span<const uint8_t> real);
  void build_capabilities(std::span<const uint8_t> real);
  void setup_msix();
  void map_bar_memory();

  void forward_command();
  void msix_enable_changed();
  void msi_config_changed();
  Status msi_enable(unsigned n, uint64_t addr, uint32_t data, uint32_t mask);
  void msi_disable();
  void msi_update(uint64_t addr, uint32_t data, uint32_t mask);
  void release_msi_vectors(std::vector<MsiVectorState>& vs);
  Status intx_enable();
  void intx_disable();
  void intx_update();
  void region_failed(const char* op, int bar, const Error& e);
  void unmap_bar(Bar& b);
  std::string bar_name(int bar) const;

  DeviceTransport& transport_;
  MemoryMapper& mapper_;
  GsiRouter& router_;
  IrqChip& chip_;
  MetricsRegistry& metrics_;
  std::string name_;

  mutable std::mutex mu_;
  PciConfigSpace config_;
  std::array<Bar, kPciNumBars> bars_{};
  std::vector<PciCapabilityRef> caps_;
  std::atomic<bool> detached_{false};
  bool resettable_ = false;

  // MSI-X: the table before the interrupts (destroyed after them: they hold a reference).
  std::optional<MsixTable> msix_table_;
  std::unique_ptr<MsixInterrupts> msix_;
  std::vector<Counter*> msix_table_writes_;  // per vector

  uint8_t intx_pin_ = 0;  // immutable after create
  std::optional<Intx> intx_;  // set by set_intx_gsi

  std::optional<MsiCap> msi_cap_;
  std::vector<MsiVectorState> msi_vectors_;  // non-empty while MSI is enabled
  uint64_t msi_addr_ = 0;
  uint32_t msi_data_ = 0;
  uint32_t msi_mask_ = 0;

  Counter* trapped_accesses_ = nullptr;
  Counter* region_errors_ = nullptr;
  Counter* irq_errors_ = nullptr;
  Gauge* mapped_bytes_ = nullptr;
  Gauge* msi_vectors_gauge_ = nullptr;
  std::atomic<bool> region_error_logged_{false};  // BAR accesses race on it
};

}  // namespace iovirt::vfio
