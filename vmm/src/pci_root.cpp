#include "iovirt/vmm/pci_root.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <string>

#include "iovirt/core/hex.hpp"
#include "iovirt/core/log.hpp"

namespace iovirt {

namespace {

// CONFIG_ADDRESS (PCI 3.0 §3.2.2.3.2): 31 enable, 23:16 bus, 15:11 device, 10:8 function,
// 7:2 register. Bits 30:24 are reserved (AMD's extended register bits 27:24 are not decoded
// here: conf1 reaches the first 256 bytes) and bits 1:0 read as zero.
constexpr uint32_t kConfigAddressEnable = 1u << 31;
constexpr uint32_t kConfigAddressMask = kConfigAddressEnable | 0x00fffffc;

constexpr uint8_t config_bus(uint32_t a) {
  return static_cast<uint8_t>(a >> 16);
}
constexpr uint8_t config_device(uint32_t a) {
  return static_cast<uint8_t>((a >> 11) & 0x1f);
}
constexpr uint8_t config_function(uint32_t a) {
  return static_cast<uint8_t>((a >> 8) & 0x7);
}
constexpr uint16_t config_register(uint32_t a) {
  return static_cast<uint16_t>(a & 0xfc);
}

constexpr uint64_t kIoSpaceEnd = 0x10000;
constexpr uint64_t k4GiB = uint64_t{1} << 32;
// Memory BARs are placed at least page aligned so a passthrough BAR can become a memory slot.
constexpr uint64_t kMemBarMinAlign = 4096;

std::string bdf_name(uint8_t slot) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "00:%02x.0", slot);
  return buf;
}

void fill_ones(std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0xff);
}

uint32_t le32(std::span<const uint8_t> d) {
  return uint32_t{d[0]} | uint32_t{d[1]} << 8 | uint32_t{d[2]} << 16 | uint32_t{d[3]} << 24;
}

// Is [addr, addr + size) an address the function can decode? 0 means unassigned, and a range
// ending at the top of its address space is the all-ones pattern left by BAR sizing.
bool decodable(const PciBarInfo& bar, uint64_t addr) {
  if (addr == 0) return false;
  const uint64_t end = addr + bar.size;  // exclusive
  switch (bar.kind) {
    case PciBarKind::Io:
      return end > addr && end < kIoSpaceEnd;
    case PciBarKind::Mem32:
      return end > addr && end < k4GiB;
    case PciBarKind::Mem64:
      return end > addr;  // wraps to 0 for the sizing pattern
  }
  return false;
}

}  // namespace

PciHostBridge::PciHostBridge() {
  config_.set_vendor_id(kVendorId);
  config_.set_device_id(kDeviceId);
  config_.set_class_code(0x06, 0x00, 0x00);  // bridge device, host bridge
}

PciRoot::PciRoot(Bus& pio, Bus& mmio, const PciWindows& windows)
    : pio_(pio),
      mmio_(mmio),
      windows_(windows),
      io_{windows.io_base, windows.io_size, windows.io_base},
      mmio32_{windows.mmio32_base, windows.mmio32_size, windows.mmio32_base},
      mmio64_{windows.mmio64_base, windows.mmio64_size, windows.mmio64_base} {
  slots_[0].dev = &host_bridge_;
}

PciRoot::~PciRoot() {
  std::lock_guard lock(mu_);
  for (Slot& s : slots_) {
    if (!s.dev) continue;
    for (BarState& b : s.bars)
      if (b.mapped) (void)bus_for(b.kind).remove(*b.mapped);
  }
}

PciDevice* PciRoot::device(uint8_t slot) const {
  std::lock_guard lock(mu_);
  return slot < kNumSlots ? slots_[slot].dev : nullptr;
}

Status PciRoot::add_device(uint8_t slot, PciDevice& dev) {
  std::lock_guard lock(mu_);
  return add_device_locked(slot, dev);
}

Result<uint8_t> PciRoot::add_device(PciDevice& dev) {
  std::lock_guard lock(mu_);
  for (uint8_t slot = 1; slot < kNumSlots; ++slot) {
    if (slots_[slot].dev) continue;
    if (auto s = add_device_locked(slot, dev); !s) return std::unexpected(std::move(s.error()));
    return slot;
  }
  return fail("PCI: no free slot on bus 0 for " + std::string(dev.name()));
}

Status PciRoot::add_device_locked(uint8_t slot, PciDevice& dev) {
  const std::string what = "PCI " + bdf_name(slot) + " " + std::string(dev.name());
  if (slot == 0 || slot >= kNumSlots) return fail(what + ": slot must be 1..31");
  if (slots_[slot].dev)
    return fail(what + ": slot taken by " + std::string(slots_[slot].dev->name()));

  // Allocate on copies so a failure leaves the windows as they were.
  Allocator io = io_, mmio32 = mmio32_, mmio64 = mmio64_;
  std::array<std::optional<uint64_t>, kPciNumBars> addrs{};
  PciConfigSpace& cfg = dev.config();
  for (int i = 0; i < kPciNumBars; ++i) {
    auto bar = cfg.bar(i);
    if (!bar) continue;
    Allocator* a = &mmio32;
    uint64_t align = std::max(bar->size, kMemBarMinAlign);
    if (bar->kind == PciBarKind::Io) {
      a = &io;
      align = bar->size;
    } else if (bar->kind == PciBarKind::Mem64 && mmio64.size != 0) {
      a = &mmio64;
    }
    const uint64_t start = (a->next + align - 1) & ~(align - 1);
    const uint64_t end = a->base + a->size;
    if (start < a->next || start > end || bar->size > end - start)
      return fail(what + ": no room for BAR" + std::to_string(i) + " (" + hex(bar->size) +
                  " bytes) in its window");
    a->next = start + bar->size;
    addrs[i] = start;
  }
  io_ = io;
  mmio32_ = mmio32;
  mmio64_ = mmio64;

  Slot& s = slots_[slot];
  s.dev = &dev;
  for (int i = 0; i < kPciNumBars; ++i) {
    if (!addrs[i]) continue;
    s.bars[i] =
        BarState{std::make_unique<BarRange>(dev, i), cfg.bar(i)->kind, std::nullopt, std::nullopt};
    cfg.set_bar_address(i, *addrs[i]);
  }
  update_decoding(slot);
  return {};
}

void PciRoot::update_decoding(uint8_t slot) {
  Slot& s = slots_[slot];
  PciConfigSpace& cfg = s.dev->config();
  for (int i = 0; i < kPciNumBars; ++i) {
    BarState& b = s.bars[i];
    auto info = cfg.bar(i);
    if (!info || !b.range) continue;
    const bool enabled = info->kind == PciBarKind::Io ? cfg.io_enabled() : cfg.mem_enabled();
    const uint64_t addr = cfg.bar_address(i);
    std::optional<uint64_t> want;
    if (enabled && decodable(*info, addr)) want = addr;
    if (want == b.mapped) continue;

    Bus& bus = bus_for(info->kind);
    const std::optional<uint64_t> was = b.mapped;
    if (b.mapped && want) {
      // Bus::move keeps the old range on a collision; the BAR no longer decodes there, so drop it.
      if (bus.move(*b.mapped, *want)) {
        b.mapped = want;
      } else {
        (void)bus.remove(*b.mapped);
        b.mapped.reset();
      }
    } else if (b.mapped) {
      (void)bus.remove(*b.mapped);
      b.mapped.reset();
    } else if (bus.insert(*want, info->size, b.range.get())) {
      b.mapped = want;
    }
    if (want && b.mapped != want) {
      if (b.refused != want)
        log_error("PCI " + bdf_name(slot) + " " + std::string(s.dev->name()) + " BAR" +
                  std::to_string(i) + ": " + hex(*want) + "+" + hex(info->size) +
                  " collides with another range on the " + bus.name() + " bus; not decoded");
      b.refused = want;
    } else {
      b.refused.reset();
    }
    if (b.mapped != was) s.dev->bar_decode_changed(i, b.mapped);
  }
}

PciDevice* PciRoot::addressed_device(uint8_t* slot) const {
  const uint32_t a = config_address_;
  if ((a & kConfigAddressEnable) == 0) return nullptr;
  // Bus 0 only, function 0 only: other functions of a present slot are absent.
  if (config_bus(a) != 0 || config_function(a) != 0) return nullptr;
  *slot = config_device(a);
  return slots_[*slot].dev;
}

void PciRoot::config_data_read(uint64_t byte, std::span<uint8_t> data) {
  std::lock_guard lock(mu_);
  uint8_t slot = 0;
  PciDevice* dev = addressed_device(&slot);
  if (!dev) return fill_ones(data);  // master abort: no function claimed the cycle
  dev->config_read(static_cast<uint16_t>(config_register(config_address_) + byte), data);
}

void PciRoot::config_data_write(uint64_t byte, std::span<const uint8_t> data) {
  std::lock_guard lock(mu_);
  uint8_t slot = 0;
  PciDevice* dev = addressed_device(&slot);
  if (!dev) return;
  dev->config_write(static_cast<uint16_t>(config_register(config_address_) + byte), data);
  update_decoding(slot);
}

void PciRoot::Conf1::read(uint64_t offset, std::span<uint8_t> data) {
  const size_t n = data.size();
  if (offset == 0 && n == 4) {
    std::lock_guard lock(root_.mu_);
    const uint32_t a = root_.config_address_;
    for (size_t i = 0; i < 4; ++i) data[i] = static_cast<uint8_t>(a >> (8 * i));
    return;
  }
  const uint64_t byte = offset - (kConfigDataPort - kConfigAddressPort);
  // CONFIG_DATA: a byte, word or dword inside the dword, naturally aligned.
  if (offset >= 4 && (n == 1 || n == 2 || n == 4) && byte % n == 0 && byte + n <= 4)
    return root_.config_data_read(byte, data);
  fill_ones(data);  // partial CONFIG_ADDRESS accesses are not conf1 cycles
}

void PciRoot::Conf1::write(uint64_t offset, std::span<const uint8_t> data) {
  const size_t n = data.size();
  if (offset == 0 && n == 4) {
    std::lock_guard lock(root_.mu_);
    root_.config_address_ = le32(data) & kConfigAddressMask;
    return;
  }
  const uint64_t byte = offset - (kConfigDataPort - kConfigAddressPort);
  if (offset >= 4 && (n == 1 || n == 2 || n == 4) && byte % n == 0 && byte + n <= 4)
    root_.config_data_write(byte, data);
}

}  // namespace iovirt
