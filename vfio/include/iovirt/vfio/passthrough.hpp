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
//  - Interrupt Pin 0: INTx is not offered yet, drivers use MSI or MSI-X;
//  - the capability list rebuilt at the device's own offsets (drivers hardcode them): MSI-X
//    (table and PBA emulated, vectors delivered by the device straight into KVM irqfds), MSI
//    (emulated, likewise), PCI Express (a read-mostly shadow, see below), Power Management
//    (always D0); every other capability and all extended capabilities (>= 0x100) are hidden.
//
// Guest writes reach the real device only for the Command register's I/O, Memory, Bus Master and
// Interrupt Disable bits. The PCI Express capability's Device Control (except Initiate FLR) and
// Link Control are writable in the shadow only: the host owns the link and the payload/error
// configuration, and a guest-chosen Max Payload Size larger than the path supports corrupts
// traffic. Status is emulated (not read live: with INTx hidden its Interrupt Status bit carries
// no information, and the RW1C error bits stay host-side).
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
  // detach().
  ~PassthroughDevice() override;
  PassthroughDevice(const PassthroughDevice&) = delete;
  PassthroughDevice& operator=(const PassthroughDevice&) = delete;

  // Stops the device: MSI/MSI-X off on the device, interrupt routes freed, BAR memory slots
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
