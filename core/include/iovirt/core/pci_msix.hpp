// MSI-X (PCI 3.0 §6.8.2): the capability in config space, the vector table and the Pending Bit
// Array that live in a BAR. This is the device-model half; irq/ turns vectors into KVM routes.
//
// The owning device wires it up:
//   bar_read/bar_write:  if (msix.bar_read(bar, offset, data)) return;   // table or PBA hit
//   config_written:      msix.config_written(config(), offset, size);     // Enable / Function Mask
// Not internally synchronized: the owning device serializes vCPU accesses and irq-layer calls.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/pci_config.hpp"

namespace iovirt {

// Capability structure as laid out in config space.
struct MsixCapabilityRegs {
  uint8_t cap_id;
  uint8_t next_pointer;
  uint16_t message_control;
  uint32_t table_offset_bir;
  uint32_t pba_offset_bir;
};
static_assert(sizeof(MsixCapabilityRegs) == 12);
static_assert(offsetof(MsixCapabilityRegs, message_control) == 2);
static_assert(offsetof(MsixCapabilityRegs, table_offset_bir) == 4);
static_assert(offsetof(MsixCapabilityRegs, pba_offset_bir) == 8);

// One vector table entry as laid out in the BAR.
struct MsixTableEntry {
  uint32_t message_address;
  uint32_t message_upper_address;
  uint32_t message_data;
  uint32_t vector_control;
};
static_assert(sizeof(MsixTableEntry) == 16);
static_assert(offsetof(MsixTableEntry, vector_control) == 12);

namespace msix {
inline constexpr uint16_t kMaxVectors = 2048;
inline constexpr uint16_t kTableSizeMask = 0x07ff;          // Message Control 10:0 = N - 1
inline constexpr uint16_t kFunctionMask = 1u << 14;         // Message Control
inline constexpr uint16_t kEnable = 1u << 15;               // Message Control
inline constexpr uint32_t kBirMask = 0x7;                   // Table/PBA Offset 2:0
inline constexpr uint32_t kVectorControlMaskBit = 1u << 0;  // Vector Control
inline constexpr uint16_t kAllVectors = 0xffff;             // change-hook argument
}  // namespace msix

// Where the table and PBA live. Offsets are from the start of their BAR, qword aligned.
struct MsixLayout {
  uint16_t num_vectors;
  uint8_t table_bir;
  uint32_t table_offset;
  uint8_t pba_bir;
  uint32_t pba_offset;
};

// What the interrupt layer needs to know about one vector.
struct MsixVector {
  uint64_t address;
  uint32_t data;
  bool masked;  // the entry's own Mask bit
};

class MsixTable final {
 public:
  // Fired after a guest write changed a table entry (argument: its vector) or the Enable /
  // Function Mask state (argument: msix::kAllVectors). A vector whose pending bit is set may have
  // become deliverable: the handler calls take_deliverable_pending().
  using ChangeHook = std::function<void(uint16_t vector)>;

  // Adds the MSI-X capability to `config` and builds the table: all entries masked, nothing
  // pending, MSI-X disabled. The BARs must already exist and hold the table and PBA, which must
  // not overlap.
  static Result<MsixTable> create(PciConfigSpace& config, const MsixLayout& layout);
  // Adopts an MSI-X capability already in `config` (e.g. a real device's under VFIO): validates
  // the layout against the BARs and makes Enable and Function Mask guest-writable.
  static Result<MsixTable> from_capability(PciConfigSpace& config, uint8_t cap_offset);

  uint8_t cap_offset() const { return cap_offset_; }
  const MsixLayout& layout() const { return layout_; }
  uint16_t num_vectors() const { return layout_.num_vectors; }
  void set_change_hook(ChangeHook hook) { hook_ = std::move(hook); }

  // BAR dispatch: true when [offset, offset + size) starts inside the table or the PBA (the access
  // was handled: 4- or 8-byte aligned accesses work, others read all-ones / are dropped).
  bool bar_read(int bar, uint64_t offset, std::span<uint8_t> data) const;
  bool bar_write(int bar, uint64_t offset, std::span<const uint8_t> data);
  // Picks up Enable / Function Mask after a config write to [offset, offset + size).
  void config_written(const PciConfigSpace& config, uint16_t offset, size_t size);

  // --- interrupt layer ---
  bool enabled() const { return enabled_; }
  bool function_masked() const { return function_masked_; }
  // An out-of-range vector reads as masked with address and data 0.
  MsixVector entry(uint16_t vector) const;
  // enabled && !function mask && !entry mask.
  bool vector_deliverable(uint16_t vector) const;
  // The PBA: set when a message could not be sent because the vector was masked.
  void set_pending(uint16_t vector);
  void clear_pending(uint16_t vector);
  bool pending(uint16_t vector) const;
  // Clears and returns the pending vectors that are now deliverable, lowest first; the caller
  // sends their messages (PCI 3.0 §6.8.2.9: a pending vector is sent once it is unmasked).
  std::vector<uint16_t> take_deliverable_pending();

 private:
  MsixTable(uint8_t cap_offset, const MsixLayout& layout);
  uint64_t table_bytes() const { return uint64_t{layout_.num_vectors} * sizeof(MsixTableEntry); }
  uint64_t pba_bytes() const { return pba_.size() * sizeof(uint64_t); }
  void table_read(uint64_t offset, std::span<uint8_t> data) const;
  void table_write(uint64_t offset, std::span<const uint8_t> data);
  void pba_read(uint64_t offset, std::span<uint8_t> data) const;
  uint32_t table_dword(uint64_t offset) const;
  void set_table_dword(uint64_t offset, uint32_t v);
  void fire(uint16_t vector) const {
    if (hook_) hook_(vector);
  }

  uint8_t cap_offset_;
  MsixLayout layout_;
  std::vector<MsixTableEntry> table_;
  std::vector<uint64_t> pba_;
  bool enabled_ = false;
  bool function_masked_ = false;
  ChangeHook hook_;
};

}  // namespace iovirt
