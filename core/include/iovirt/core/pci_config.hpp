// PCI configuration space of one function: a type-0 header, BARs and the capability list, as the
// guest sees it through configuration cycles (PCI Local Bus Specification 3.0, chapter 6).
//
// Two ways in:
//  - the guest path, read()/write(): 1-, 2- or 4-byte naturally aligned accesses, filtered through
//    per-byte masks (writable bits, RW1C bits); everything else is read-only;
//  - the device path, setters and peek/poke: the device model (or VFIO, loading a real device's
//    registers) sets read-only values and chooses the masks.
// Not internally synchronized: the owner (the root complex for guest accesses) serializes.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "iovirt/core/error.hpp"

namespace iovirt {

static_assert(std::endian::native == std::endian::little, "PCI config space is little-endian");

inline constexpr size_t kPciConfigSpaceSize = 4096;        // PCI Express extended config space
inline constexpr size_t kPciConventionalConfigSize = 256;  // what conf1 can reach
inline constexpr uint8_t kPciCapabilityListStart = 0x40;   // first byte after the type-0 header
inline constexpr int kPciNumBars = 6;

// Type-0 header registers; the enum type carries the register width.
enum class PciReg8 : uint16_t {
  RevisionId = 0x08,
  ProgIf = 0x09,
  SubClass = 0x0a,
  BaseClass = 0x0b,
  CacheLineSize = 0x0c,
  LatencyTimer = 0x0d,
  HeaderType = 0x0e,
  Bist = 0x0f,
  CapabilitiesPointer = 0x34,
  InterruptLine = 0x3c,
  InterruptPin = 0x3d,
  MinGnt = 0x3e,
  MaxLat = 0x3f,
};
enum class PciReg16 : uint16_t {
  VendorId = 0x00,
  DeviceId = 0x02,
  Command = 0x04,
  StatusRegister = 0x06,  // "Status" in the spec; renamed so it does not shadow iovirt::Status
  SubsystemVendorId = 0x2c,
  SubsystemId = 0x2e,
};
enum class PciReg32 : uint16_t {
  Bar0 = 0x10,
  Bar1 = 0x14,
  Bar2 = 0x18,
  Bar3 = 0x1c,
  Bar4 = 0x20,
  Bar5 = 0x24,
  CardbusCisPointer = 0x28,
  ExpansionRomBaseAddress = 0x30,
};

constexpr uint16_t pci_offset(PciReg8 r) {
  return static_cast<uint16_t>(r);
}
constexpr uint16_t pci_offset(PciReg16 r) {
  return static_cast<uint16_t>(r);
}
constexpr uint16_t pci_offset(PciReg32 r) {
  return static_cast<uint16_t>(r);
}
constexpr uint16_t pci_bar_offset(int index) {
  return static_cast<uint16_t>(pci_offset(PciReg32::Bar0) + 4 * index);
}

// The type-0 header as laid out on the wire; the enums above must agree with it.
struct PciType0Header {
  uint16_t vendor_id;
  uint16_t device_id;
  uint16_t command;
  uint16_t status;
  uint8_t revision_id;
  uint8_t prog_if;
  uint8_t sub_class;
  uint8_t base_class;
  uint8_t cache_line_size;
  uint8_t latency_timer;
  uint8_t header_type;
  uint8_t bist;
  uint32_t bar[kPciNumBars];
  uint32_t cardbus_cis_pointer;
  uint16_t subsystem_vendor_id;
  uint16_t subsystem_id;
  uint32_t expansion_rom_base_address;
  uint8_t capabilities_pointer;
  uint8_t reserved[7];
  uint8_t interrupt_line;
  uint8_t interrupt_pin;
  uint8_t min_gnt;
  uint8_t max_lat;
};
static_assert(sizeof(PciType0Header) == kPciCapabilityListStart);
static_assert(offsetof(PciType0Header, command) == pci_offset(PciReg16::Command));
static_assert(offsetof(PciType0Header, status) == pci_offset(PciReg16::StatusRegister));
static_assert(offsetof(PciType0Header, base_class) == pci_offset(PciReg8::BaseClass));
static_assert(offsetof(PciType0Header, header_type) == pci_offset(PciReg8::HeaderType));
static_assert(offsetof(PciType0Header, bar) == pci_offset(PciReg32::Bar0));
static_assert(offsetof(PciType0Header, subsystem_vendor_id) ==
              pci_offset(PciReg16::SubsystemVendorId));
static_assert(offsetof(PciType0Header, expansion_rom_base_address) ==
              pci_offset(PciReg32::ExpansionRomBaseAddress));
static_assert(offsetof(PciType0Header, capabilities_pointer) ==
              pci_offset(PciReg8::CapabilitiesPointer));
static_assert(offsetof(PciType0Header, interrupt_line) == pci_offset(PciReg8::InterruptLine));
static_assert(offsetof(PciType0Header, max_lat) == pci_offset(PciReg8::MaxLat));

// Command register bits (PCI 3.0 §6.2.2).
namespace pci_command {
inline constexpr uint16_t kIoSpace = 1u << 0;
inline constexpr uint16_t kMemorySpace = 1u << 1;
inline constexpr uint16_t kBusMaster = 1u << 2;
inline constexpr uint16_t kParityErrorResponse = 1u << 6;
inline constexpr uint16_t kSerrEnable = 1u << 8;
inline constexpr uint16_t kInterruptDisable = 1u << 10;
}  // namespace pci_command

// Status register bits (PCI 3.0 §6.2.3).
namespace pci_status {
inline constexpr uint16_t kInterruptStatus = 1u << 3;
inline constexpr uint16_t kCapabilitiesList = 1u << 4;
inline constexpr uint16_t kMasterDataParityError = 1u << 8;
inline constexpr uint16_t kSignaledTargetAbort = 1u << 11;
inline constexpr uint16_t kReceivedTargetAbort = 1u << 12;
inline constexpr uint16_t kReceivedMasterAbort = 1u << 13;
inline constexpr uint16_t kSignaledSystemError = 1u << 14;
inline constexpr uint16_t kDetectedParityError = 1u << 15;
// The error bits software clears by writing 1.
inline constexpr uint16_t kRw1cMask = kMasterDataParityError | kSignaledTargetAbort |
                                      kReceivedTargetAbort | kReceivedMasterAbort |
                                      kSignaledSystemError | kDetectedParityError;
}  // namespace pci_status

// Capability IDs (PCI Code and ID Assignment Specification).
enum class PciCapId : uint8_t {
  PowerManagement = 0x01,
  Msi = 0x05,
  VendorSpecific = 0x09,
  PciExpress = 0x10,
  MsiX = 0x11,
};

enum class PciBarKind : uint8_t { Io, Mem32, Mem64 };

struct PciBarInfo {
  uint64_t size;
  PciBarKind kind;
  bool prefetchable;
};

// One entry of a capability list: its ID and where its header sits.
struct PciCapabilityRef {
  uint8_t id;
  uint8_t offset;
};

// Walks the capability list of `config` (a function's config space, at least its first 64 bytes;
// up to 256 are used). The bytes are treated as hostile: this also runs on a real device's config
// space under VFIO. An empty list when the Status register's Capabilities List bit is clear. Fails
// on a pointer below 0x40, a pointer that is not dword-aligned (the spec reserves bits 1:0; a
// device that sets them is not virtualized on a guess), a capability header that does not fit in
// `config`, an ID of 0xff (an absent function reads all-ones) and a loop; the walk is bounded by
// the 48 dword slots between 0x40 and 0x100.
Result<std::vector<PciCapabilityRef>> walk_pci_capabilities(std::span<const uint8_t> config);

// The offset of the first capability with `id`: nullopt when absent, an error when the list is
// malformed (see walk_pci_capabilities).
Result<std::optional<uint8_t>> find_pci_capability(std::span<const uint8_t> config, uint8_t id);

class PciConfigSpace final {
 public:
  // Fired when a BAR's decoded address changes, from a guest write or set_bar_address(). For a
  // 64-bit BAR: `index` is the lower slot and the addresses are the combined 64-bit values; it
  // fires after each half that changes. During BAR sizing `new_addr` is the sizing pattern.
  using BarChangeHook = std::function<void(int index, uint64_t old_addr, uint64_t new_addr)>;

  // Type-0 header, all zero, command/status/BARs read-only until set up.
  PciConfigSpace();

  // --- identity (read-only to the guest) ---
  void set_vendor_id(uint16_t id) { set(PciReg16::VendorId, id); }
  void set_device_id(uint16_t id) { set(PciReg16::DeviceId, id); }
  void set_subsystem(uint16_t vendor_id, uint16_t id);
  void set_class_code(uint8_t base_class, uint8_t sub_class, uint8_t prog_if);
  void set_revision_id(uint8_t rev) { set(PciReg8::RevisionId, rev); }
  // 0 = no INTx, 1..4 = INTA#..INTD#.
  void set_interrupt_pin(uint8_t pin) { set(PciReg8::InterruptPin, pin); }
  // Status bit 3, reflecting the device's INTx state.
  void set_interrupt_status(bool asserted);

  // --- BARs ---
  // size: a power of two, Io 4..64 KiB (PCI recommends <= 256 bytes), Mem32 16..2 GiB, Mem64
  // 16..2^63. Mem64 takes slots index and index + 1. Io cannot be prefetchable. Enables the
  // matching command-register decode bit (hardwired to 0 on a function without such BARs).
  Status add_bar(int index, uint64_t size, PciBarKind kind, bool prefetchable = false);
  // nullopt for an unused slot and for the upper half of a 64-bit BAR.
  std::optional<PciBarInfo> bar(int index) const;
  // The address the BAR currently holds (0 for an unused slot or an upper half).
  uint64_t bar_address(int index) const;
  // Programs a BAR as firmware does (bits below the size are dropped). Fires the hook.
  void set_bar_address(int index, uint64_t addr);
  void set_bar_change_hook(BarChangeHook hook) { bar_hook_ = std::move(hook); }

  // --- command register ---
  uint16_t command() const { return get(PciReg16::Command); }
  uint16_t status() const { return get(PciReg16::StatusRegister); }
  bool io_enabled() const { return (command() & pci_command::kIoSpace) != 0; }
  bool mem_enabled() const { return (command() & pci_command::kMemorySpace) != 0; }
  bool bus_master_enabled() const { return (command() & pci_command::kBusMaster) != 0; }

  // --- capabilities ---
  // Appends a capability after the last one (from 0x40, dword aligned) and links it into the list.
  // `body` is the capability without its 2-byte header (ID, next pointer); `write_mask` is empty
  // (read-only body) or as long as `body`. Sets the Status register's Capabilities List bit.
  // Fails when the capability does not fit below 0x100.
  Result<uint8_t> add_capability(uint8_t id, std::span<const uint8_t> body,
                                 std::span<const uint8_t> write_mask = {});
  Result<uint8_t> add_capability(PciCapId id, std::span<const uint8_t> body,
                                 std::span<const uint8_t> write_mask = {}) {
    return add_capability(static_cast<uint8_t>(id), body, write_mask);
  }
  // Offset of the first capability with `id`, via walk_pci_capabilities over this space.
  std::optional<uint8_t> find_capability(uint8_t id) const;
  std::optional<uint8_t> find_capability(PciCapId id) const {
    return find_capability(static_cast<uint8_t>(id));
  }

  // --- guest path ---
  // 1-, 2- or 4-byte, naturally aligned, below 4096. Anything else reads all-ones / is dropped.
  void read(uint16_t offset, std::span<uint8_t> data) const;
  void write(uint16_t offset, std::span<const uint8_t> data);

  // --- device path: no masks applied, no hooks fired ---
  uint8_t get(PciReg8 r) const { return peek8(pci_offset(r)); }
  uint16_t get(PciReg16 r) const { return peek16(pci_offset(r)); }
  uint32_t get(PciReg32 r) const { return peek32(pci_offset(r)); }
  void set(PciReg8 r, uint8_t v) { poke8(pci_offset(r), v); }
  void set(PciReg16 r, uint16_t v) { poke16(pci_offset(r), v); }
  void set(PciReg32 r, uint32_t v) { poke32(pci_offset(r), v); }
  // Offsets past the end read 0 / are ignored.
  uint8_t peek8(uint16_t offset) const;
  uint16_t peek16(uint16_t offset) const;
  uint32_t peek32(uint16_t offset) const;
  void poke8(uint16_t offset, uint8_t v);
  void poke16(uint16_t offset, uint16_t v);
  void poke32(uint16_t offset, uint32_t v);
  // Per-byte masks for [offset, offset + mask.size()); bytes past the end are ignored.
  void set_write_mask(uint16_t offset, std::span<const uint8_t> mask);
  void set_rw1c_mask(uint16_t offset, std::span<const uint8_t> mask);

  // The raw register bytes, e.g. for walk_pci_capabilities or a debug dump.
  std::span<const uint8_t, kPciConfigSpaceSize> bytes() const { return bytes_; }

 private:
  struct BarSlot {
    uint64_t size = 0;
    PciBarKind kind = PciBarKind::Mem32;
    bool prefetchable = false;
    bool used = false;   // holds a BAR (the lower slot of a Mem64)
    bool upper = false;  // upper half of the Mem64 in the slot below
  };
  using BarAddresses = std::array<uint64_t, kPciNumBars>;

  uint64_t load(size_t offset, size_t width) const;  // little-endian, bytes past the end read 0
  void store(size_t offset, size_t width, uint64_t v);
  BarAddresses bar_addresses() const;
  void notify_bar_changes(const BarAddresses& before) const;

  alignas(4) std::array<uint8_t, kPciConfigSpaceSize> bytes_{};
  std::array<uint8_t, kPciConfigSpaceSize> write_mask_{};
  std::array<uint8_t, kPciConfigSpaceSize> rw1c_mask_{};
  std::array<BarSlot, kPciNumBars> bars_{};
  uint8_t last_cap_ = 0;  // offset of the last capability, 0 when none
  uint16_t next_cap_ = kPciCapabilityListStart;
  BarChangeHook bar_hook_;
};

}  // namespace iovirt
