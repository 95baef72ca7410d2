#include "iovirt/core/pci_msix.hpp"

#include <algorithm>
#include <array>
#include <string>

namespace iovirt {

namespace {

constexpr uint64_t kDword = 4;
constexpr uint64_t kQword = 8;

uint32_t dword_from(std::span<const uint8_t> d, size_t at) {
  return uint32_t{d[at]} | uint32_t{d[at + 1]} << 8 | uint32_t{d[at + 2]} << 16 |
         uint32_t{d[at + 3]} << 24;
}

void dword_to(std::span<uint8_t> d, size_t at, uint32_t v) {
  for (size_t i = 0; i < 4; ++i) d[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

uint64_t table_bytes_for(uint16_t n) {
  return uint64_t{n} * sizeof(MsixTableEntry);
}
uint64_t pba_bytes_for(uint16_t n) {
  return (uint64_t{n} + 63) / 64 * kQword;
}

// Does [base, base + len) fit in BAR `bir` of `config`?
Status check_region(const PciConfigSpace& config, const char* what, uint8_t bir, uint64_t base,
                    uint64_t len) {
  const std::string name = std::string("MSI-X ") + what;
  if (bir >= kPciNumBars) return fail(name + ": BIR " + std::to_string(bir) + " is reserved");
  auto bar = config.bar(bir);
  if (!bar) return fail(name + ": BAR" + std::to_string(bir) + " does not exist");
  if (bar->kind == PciBarKind::Io) return fail(name + ": BAR" + std::to_string(bir) + " is I/O");
  if (base % kQword != 0) return fail(name + ": offset not qword aligned");
  if (base > bar->size || len > bar->size - base)
    return fail(name + ": does not fit in BAR" + std::to_string(bir));
  return {};
}

Status validate(const PciConfigSpace& config, const MsixLayout& l) {
  if (l.num_vectors == 0 || l.num_vectors > msix::kMaxVectors)
    return fail("MSI-X: table size " + std::to_string(l.num_vectors) + " not in 1..2048");
  const uint64_t tb = table_bytes_for(l.num_vectors);
  const uint64_t pb = pba_bytes_for(l.num_vectors);
  if (auto s = check_region(config, "table", l.table_bir, l.table_offset, tb); !s) return s;
  if (auto s = check_region(config, "PBA", l.pba_bir, l.pba_offset, pb); !s) return s;
  if (l.table_bir == l.pba_bir && l.table_offset < l.pba_offset + pb &&
      l.pba_offset < l.table_offset + tb)
    return fail("MSI-X: table and PBA overlap");
  return {};
}

constexpr uint8_t kControlWritableHigh = (msix::kEnable | msix::kFunctionMask) >> 8;

}  // namespace

MsixTable::MsixTable(uint8_t cap_offset, const MsixLayout& layout)
    : cap_offset_(cap_offset),
      layout_(layout),
      // Entries come out of reset masked (PCI 3.0 §6.8.2.9).
      table_(layout.num_vectors, MsixTableEntry{0, 0, 0, msix::kVectorControlMaskBit}),
      pba_(pba_bytes_for(layout.num_vectors) / kQword, 0) {}

Result<MsixTable> MsixTable::create(PciConfigSpace& config, const MsixLayout& layout) {
  // Validate before touching the capability list, so a failure leaves `config` unchanged.
  if (auto s = validate(config, layout); !s) return std::unexpected(std::move(s.error()));
  const uint16_t control = static_cast<uint16_t>(layout.num_vectors - 1);
  // Body after the 2-byte header: Message Control, Table Offset/BIR, PBA Offset/BIR.
  std::array<uint8_t, sizeof(MsixCapabilityRegs) - 2> body{};
  body[0] = static_cast<uint8_t>(control);
  body[1] = static_cast<uint8_t>(control >> 8);
  dword_to(body, 2, layout.table_offset | layout.table_bir);
  dword_to(body, 6, layout.pba_offset | layout.pba_bir);
  std::array<uint8_t, body.size()> mask{};
  mask[1] = kControlWritableHigh;
  auto off = config.add_capability(PciCapId::MsiX, body, mask);
  if (!off) return std::unexpected(std::move(off.error()).context("MSI-X"));
  return MsixTable(*off, layout);
}

Result<MsixTable> MsixTable::from_capability(PciConfigSpace& config, uint8_t cap_offset) {
  if (cap_offset < kPciCapabilityListStart || cap_offset % 4 != 0 ||
      size_t{cap_offset} + sizeof(MsixCapabilityRegs) > kPciConventionalConfigSize)
    return fail("MSI-X: capability offset out of range");
  if (config.peek8(cap_offset) != static_cast<uint8_t>(PciCapId::MsiX))
    return fail("MSI-X: no MSI-X capability at the given offset");
  const auto ctl_off =
      static_cast<uint16_t>(cap_offset + offsetof(MsixCapabilityRegs, message_control));
  const uint16_t control = config.peek16(ctl_off);
  const uint32_t table = config.peek32(cap_offset + offsetof(MsixCapabilityRegs, table_offset_bir));
  const uint32_t pba = config.peek32(cap_offset + offsetof(MsixCapabilityRegs, pba_offset_bir));
  const MsixLayout layout{
      static_cast<uint16_t>((control & msix::kTableSizeMask) + 1),
      static_cast<uint8_t>(table & msix::kBirMask),
      table & ~msix::kBirMask,
      static_cast<uint8_t>(pba & msix::kBirMask),
      pba & ~msix::kBirMask,
  };
  if (auto s = validate(config, layout); !s) return std::unexpected(std::move(s.error()));
  config.set_write_mask(ctl_off, std::array<uint8_t, 2>{0, kControlWritableHigh});
  MsixTable t(cap_offset, layout);
  t.enabled_ = (control & msix::kEnable) != 0;
  t.function_masked_ = (control & msix::kFunctionMask) != 0;
  return t;
}

bool MsixTable::bar_read(int bar, uint64_t offset, std::span<uint8_t> data) const {
  if (bar == layout_.table_bir && offset >= layout_.table_offset &&
      offset - layout_.table_offset < table_bytes()) {
    table_read(offset - layout_.table_offset, data);
    return true;
  }
  if (bar == layout_.pba_bir && offset >= layout_.pba_offset &&
      offset - layout_.pba_offset < pba_bytes()) {
    pba_read(offset - layout_.pba_offset, data);
    return true;
  }
  return false;
}

bool MsixTable::bar_write(int bar, uint64_t offset, std::span<const uint8_t> data) {
  if (bar == layout_.table_bir && offset >= layout_.table_offset &&
      offset - layout_.table_offset < table_bytes()) {
    table_write(offset - layout_.table_offset, data);
    return true;
  }
  // The PBA is read-only: writes are claimed and dropped.
  return bar == layout_.pba_bir && offset >= layout_.pba_offset &&
         offset - layout_.pba_offset < pba_bytes();
}

void MsixTable::config_written(const PciConfigSpace& config, uint16_t offset, size_t size) {
  const uint16_t ctl_off = cap_offset_ + offsetof(MsixCapabilityRegs, message_control);
  if (offset >= ctl_off + 2 || offset + size <= ctl_off) return;
  const uint16_t control = config.peek16(ctl_off);
  const bool enabled = (control & msix::kEnable) != 0;
  const bool function_masked = (control & msix::kFunctionMask) != 0;
  if (enabled == enabled_ && function_masked == function_masked_) return;
  enabled_ = enabled;
  function_masked_ = function_masked;
  fire(msix::kAllVectors);
}

uint32_t MsixTable::table_dword(uint64_t offset) const {
  const MsixTableEntry& e = table_[offset / sizeof(MsixTableEntry)];
  switch (offset % sizeof(MsixTableEntry) / kDword) {
    case 0:
      return e.message_address;
    case 1:
      return e.message_upper_address;
    case 2:
      return e.message_data;
    default:
      return e.vector_control;
  }
}

void MsixTable::set_table_dword(uint64_t offset, uint32_t v) {
  MsixTableEntry& e = table_[offset / sizeof(MsixTableEntry)];
  switch (offset % sizeof(MsixTableEntry) / kDword) {
    case 0:
      e.message_address = v;
      break;
    case 1:
      e.message_upper_address = v;
      break;
    case 2:
      e.message_data = v;
      break;
    default:
      // Only the Mask bit is implemented; the rest of Vector Control is reserved.
      e.vector_control = v & msix::kVectorControlMaskBit;
      break;
  }
}

void MsixTable::table_read(uint64_t offset, std::span<uint8_t> data) const {
  const size_t n = data.size();
  if ((n != kDword && n != kQword) || offset % n != 0) {
    std::fill(data.begin(), data.end(), 0xff);
    return;
  }
  for (size_t i = 0; i < n; i += kDword) dword_to(data, i, table_dword(offset + i));
}

void MsixTable::table_write(uint64_t offset, std::span<const uint8_t> data) {
  const size_t n = data.size();
  if ((n != kDword && n != kQword) || offset % n != 0) return;
  const uint64_t index = offset / sizeof(MsixTableEntry);
  const MsixTableEntry before = table_[index];
  for (size_t i = 0; i < n; i += kDword) set_table_dword(offset + i, dword_from(data, i));
  const MsixTableEntry& after = table_[index];
  if (before.message_address != after.message_address ||
      before.message_upper_address != after.message_upper_address ||
      before.message_data != after.message_data || before.vector_control != after.vector_control)
    fire(static_cast<uint16_t>(index));
}

void MsixTable::pba_read(uint64_t offset, std::span<uint8_t> data) const {
  const size_t n = data.size();
  if ((n != kDword && n != kQword) || offset % n != 0) {
    std::fill(data.begin(), data.end(), 0xff);
    return;
  }
  const uint64_t qword = pba_[offset / kQword];
  for (size_t i = 0; i < n; i += kDword)
    dword_to(data, i, static_cast<uint32_t>(qword >> (8 * ((offset + i) % kQword))));
}

MsixVector MsixTable::entry(uint16_t vector) const {
  if (vector >= layout_.num_vectors) return MsixVector{0, 0, true};
  const MsixTableEntry& e = table_[vector];
  return MsixVector{uint64_t{e.message_upper_address} << 32 | e.message_address, e.message_data,
                    (e.vector_control & msix::kVectorControlMaskBit) != 0};
}

bool MsixTable::vector_deliverable(uint16_t vector) const {
  return enabled_ && !function_masked_ && !entry(vector).masked;
}

void MsixTable::set_pending(uint16_t vector) {
  if (vector < layout_.num_vectors) pba_[vector / 64] |= uint64_t{1} << (vector % 64);
}

void MsixTable::clear_pending(uint16_t vector) {
  if (vector < layout_.num_vectors) pba_[vector / 64] &= ~(uint64_t{1} << (vector % 64));
}

bool MsixTable::pending(uint16_t vector) const {
  return vector < layout_.num_vectors && (pba_[vector / 64] >> (vector % 64) & 1) != 0;
}

std::vector<uint16_t> MsixTable::take_deliverable_pending() {
  std::vector<uint16_t> out;
  if (!enabled_ || function_masked_) return out;
  for (uint16_t v = 0; v < layout_.num_vectors; ++v) {
    if (pending(v) && vector_deliverable(v)) {
      clear_pending(v);
      out.push_back(v);
    }
  }
  return out;
}

}  // namespace iovirt
