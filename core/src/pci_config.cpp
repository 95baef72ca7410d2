#include "iovirt/core/pci_config.hpp"

#include <algorithm>
#include <bitset>
#include <cstring>
#include <string>

namespace iovirt {

namespace {

constexpr uint32_t kBarIoSpace = 0x1;          // bit 0: I/O space indicator
constexpr uint32_t kBarMemType64 = 0x2 << 1;   // bits 2:1 = 10b: 64-bit
constexpr uint32_t kBarMemPrefetchable = 0x8;  // bit 3
constexpr uint32_t kBarIoAddressMask = ~uint32_t{0x3};
constexpr uint64_t kBarMemAddressMask = ~uint64_t{0xf};

constexpr uint64_t kIoBarMinSize = 4;
constexpr uint64_t kIoBarMaxSize = 0x10000;
constexpr uint64_t kMemBarMinSize = 16;
constexpr uint64_t kMem32BarMaxSize = uint64_t{1} << 31;
constexpr uint64_t kMem64BarMaxSize = uint64_t{1} << 63;

constexpr uint16_t kCommandWritable = pci_command::kBusMaster | pci_command::kParityErrorResponse |
                                      pci_command::kSerrEnable | pci_command::kInterruptDisable;

// Capability slots between 0x40 and 0x100: a list longer than this has a loop.
constexpr int kMaxCapabilities = (kPciConventionalConfigSize - kPciCapabilityListStart) / 4;

bool access_ok(uint16_t offset, size_t size) {
  if (size != 1 && size != 2 && size != 4) return false;
  if (offset % size != 0) return false;
  return size_t{offset} + size <= kPciConfigSpaceSize;
}

std::string hex8(unsigned v) {
  static const char* digits = "0123456789abcdef";
  return std::string("0x") + digits[(v >> 4) & 0xf] + digits[v & 0xf];
}

void put_le(std::span<uint8_t> bytes, size_t offset, uint64_t v, size_t width) {
  for (size_t i = 0; i < width && offset + i < bytes.size(); ++i)
    bytes[offset + i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace

Result<std::vector<PciCapabilityRef>> walk_pci_capabilities(std::span<const uint8_t> config) {
  const size_t limit = std::min(config.size(), kPciConventionalConfigSize);
  if (limit < kPciCapabilityListStart)
    return fail("PCI capability list: config space shorter than the type-0 header");
  const uint16_t status =
      static_cast<uint16_t>(config[pci_offset(PciReg16::StatusRegister)] |
                            config[pci_offset(PciReg16::StatusRegister) + 1] << 8);
  std::vector<PciCapabilityRef> caps;
  if ((status & pci_status::kCapabilitiesList) == 0) return caps;

  std::bitset<kPciConventionalConfigSize / 4> seen;
  uint8_t ptr = config[pci_offset(PciReg8::CapabilitiesPointer)];
  for (int n = 0; ptr != 0; ++n) {
    if (n >= kMaxCapabilities)
      return fail("PCI capability list: more than " + std::to_string(kMaxCapabilities) +
                  " entries");
    if (ptr < kPciCapabilityListStart)
      return fail("PCI capability list: pointer " + hex8(ptr) + " inside the header");
    if (ptr % 4 != 0)
      return fail("PCI capability list: pointer " + hex8(ptr) + " not dword-aligned");
    if (size_t{ptr} + 2 > limit)
      return fail("PCI capability list: pointer " + hex8(ptr) + " past the end of config space");
    if (seen.test(ptr / 4)) return fail("PCI capability list: loop back to " + hex8(ptr));
    seen.set(ptr / 4);
    const uint8_t id = config[ptr];
    if (id == 0xff) return fail("PCI capability list: ID 0xff at " + hex8(ptr));
    caps.push_back({id, ptr});
    ptr = config[ptr + 1];
  }
  return caps;
}

Result<std::optional<uint8_t>> find_pci_capability(std::span<const uint8_t> config, uint8_t id) {
  auto caps = walk_pci_capabilities(config);
  if (!caps) return std::unexpected(std::move(caps.error()));
  for (const auto& c : *caps)
    if (c.id == id) return c.offset;
  return std::nullopt;
}

PciConfigSpace::PciConfigSpace() {
  // Header type 0, single function: already zero. Writable bits of the header:
  set_write_mask(pci_offset(PciReg16::Command),
                 std::array<uint8_t, 2>{kCommandWritable & 0xff, kCommandWritable >> 8});
  set_rw1c_mask(pci_offset(PciReg16::StatusRegister),
                std::array<uint8_t, 2>{pci_status::kRw1cMask & 0xff, pci_status::kRw1cMask >> 8});
  write_mask_[pci_offset(PciReg8::CacheLineSize)] = 0xff;
  write_mask_[pci_offset(PciReg8::InterruptLine)] = 0xff;
}

void PciConfigSpace::set_subsystem(uint16_t vendor_id, uint16_t id) {
  set(PciReg16::SubsystemVendorId, vendor_id);
  set(PciReg16::SubsystemId, id);
}

void PciConfigSpace::set_class_code(uint8_t base_class, uint8_t sub_class, uint8_t prog_if) {
  set(PciReg8::BaseClass, base_class);
  set(PciReg8::SubClass, sub_class);
  set(PciReg8::ProgIf, prog_if);
}

void PciConfigSpace::set_interrupt_status(bool asserted) {
  uint16_t s = status();
  s = asserted ? (s | pci_status::kInterruptStatus) : (s & ~pci_status::kInterruptStatus);
  set(PciReg16::StatusRegister, s);
}

Status PciConfigSpace::add_bar(int index, uint64_t size, PciBarKind kind, bool prefetchable) {
  const std::string what = "PCI BAR" + std::to_string(index);
  const int slots = kind == PciBarKind::Mem64 ? 2 : 1;
  if (index < 0 || index + slots > kPciNumBars) return fail(what + ": no such BAR slot");
  for (int i = index; i < index + slots; ++i)
    if (bars_[i].used || bars_[i].upper)
      return fail(what + ": slot " + std::to_string(i) + " taken");
  if (!std::has_single_bit(size)) return fail(what + ": size is not a power of two");
  switch (kind) {
    case PciBarKind::Io:
      if (prefetchable) return fail(what + ": an I/O BAR cannot be prefetchable");
      if (size < kIoBarMinSize || size > kIoBarMaxSize)
        return fail(what + ": I/O size out of range");
      break;
    case PciBarKind::Mem32:
      if (size < kMemBarMinSize || size > kMem32BarMaxSize)
        return fail(what + ": 32-bit memory size out of range");
      break;
    case PciBarKind::Mem64:
      if (size < kMemBarMinSize || size > kMem64BarMaxSize)
        return fail(what + ": 64-bit memory size out of range");
      break;
  }

  bars_[index] = BarSlot{size, kind, prefetchable, true, false};
  const uint16_t off = pci_bar_offset(index);
  std::array<uint8_t, 8> mask{};
  if (kind == PciBarKind::Io) {
    poke32(off, kBarIoSpace);
    put_le(mask, 0, ~(size - 1) & kBarIoAddressMask, 4);
    set_write_mask(off, std::span(mask).first(4));
    write_mask_[pci_offset(PciReg16::Command)] |= pci_command::kIoSpace;
  } else {
    uint32_t flags = prefetchable ? kBarMemPrefetchable : 0;
    if (kind == PciBarKind::Mem64) flags |= kBarMemType64;
    poke32(off, flags);
    put_le(mask, 0, ~(size - 1) & kBarMemAddressMask, 8);
    if (kind == PciBarKind::Mem64) {
      set_write_mask(off, mask);
      bars_[index + 1] = BarSlot{0, kind, prefetchable, false, true};
    } else {
      set_write_mask(off, std::span(mask).first(4));
    }
    write_mask_[pci_offset(PciReg16::Command)] |= pci_command::kMemorySpace;
  }
  return {};
}

std::optional<PciBarInfo> PciConfigSpace::bar(int index) const {
  if (index < 0 || index >= kPciNumBars || !bars_[index].used) return std::nullopt;
  const BarSlot& b = bars_[index];
  return PciBarInfo{b.size, b.kind, b.prefetchable};
}

uint64_t PciConfigSpace::bar_address(int index) const {
  if (index < 0 || index >= kPciNumBars || !bars_[index].used) return 0;
  const uint16_t off = pci_bar_offset(index);
  switch (bars_[index].kind) {
    case PciBarKind::Io:
      return peek32(off) & kBarIoAddressMask;
    case PciBarKind::Mem32:
      return peek32(off) & kBarMemAddressMask;
    case PciBarKind::Mem64:
      return load(off, 8) & kBarMemAddressMask;
  }
  return 0;
}

void PciConfigSpace::set_bar_address(int index, uint64_t addr) {
  if (index < 0 || index >= kPciNumBars || !bars_[index].used) return;
  const BarAddresses before = bar_addresses();
  const BarSlot& b = bars_[index];
  const uint16_t off = pci_bar_offset(index);
  const uint64_t addr_bits = addr & ~(b.size - 1);
  if (b.kind == PciBarKind::Io) {
    poke32(off, static_cast<uint32_t>(addr_bits & kBarIoAddressMask) | kBarIoSpace);
  } else {
    const uint32_t flags = peek32(off) & ~static_cast<uint32_t>(kBarMemAddressMask);
    poke32(off, static_cast<uint32_t>(addr_bits & kBarMemAddressMask) | flags);
    if (b.kind == PciBarKind::Mem64) store(off + 4u, 4, addr_bits >> 32);
  }
  notify_bar_changes(before);
}

PciConfigSpace::BarAddresses PciConfigSpace::bar_addresses() const {
  BarAddresses a{};
  for (int i = 0; i < kPciNumBars; ++i) a[i] = bar_address(i);
  return a;
}

void PciConfigSpace::notify_bar_changes(const BarAddresses& before) const {
  if (!bar_hook_) return;
  for (int i = 0; i < kPciNumBars; ++i) {
    if (!bars_[i].used) continue;
    const uint64_t now = bar_address(i);
    if (now != before[i]) bar_hook_(i, before[i], now);
  }
}

Result<uint8_t> PciConfigSpace::add_capability(uint8_t id, std::span<const uint8_t> body,
                                               std::span<const uint8_t> write_mask) {
  const std::string what = "PCI capability " + hex8(id);
  if (!write_mask.empty() && write_mask.size() != body.size())
    return fail(what + ": write mask and body differ in length");
  const size_t len = (2 + body.size() + 3) & ~size_t{3};
  if (next_cap_ + len > kPciConventionalConfigSize)
    return fail(what + ": no room in the 256-byte config space");

  const auto off = static_cast<uint8_t>(next_cap_);
  poke8(off, id);
  store(off + 1u, 1, 0);
  std::copy(body.begin(), body.end(), bytes_.begin() + off + 2);
  set_write_mask(off + 2, write_mask);
  if (last_cap_ == 0) {
    set(PciReg8::CapabilitiesPointer, off);
  } else {
    store(last_cap_ + 1u, 1, off);
  }
  set(PciReg16::StatusRegister, status() | pci_status::kCapabilitiesList);
  last_cap_ = off;
  next_cap_ = static_cast<uint16_t>(next_cap_ + len);
  return off;
}

std::optional<uint8_t> PciConfigSpace::find_capability(uint8_t id) const {
  auto r = find_pci_capability(bytes_, id);
  if (!r) return std::nullopt;
  return *r;
}

void PciConfigSpace::read(uint16_t offset, std::span<uint8_t> data) const {
  if (!access_ok(offset, data.size())) {
    std::fill(data.begin(), data.end(), 0xff);
    return;
  }
  std::copy_n(bytes_.begin() + offset, data.size(), data.begin());
}

void PciConfigSpace::write(uint16_t offset, std::span<const uint8_t> data) {
  if (!access_ok(offset, data.size())) return;
  const BarAddresses before = bar_addresses();
  for (size_t i = 0; i < data.size(); ++i) {
    const size_t o = offset + i;
    const uint8_t wm = write_mask_[o];
    uint8_t v = static_cast<uint8_t>((bytes_[o] & ~wm) | (data[i] & wm));
    v = static_cast<uint8_t>(v & ~(data[i] & rw1c_mask_[o]));
    bytes_[o] = v;
  }
  const size_t bars_begin = pci_bar_offset(0);
  const size_t bars_end = pci_bar_offset(kPciNumBars);
  if (offset < bars_end && offset + data.size() > bars_begin) notify_bar_changes(before);
}

uint64_t PciConfigSpace::load(size_t offset, size_t width) const {
  uint64_t v = 0;
  for (size_t i = 0; i < width; ++i)
    if (offset + i < kPciConfigSpaceSize) v |= uint64_t{bytes_[offset + i]} << (8 * i);
  return v;
}

void PciConfigSpace::store(size_t offset, size_t width, uint64_t v) {
  put_le(bytes_, offset, v, width);
}

uint8_t PciConfigSpace::peek8(uint16_t offset) const {
  return static_cast<uint8_t>(load(offset, 1));
}
uint16_t PciConfigSpace::peek16(uint16_t offset) const {
  return static_cast<uint16_t>(load(offset, 2));
}
uint32_t PciConfigSpace::peek32(uint16_t offset) const {
  return static_cast<uint32_t>(load(offset, 4));
}
void PciConfigSpace::poke8(uint16_t offset, uint8_t v) {
  store(offset, 1, v);
}
void PciConfigSpace::poke16(uint16_t offset, uint16_t v) {
  store(offset, 2, v);
}
void PciConfigSpace::poke32(uint16_t offset, uint32_t v) {
  store(offset, 4, v);
}

void PciConfigSpace::set_write_mask(uint16_t offset, std::span<const uint8_t> mask) {
  for (size_t i = 0; i < mask.size() && offset + i < kPciConfigSpaceSize; ++i)
    write_mask_[offset + i] = mask[i];
}

void PciConfigSpace::set_rw1c_mask(uint16_t offset, std::span<const uint8_t> mask) {
  for (size_t i = 0; i < mask.size() && offset + i < kPciConfigSpaceSize; ++i)
    rw1c_mask_[offset + i] = mask[i];
}

}  // namespace iovirt
