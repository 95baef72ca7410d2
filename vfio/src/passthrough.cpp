#include "iovirt/vfio/passthrough.hpp"

#include <linux/vfio.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <initializer_list>
#include <utility>

#include "iovirt/core/hex.hpp"
#include "iovirt/core/log.hpp"

namespace iovirt::vfio {
namespace {

constexpr uint32_t kConfigRegion = VFIO_PCI_CONFIG_REGION_INDEX;
constexpr uint32_t kIntxIrq = VFIO_PCI_INTX_IRQ_INDEX;
constexpr uint32_t kMsiIrq = VFIO_PCI_MSI_IRQ_INDEX;
constexpr uint32_t kMsixIrq = VFIO_PCI_MSIX_IRQ_INDEX;

// The Command bits the real function must see: decode enables (the mmap'ed BARs only answer
// when the function decodes them), Bus Master (DMA, and MSI/MSI-X writes are DMA) and Interrupt
// Disable. Parity/SERR stay emulated: error signalling is the host's.
constexpr uint16_t kForwardedCommand = pci_command::kIoSpace | pci_command::kMemorySpace |
                                       pci_command::kBusMaster | pci_command::kInterruptDisable;

// Capability lengths (PCI 3.0 §6.8.1, §6.8.2; PCI PM 1.2 §3.2; PCIe 4.0 §7.5.3).
constexpr uint8_t kMsixCapLen = 12;
constexpr uint8_t kPmCapLen = 8;
constexpr uint8_t kPcieV1CapLen = 0x14;  // through Link Status: all an endpoint has in v1
constexpr uint8_t kPcieV2CapLen = 0x3c;
// PCI Express capability registers (offsets from the capability).
constexpr uint8_t kPcieFlags = 0x02;
constexpr uint8_t kPcieDevCtl = 0x08;
constexpr uint8_t kPcieDevSta = 0x0a;
constexpr uint8_t kPcieLnkCtl = 0x10;
// Power Management registers.
constexpr uint8_t kPmPmc = 0x02;
constexpr uint8_t kPmPmcsr = 0x04;
constexpr uint16_t kPmcD1D2PmeSupport = 0xfe00;  // D1/D2 Support, PME Support
constexpr uint16_t kPmcsrNoSoftReset = 1u << 3;

std::string cat(std::initializer_list<std::string_view> parts) {
  std::string s;
  for (auto p : parts) s += p;
  return s;
}

uint16_t load16(std::span<const uint8_t> b, size_t at) {
  return static_cast<uint16_t>(b[at] | b[at + 1] << 8);
}
uint32_t load32(std::span<const uint8_t> b, size_t at) {
  return uint32_t{b[at]} | uint32_t{b[at + 1]} << 8 | uint32_t{b[at + 2]} << 16 |
         uint32_t{b[at + 3]} << 24;
}

uint64_t page_size() {
  static const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return page;
}
uint64_t align_down(uint64_t v, uint64_t a) {
  return v & ~(a - 1);
}
uint64_t align_up(uint64_t v, uint64_t a) {
  return (v + a - 1) & ~(a - 1);
}

bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
  return a < b + blen && b < a + alen;
}

const char* cap_name(uint8_t id) {
  switch (static_cast<PciCapId>(id)) {
    case PciCapId::PowerManagement: return "Power Management";
    case PciCapId::Msi: return "MSI";
    case PciCapId::VendorSpecific: return "vendor-specific";
    case PciCapId::PciExpress: return "PCI Express";
    case PciCapId::MsiX: return "MSI-X";
  }
  return "other";
}

uint8_t msi_cap_len(uint16_t control) {
  uint8_t len = (control & msi::k64Bit) ? 14 : 10;
  if (control & msi::kPerVectorMasking) len = static_cast<uint8_t>(len + 10);  // mask, pending
  return len;
}

}  // namespace

Result<std::unique_ptr<PassthroughDevice>> PassthroughDevice::create(
    DeviceTransport& transport, MemoryMapper& mapper, GsiRouter& router, IrqChip& chip,
    MetricsRegistry& metrics, std::string name) {
  std::unique_ptr<PassthroughDevice> d(
      new PassthroughDevice(transport, mapper, router, chip, metrics, std::move(name)));
  if (auto s = d->init(); !s) {
    // Nothing was placed in the guest yet; drop the mappings and leave the function reset.
    d->detached_ = true;
    return std::unexpected(std::move(s.error()).context("passthrough " + d->name_));
  }
  return d;
}

PassthroughDevice::PassthroughDevice(DeviceTransport& transport, MemoryMapper& mapper,
                                     GsiRouter& router, IrqChip& chip, MetricsRegistry& metrics,
                                     std::string name)
    : transport_(transport),
      mapper_(mapper),
      router_(router),
      chip_(chip),
      metrics_(metrics),
      name_(std::move(name)) {}

PassthroughDevice::~PassthroughDevice() {
  detach();
}

std::string PassthroughDevice::bar_name(int bar) const {
  std::string s = name_;
  s += " BAR";
  s += std::to_string(bar);
  return s;
}

Status PassthroughDevice::init() {
  const Labels labels{{"device", name_}};
  trapped_accesses_ = &metrics_.counter("iovirt_vfio_trapped_bar_accesses_total",
                                        "BAR accesses that exited to iovirt (not mmap'ed)", labels);
  region_errors_ = &metrics_.counter("iovirt_vfio_region_errors_total",
                                     "Region reads/writes the device transport refused", labels);
  irq_errors_ = &metrics_.counter("iovirt_vfio_irq_errors_total",
                                  "MSI/MSI-X setup steps the transport or KVM refused", labels);
  mapped_bytes_ = &metrics_.gauge("iovirt_vfio_bar_mapped_bytes",
                                  "BAR bytes currently mapped into the guest as memory slots",
                                  labels);
  msi_vectors_gauge_ =
      &metrics_.gauge("iovirt_vfio_msi_vectors", "MSI vectors enabled by the guest", labels);

  auto info = transport_.device_info();
  if (!info) return std::unexpected(std::move(info.error()).context("device info"));
  resettable_ = info->resettable();
  // Start from a clean function: whatever the previous owner left (DMA, enabled vectors) stops.
  if (resettable_) {
    if (auto s = transport_.reset(); !s)
      log_warn(cat({name_, ": reset at attach failed (", s.error().message(),
                    "); continuing with the device as the host driver left it"}));
  }

  auto cfg = transport_.region_info(kConfigRegion);
  if (!cfg) return std::unexpected(std::move(cfg.error()).context("config region info"));
  if (cfg->size < kPciCapabilityListStart)
    return fail(cat({"config region of ", std::to_string(cfg->size),
                     " bytes (at least 64 needed); is this a PCI function?"}),
                EINVAL);
  // The conventional 256 bytes only: every extended capability is hidden (see the header), so
  // the guest view of 0x100-0xfff is all zeros, an empty extended list (PCIe 4.0 §7.6.3).
  std::array<uint8_t, kPciConventionalConfigSize> real{};
  const size_t n = static_cast<size_t>(std::min<uint64_t>(cfg->size, real.size()));
  if (auto s = transport_.region_read(kConfigRegion, 0, std::span(real).first(n)); !s)
    return std::unexpected(std::move(s.error()).context("config space read"));

  const uint16_t vendor = load16(real, pci_offset(PciReg16::VendorId));
  if (vendor == 0xffff || vendor == 0)
    return fail("vendor ID " + hex(vendor) + ": the function is absent or not responding", ENODEV);
  const uint8_t header = real[pci_offset(PciReg8::HeaderType)] & 0x7f;
  if (header != 0)
    return fail("header type " + std::to_string(header) +
                    ": only type-0 (endpoint) functions can be passed through",
                EINVAL);
  config_.set_vendor_id(vendor);
  config_.set_device_id(load16(real, pci_offset(PciReg16::DeviceId)));
  config_.set_class_code(real[pci_offset(PciReg8::BaseClass)], real[pci_offset(PciReg8::SubClass)],
                         real[pci_offset(PciReg8::ProgIf)]);
  config_.set_revision_id(real[pci_offset(PciReg8::RevisionId)]);
  config_.set_subsystem(load16(real, pci_offset(PciReg16::SubsystemVendorId)),
                        load16(real, pci_offset(PciReg16::SubsystemId)));
  // INTx is offered only once the VMM wires it to a GSI (set_intx_gsi); until then the guest
  // sees pin 0 and its driver uses MSI or MSI-X. The real Interrupt Line is the host's.
  config_.set_interrupt_pin(0);
  if (auto intx = transport_.irq_info(kIntxIrq); intx && intx->count == 1) {
    const uint8_t pin = real[pci_offset(PciReg8::InterruptPin)];
    if (pin >= 1 && pin <= 4)
      intx_pin_ = pin;
    else if (pin != 0)
      log_warn(cat({name_, ": Interrupt Pin ", hex(pin), " is not INTA#..INTD#; INTx not offered"}));
  }

  if (auto s = build_bars(real); !s) return s;
  build_capabilities(real);
  if (msix_table_) {
    auto m = MsixInterrupts::create(*msix_table_, router_, chip_, metrics_, name_);
    if (!m) return std::unexpected(std::move(m.error()).context("MSI-X"));
    msix_ = std::move(*m);
    for (uint16_t v = 0; v < msix_table_->num_vectors(); ++v)
      msix_table_writes_.push_back(&metrics_.counter(
          "iovirt_vfio_msix_table_writes_total", "Guest writes to an MSI-X table entry",
          {{"device", name_}, {"vector", std::to_string(v)}}));
  }
  map_bar_memory();
  return {};
}

Status PassthroughDevice::build_bars(std::span<const uint8_t> real) {
  for (int i = 0; i < kPciNumBars; ++i) {
    const uint32_t raw = load32(real, pci_bar_offset(i));
    const bool io = (raw & 1) != 0;
    const bool is64 = !io && ((raw >> 1) & 3) == 2;
    const bool prefetchable = !io && (raw & 8) != 0;
    const int next = is64 ? i + 1 : i;  // a 64-bit BAR's upper slot is never a BAR of its own
    auto region = transport_.region_info(static_cast<uint32_t>(i));
    if (!region) {
      log_warn(cat({bar_name(i), ": region info: ", region.error().message(), "; BAR hidden"}));
      i = next;
      continue;
    }
    const uint64_t size = region->size;
    if (size == 0) {
      i = next;
      continue;
    }
    if (!std::has_single_bit(size) || (is64 && i == kPciNumBars - 1)) {
      log_warn(cat({bar_name(i), ": size ", hex(size), is64 ? " (64-bit in the last slot)" : "",
                    " is not a valid BAR; hidden"}));
      i = next;
      continue;
    }
    const PciBarKind kind = io ? PciBarKind::Io : is64 ? PciBarKind::Mem64 : PciBarKind::Mem32;
    if (auto s = config_.add_bar(i, size, kind, prefetchable); !s) {
      log_warn(cat({bar_name(i), ": ", s.error().message(), "; hidden"}));
      i = next;
      continue;
    }
    Bar& b = bars_[static_cast<size_t>(i)];
    b.present = true;
    b.kind = kind;
    b.size = size;
    if (region->mappable() && !io) b.mmap_areas = region->mmap_areas;
    i = next;
  }
  return {};
}

void PassthroughDevice::build_capabilities(std::span<const uint8_t> real) {
  auto walk = walk_pci_capabilities(real);
  if (!walk) {
    log_warn(cat({name_, ": the device's capability list is malformed (", walk.error().message(),
                  "); hiding every capability"}));
    return;
  }
  struct Kept {
    uint8_t id;
    uint8_t offset;
    uint8_t len;
  };
  std::vector<Kept> kept;
  std::array<bool, kPciConventionalConfigSize> used{};
  auto irq_count = [&](uint32_t index) -> uint32_t {
    auto irq = transport_.irq_info(index);
    return irq ? irq->count : 0;
  };

  for (const PciCapabilityRef& cap : *walk) {
    const uint8_t off = cap.offset;
    uint8_t len = 0;
    switch (static_cast<PciCapId>(cap.id)) {
      case PciCapId::MsiX: len = kMsixCapLen; break;
      case PciCapId::PowerManagement: len = kPmCapLen; break;
      case PciCapId::Msi:
        len = msi_cap_len(load16(real, size_t{off} + 2));
        break;
      case PciCapId::PciExpress:
        len = (load16(real, size_t{off} + kPcieFlags) & 0xf) >= 2 ? kPcieV2CapLen : kPcieV1CapLen;
        break;
      default:
        log_info(cat({name_, ": hiding capability ", hex(cap.id), " (", cap_name(cap.id), ") at ",
                      hex(off)}));
        continue;
    }
    std::string why;
    if (size_t{off} + len > real.size())
      why = "runs past the end of config space";
    else if (std::any_of(used.begin() + off, used.begin() + off + len, [](bool u) { return u; }))
      why = "overlaps another capability";
    else if (std::any_of(kept.begin(), kept.end(), [&](const Kept& k) { return k.id == cap.id; }))
      why = "is a duplicate";
    else if (cap.id == static_cast<uint8_t>(PciCapId::Msi) && irq_count(kMsiIrq) == 0)
      why = "has no MSI interrupt behind it in the transport";
    else if (cap.id == static_cast<uint8_t>(PciCapId::MsiX) && irq_count(kMsixIrq) == 0)
      why = "has no MSI-X interrupts behind it in the transport";
    if (!why.empty()) {
      log_warn(cat({name_, ": ", cap_name(cap.id), " capability at ", hex(off), " ", why,
                    "; hidden"}));
      continue;
    }
    std::fill(used.begin() + off, used.begin() + off + len, true);
    for (uint8_t j = 0; j < len; ++j)
      config_.poke8(static_cast<uint16_t>(off + j), real[size_t{off} + j]);
    kept.push_back({cap.id, off, len});
  }

  // Per-capability virtualization. Capabilities that fail here are unlinked below.
  for (auto it = kept.begin(); it != kept.end();) {
    const auto off = static_cast<uint16_t>(it->offset);
    bool keep = true;
    switch (static_cast<PciCapId>(it->id)) {
      case PciCapId::MsiX: {
        // Start disabled and unmasked, and never offer more vectors than the transport has.
        uint16_t ctl = config_.peek16(static_cast<uint16_t>(off + 2));
        const uint32_t have = irq_count(kMsixIrq);
        uint16_t size = static_cast<uint16_t>((ctl & msix::kTableSizeMask) + 1);
        if (have < size) size = static_cast<uint16_t>(have);
        ctl = static_cast<uint16_t>(size - 1);
        config_.poke16(static_cast<uint16_t>(off + 2), ctl);
        auto table = MsixTable::from_capability(config_, it->offset);
        if (!table) {
          log_warn(cat({name_, ": MSI-X capability at ", hex(off), ": ", table.error().message(),
                        "; hidden"}));
          keep = false;
        } else {
          msix_table_.emplace(std::move(*table));
        }
        break;
      }
      case PciCapId::Msi: {
        const uint16_t ctl = config_.peek16(static_cast<uint16_t>(off + 2));
        MsiCap c;
        c.offset = it->offset;
        c.is64 = (ctl & msi::k64Bit) != 0;
        c.maskable = (ctl & msi::kPerVectorMasking) != 0;
        unsigned mmc = std::min(5u, static_cast<unsigned>((ctl & msi::kMultipleMessageCapableMask) >> 1));
        // VFIO's MSI count is what the host can allocate; keep a power of two within it.
        const uint32_t have = irq_count(kMsiIrq);
        while (mmc > 0 && (1u << mmc) > have) --mmc;
        c.max_vectors = 1u << mmc;
        // Keep only what is emulated: MMC, 64-bit, per-vector masking. Enable, MME and the
        // extended-message-data bits read 0; address, data, mask and pending start at 0.
        config_.poke16(static_cast<uint16_t>(off + 2),
                       static_cast<uint16_t>((mmc << 1) |
                                             (ctl & (msi::k64Bit | msi::kPerVectorMasking))));
        for (uint16_t j = 4; j < it->len; ++j) config_.poke8(static_cast<uint16_t>(off + j), 0);
        const std::array<uint8_t, 2> ctl_mask{msi::kEnable | msi::kMultipleMessageEnableMask, 0};
        config_.set_write_mask(static_cast<uint16_t>(off + 2), ctl_mask);
        // Message Address is dword aligned (bits 1:0 reserved).
        config_.set_write_mask(static_cast<uint16_t>(off + 4),
                               std::array<uint8_t, 4>{0xfc, 0xff, 0xff, 0xff});
        const auto data_off = static_cast<uint16_t>(off + (c.is64 ? 12 : 8));
        if (c.is64)
          config_.set_write_mask(static_cast<uint16_t>(off + 8),
                                 std::array<uint8_t, 4>{0xff, 0xff, 0xff, 0xff});
        config_.set_write_mask(data_off, std::array<uint8_t, 2>{0xff, 0xff});
        if (c.maskable) {
          const uint32_t bits = c.max_vectors == 32 ? ~uint32_t{0} : (1u << c.max_vectors) - 1;
          config_.set_write_mask(static_cast<uint16_t>(data_off + 4),
                                 std::array<uint8_t, 4>{static_cast<uint8_t>(bits),
                                                        static_cast<uint8_t>(bits >> 8),
                                                        static_cast<uint8_t>(bits >> 16),
                                                        static_cast<uint8_t>(bits >> 24)});
        }
        msi_cap_ = c;
        break;
      }
      case PciCapId::PciExpress: {
        // The shadow policy (header comment): Device Control minus Initiate FLR (bit 15) and Link
        // Control are writable in the copy only; Device Status' error bits stay host-side.
        config_.set_write_mask(static_cast<uint16_t>(off + kPcieDevCtl),
                               std::array<uint8_t, 2>{0xff, 0x7f});
        config_.poke16(static_cast<uint16_t>(off + kPcieDevCtl),
                       config_.peek16(static_cast<uint16_t>(off + kPcieDevCtl)) & 0x7fff);
        config_.poke16(static_cast<uint16_t>(off + kPcieDevSta), 0);
        config_.set_write_mask(static_cast<uint16_t>(off + kPcieLnkCtl),
                               std::array<uint8_t, 2>{0xff, 0xff});
        break;
      }
      case PciCapId::PowerManagement: {
        // Always D0, read-only: power transitions of the real function are the host's (a D3
        // round trip can reset it under the guest's feet), and PME is not delivered, so neither
        // D1/D2 nor PME support is advertised.
        const auto pmc = static_cast<uint16_t>(off + kPmPmc);
        config_.poke16(pmc, static_cast<uint16_t>(config_.peek16(pmc) & ~kPmcD1D2PmeSupport));
        const auto pmcsr = static_cast<uint16_t>(off + kPmPmcsr);
        config_.poke16(pmcsr, config_.peek16(pmcsr) & kPmcsrNoSoftReset);
        config_.poke16(static_cast<uint16_t>(off + 6), 0);
        break;
      }
      default: break;
    }
    if (keep) {
      ++it;
    } else {
      for (uint8_t j = 0; j < it->len; ++j) config_.poke8(static_cast<uint16_t>(off + j), 0);
      it = kept.erase(it);
    }
  }

  // Relink over the hidden ones, keeping the device's order and offsets.
  config_.set(PciReg8::CapabilitiesPointer, kept.empty() ? 0 : kept.front().offset);
  for (size_t i = 0; i < kept.size(); ++i)
    config_.poke8(static_cast<uint16_t>(kept[i].offset + 1),
                  i + 1 < kept.size() ? kept[i + 1].offset : 0);
  uint16_t status = config_.status();
  status = kept.empty() ? static_cast<uint16_t>(status & ~pci_status::kCapabilitiesList)
                        : static_cast<uint16_t>(status | pci_status::kCapabilitiesList);
  config_.set(PciReg16::StatusRegister, status);
  for (const Kept& k : kept) caps_.push_back({k.id, k.offset});
}

void PassthroughDevice::map_bar_memory() {
  const uint64_t page = page_size();
  for (int i = 0; i < kPciNumBars; ++i) {
    Bar& b = bars_[static_cast<size_t>(i)];
    if (!b.present || b.kind == PciBarKind::Io || b.mmap_areas.empty()) continue;
    // The pages holding the MSI-X table and PBA are never mapped: they must trap.
    std::vector<std::pair<uint64_t, uint64_t>> holes;
    if (msix_table_) {
      const MsixLayout& l = msix_table_->layout();
      if (l.table_bir == i)
        holes.emplace_back(align_down(l.table_offset, page),
                           align_up(l.table_offset + uint64_t{l.num_vectors} * 16, page));
      if (l.pba_bir == i)
        holes.emplace_back(align_down(l.pba_offset, page),
                           align_up(l.pba_offset + (uint64_t{l.num_vectors} + 63) / 64 * 8, page));
      std::sort(holes.begin(), holes.end());
    }
    for (const MmapArea& area : b.mmap_areas) {
      if (area.offset >= b.size) continue;
      const uint64_t start = align_up(area.offset, page);
      const uint64_t end = align_down(area.offset + std::min(area.size, b.size - area.offset), page);
      std::vector<std::pair<uint64_t, uint64_t>> pieces;
      uint64_t cursor = start;
      for (const auto& [hs, he] : holes) {
        if (he <= cursor || hs >= end) continue;
        if (hs > cursor) pieces.emplace_back(cursor, hs);
        cursor = std::max(cursor, he);
      }
      if (cursor < end) pieces.emplace_back(cursor, end);
      for (const auto& [ps, pe] : pieces) {
        auto m = transport_.map_region(static_cast<uint32_t>(i), ps, pe - ps);
        if (!m) {
          log_warn(cat({bar_name(i), ": mmap of ", hex(ps), "+", hex(pe - ps), ": ",
                        m.error().message(), "; those accesses will trap"}));
          continue;
        }
        BarPiece p;
        p.offset = ps;
        p.size = pe - ps;
        p.mapping = std::move(*m);
        b.pieces.push_back(std::move(p));
      }
    }
  }
}

void PassthroughDevice::unmap_bar(Bar& b) {
  for (BarPiece& p : b.pieces) {
    if (!p.slot) continue;
    if (auto s = mapper_.unmap(*p.slot); !s)
      log_error(cat({name_, ": removing a BAR memory slot: ", s.error().message()}));
    mapped_bytes_->add(-static_cast<int64_t>(p.size));
    p.slot.reset();
  }
}

void PassthroughDevice::bar_decode_changed(int bar, std::optional<uint64_t> address) {
  std::lock_guard lock(mu_);
  if (detached_ || bar < 0 || bar >= kPciNumBars) return;
  Bar& b = bars_[static_cast<size_t>(bar)];
  if (!b.present || b.kind == PciBarKind::Io) return;
  unmap_bar(b);
  if (!address || b.pieces.empty()) return;
  if (*address % page_size() != 0) {
    log_warn(cat({bar_name(bar), ": placed at ", hex(*address),
                  ", not page aligned; all its accesses trap"}));
    return;
  }
  for (BarPiece& p : b.pieces) {
    auto h = mapper_.map(*address + p.offset, p.size, p.mapping.addr(), bar_name(bar));
    if (!h) {
      // The root put the BAR on the MMIO bus, so accesses the memory slot would have taken
      // still reach bar_read/bar_write (slower, but correct).
      log_error(cat({bar_name(bar), ": cannot map ", hex(p.offset), "+", hex(p.size), " at ",
                     hex(*address + p.offset), ": ", h.error().message(),
                     "; those accesses trap"}));
      continue;
    }
    p.slot = *h;
    mapped_bytes_->add(static_cast<int64_t>(p.size));
  }
}

// ---------------------------------------------------------------------------------------------
// config space

void PassthroughDevice::config_read(uint16_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mu_);
  // With INTx wired, Status bit 3 (Interrupt Status) is the device's: a driver sharing the line
  // may poll it to decide whether the interrupt is its own.
  const uint16_t status_off = pci_offset(PciReg16::StatusRegister);
  if (intx_ && !detached_ && overlaps(offset, data.size(), status_off, 2)) {
    std::array<uint8_t, 2> real{};
    if (transport_.region_read(kConfigRegion, status_off, real))
      config_.set_interrupt_status((load16(real, 0) & pci_status::kInterruptStatus) != 0);
  }
  config_.read(offset, data);
}

void PassthroughDevice::config_write(uint16_t offset, std::span<const uint8_t> data) {
  std::lock_guard lock(mu_);
  if (detached_) return;
  const uint16_t command_before = config_.command();
  const bool msix_was = msix_table_ && msix_table_->enabled();
  {
    std::unique_lock<std::recursive_mutex> msix_lock;
    if (msix_) msix_lock = msix_->lock();
    // Read-only bytes (identity, hidden capabilities, the ROM BAR) are dropped by the masks.
    config_.write(offset, data);
    if (msix_table_) msix_table_->config_written(config_, offset, data.size());
  }
  const size_t len = data.size();
  if (overlaps(offset, len, pci_offset(PciReg16::Command), 2) &&
      ((config_.command() ^ command_before) & kForwardedCommand) != 0)
    forward_command();
  if (msix_table_ && msix_table_->enabled() != msix_was) msix_enable_changed();
  if (msi_cap_) {
    const uint16_t ctl = config_.peek16(static_cast<uint16_t>(msi_cap_->offset + 2));
    if (overlaps(offset, len, msi_cap_->offset, msi_cap_len(ctl))) msi_config_changed();
  }
  intx_update();
}

void PassthroughDevice::forward_command() {
  std::array<uint8_t, 2> cur{};
  const auto off = pci_offset(PciReg16::Command);
  if (auto s = transport_.region_read(kConfigRegion, off, cur); !s) {
    region_failed("command read", -1, s.error());
    return;
  }
  const uint16_t real = load16(cur, 0);
  const auto v = static_cast<uint16_t>((real & ~kForwardedCommand) |
                                       (config_.command() & kForwardedCommand));
  const std::array<uint8_t, 2> out{static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8)};
  if (auto s = transport_.region_write(kConfigRegion, off, out); !s)
    region_failed("command write", -1, s.error());
}

void PassthroughDevice::msix_enable_changed() {
  if (msix_table_->enabled()) {
    // A driver moving from INTx or MSI to MSI-X; VFIO allows one of them at a time.
    if (intx_) intx_disable();
    if (!msi_vectors_.empty()) msi_disable();
    // The device's vectors signal the very eventfds MsixInterrupts registered as KVM irqfds:
    // device interrupts reach the guest without passing through iovirt.
    std::vector<int> fds;
    for (uint16_t v = 0; v < msix_->num_vectors(); ++v) fds.push_back(msix_->notifier(v));
    if (auto s = transport_.set_irq_eventfds(kMsixIrq, 0, fds); !s) {
      irq_errors_->inc();
      log_error(cat({name_, ": enabling MSI-X on the device: ", s.error().message(),
                     "; the guest will see no interrupts"}));
    }
  } else if (auto s = transport_.disable_irq(kMsixIrq); !s) {
    irq_errors_->inc();
    log_error(cat({name_, ": disabling MSI-X on the device: ", s.error().message()}));
  }
}

// ---------------------------------------------------------------------------------------------
// MSI (PCI 3.0 §6.8.1), emulated: the guest programs the copy, iovirt turns it into per-vector
// GSI routes + irqfds and hands the eventfds to the device.

void PassthroughDevice::msi_config_changed() {
  const MsiCap& c = *msi_cap_;
  const auto off = static_cast<uint16_t>(c.offset);
  const uint16_t ctl = config_.peek16(static_cast<uint16_t>(off + 2));
  uint64_t addr = config_.peek32(static_cast<uint16_t>(off + 4));
  if (c.is64) addr |= uint64_t{config_.peek32(static_cast<uint16_t>(off + 8))} << 32;
  const auto data_off = static_cast<uint16_t>(off + (c.is64 ? 12 : 8));
  const uint32_t data = config_.peek16(data_off);
  const uint32_t mask = c.maskable ? config_.peek32(static_cast<uint16_t>(data_off + 4)) : 0;
  if ((ctl & msi::kEnable) == 0) {
    if (!msi_vectors_.empty()) msi_disable();
    return;
  }
  // MME above MMC is undefined (§6.8.1.3); give the guest what was advertised.
  const unsigned mme = std::min(5u, static_cast<unsigned>((ctl & msi::kMultipleMessageEnableMask) >> 4));
  const unsigned n = std::min(1u << mme, c.max_vectors);
  if (!msi_vectors_.empty() && msi_vectors_.size() != n) msi_disable();
  if (msi_vectors_.empty()) {
    if (intx_) intx_disable();  // VFIO allows one of INTx, MSI, MSI-X at a time
    if (auto s = msi_enable(n, addr, data, mask); !s) {
      irq_errors_->inc();
      log_error(cat({name_, ": enabling MSI: ", s.error().message(),
                     "; the guest will see no interrupts"}));
    }
    return;
  }
  msi_update(addr, data, mask);
}

namespace {
// In multiple-message mode the function sets the low log2(n) bits of the data to the vector.
uint32_t msi_vector_data(uint32_t data, size_t n, size_t v) {
  return static_cast<uint32_t>((data & ~(n - 1)) | v);
}
}  // namespace

void PassthroughDevice::release_msi_vectors(std::vector<MsiVectorState>& vs) {
  for (MsiVectorState& v : vs) {
    if (v.irqfd && v.gsi) (void)chip_.unregister_irqfd(v.fd.fd(), *v.gsi);
    if (v.gsi) (void)router_.remove_route(*v.gsi);
  }
  vs.clear();
}

Status PassthroughDevice::msi_enable(unsigned n, uint64_t addr, uint32_t data, uint32_t mask) {
  std::vector<MsiVectorState> vs;
  for (unsigned v = 0; v < n; ++v) {
    auto fd = EventFd::create();
    if (!fd) {
      release_msi_vectors(vs);
      return std::unexpected(std::move(fd.error()));
    }
    auto gsi = router_.add_msi_route(addr, msi_vector_data(data, n, v));
    if (!gsi) {
      release_msi_vectors(vs);
      return std::unexpected(std::move(gsi.error()).context("vector " + std::to_string(v)));
    }
    vs.push_back(MsiVectorState{std::move(*fd), *gsi, false});
  }
  for (unsigned v = 0; v < n; ++v) {
    if ((mask >> v) & 1) continue;
    if (auto s = chip_.register_irqfd(vs[v].fd.fd(), *vs[v].gsi); !s) {
      release_msi_vectors(vs);
      return std::unexpected(std::move(s.error()).context("vector " + std::to_string(v)));
    }
    vs[v].irqfd = true;
  }
  std::vector<int> fds;
  for (const auto& v : vs) fds.push_back(v.fd.fd());
  if (auto s = transport_.set_irq_eventfds(kMsiIrq, 0, fds); !s) {
    release_msi_vectors(vs);
    return std::unexpected(std::move(s.error()).context("device"));
  }
  msi_vectors_ = std::move(vs);
  msi_addr_ = addr;
  msi_data_ = data;
  msi_mask_ = mask;
  msi_vectors_gauge_->set(static_cast<int64_t>(n));
  return {};
}

void PassthroughDevice::msi_update(uint64_t addr, uint32_t data, uint32_t mask) {
  const size_t n = msi_vectors_.size();
  for (size_t v = 0; v < n; ++v) {
    MsiVectorState& s = msi_vectors_[v];
    const std::string what = cat({name_, ": MSI vector ", std::to_string(v), ": "});
    const bool masked = ((mask >> v) & 1) != 0;
    // Mask before re-pointing, so no message goes out on a stale route.
    if (masked && s.irqfd) {
      if (auto st = chip_.unregister_irqfd(s.fd.fd(), *s.gsi); !st) {
        irq_errors_->inc();
        log_error(what + st.error().message());
      }
      s.irqfd = false;
    }
    if ((addr != msi_addr_ || data != msi_data_) && s.gsi) {
      if (auto st = router_.update_msi_route(*s.gsi, addr, msi_vector_data(data, n, v)); !st) {
        irq_errors_->inc();
        log_error(what + st.error().message());
      }
    }
    // A message the device sent while masked sits in the eventfd counter; KVM injects it once
    // at assign, which is the "pending, then sent on unmask" behaviour PCI asks for.
    if (!masked && !s.irqfd && s.gsi) {
      if (auto st = chip_.register_irqfd(s.fd.fd(), *s.gsi); !st) {
        irq_errors_->inc();
        log_error(what + st.error().message());
      } else {
        s.irqfd = true;
      }
    }
  }
  msi_addr_ = addr;
  msi_data_ = data;
  msi_mask_ = mask;
}

void PassthroughDevice::msi_disable() {
  if (auto s = transport_.disable_irq(kMsiIrq); !s) {
    irq_errors_->inc();
    log_error(cat({name_, ": disabling MSI on the device: ", s.error().message()}));
  }
  release_msi_vectors(msi_vectors_);
  msi_vectors_gauge_->set(0);
}

// ---------------------------------------------------------------------------------------------
// INTx (see the header): trigger eventfd = KVM irqfd with a resamplefd = VFIO's unmask eventfd.

Status PassthroughDevice::set_intx_gsi(uint32_t gsi) {
  std::lock_guard lock(mu_);
  if (intx_pin_ == 0) return {};
  if (detached_) return fail("INTx: the device is detached", ENODEV);
  if (intx_) return fail("INTx is already wired to GSI " + std::to_string(intx_->gsi), EBUSY);
  // Interrupt Line is 8 bits and 0xff means "not connected" on x86 (PCI 3.0 §6.2.4).
  if (gsi >= 0xff) return fail("INTx: GSI " + std::to_string(gsi) + " does not fit Interrupt Line", EINVAL);
  auto trigger = EventFd::create();
  if (!trigger) return std::unexpected(std::move(trigger.error()).context("INTx trigger eventfd"));
  auto resample = EventFd::create();
  if (!resample) return std::unexpected(std::move(resample.error()).context("INTx resample eventfd"));
  intx_.emplace(Intx{gsi, std::move(*trigger), std::move(*resample), false});
  const bool msi_or_msix = !msi_vectors_.empty() || (msix_table_ && msix_table_->enabled());
  if (!msi_or_msix) {
    if (auto s = intx_enable(); !s) {
      intx_.reset();
      return std::unexpected(std::move(s.error()).context("INTx on GSI " + std::to_string(gsi)));
    }
  }
  config_.set_interrupt_pin(intx_pin_);
  config_.set(PciReg8::InterruptLine, static_cast<uint8_t>(gsi));
  const char pin_name[] = {'I', 'N', 'T', static_cast<char>('A' + intx_pin_ - 1), '#', '\0'};
  log_info(cat({name_, ": INTx (", pin_name, ") on GSI ", std::to_string(gsi),
                ", level-triggered through a KVM irqfd with resamplefd"}));
  return {};
}

Status PassthroughDevice::intx_enable() {
  Intx& x = *intx_;
  // Counts left from before the line was last off are stale; drop them (EAGAIN when empty).
  (void)x.trigger.read();
  (void)x.resample.read();
  if (auto s = chip_.register_irqfd(x.trigger.fd(), x.gsi, x.resample.fd()); !s)
    return std::unexpected(std::move(s.error()).context("KVM irqfd with resamplefd"));
  // The trigger first: VFIO accepts an unmask eventfd only while INTx is enabled. A resample
  // signalled in between is not lost: VFIO checks the eventfd when it attaches.
  const std::array<int, 1> fds{x.trigger.fd()};
  if (auto s = transport_.set_irq_eventfds(kIntxIrq, 0, fds); !s) {
    (void)chip_.unregister_irqfd(x.trigger.fd(), x.gsi);
    return std::unexpected(std::move(s.error()).context("device INTx trigger"));
  }
  if (auto s = transport_.set_irq_unmask_eventfd(kIntxIrq, x.resample.fd()); !s) {
    (void)transport_.disable_irq(kIntxIrq);
    (void)chip_.unregister_irqfd(x.trigger.fd(), x.gsi);
    return std::unexpected(std::move(s.error()).context("device INTx unmask eventfd"));
  }
  x.enabled = true;
  return {};
}

void PassthroughDevice::intx_disable() {
  Intx& x = *intx_;
  if (!x.enabled) return;
  x.enabled = false;
  // The device side first (VFIO frees the host IRQ and drops the unmask eventfd), then KVM's
  // irqfd, whose deassign also lowers the GSI if the guest had not EOI'd it yet.
  if (auto s = transport_.disable_irq(kIntxIrq); !s) {
    irq_errors_->inc();
    log_error(cat({name_, ": disabling INTx on the device: ", s.error().message()}));
  }
  if (auto s = chip_.unregister_irqfd(x.trigger.fd(), x.gsi); !s) {
    irq_errors_->inc();
    log_error(cat({name_, ": removing the INTx irqfd: ", s.error().message()}));
  }
}

// INTx is on exactly while the guest has neither MSI nor MSI-X enabled (a function must not
// use INTx while either is on, PCI 3.0 §6.8.1.3 / §6.8.2.3).
void PassthroughDevice::intx_update() {
  if (!intx_ || detached_) return;
  const bool msi_on = !msi_vectors_.empty() ||
                      (msi_cap_ && (config_.peek16(static_cast<uint16_t>(msi_cap_->offset + 2)) &
                                    msi::kEnable) != 0);
  const bool want = !msi_on && !(msix_table_ && msix_table_->enabled());
  if (!want) intx_->failed = false;
  if (want == intx_->enabled || (want && intx_->failed)) return;
  if (!want) {
    intx_disable();
    return;
  }
  if (auto s = intx_enable(); !s) {
    intx_->failed = true;
    irq_errors_->inc();
    log_error(cat({name_, ": re-enabling INTx: ", s.error().message(),
                   "; the guest will see no INTx interrupts"}));
  }
}

bool PassthroughDevice::intx_enabled() const {
  std::lock_guard lock(mu_);
  return intx_ && intx_->enabled;
}

std::optional<uint32_t> PassthroughDevice::intx_gsi() const {
  std::lock_guard lock(mu_);
  if (!intx_) return std::nullopt;
  return intx_->gsi;
}

int PassthroughDevice::intx_trigger_fd() const {
  std::lock_guard lock(mu_);
  return intx_ ? intx_->trigger.fd() : -1;
}

int PassthroughDevice::intx_resample_fd() const {
  std::lock_guard lock(mu_);
  return intx_ ? intx_->resample.fd() : -1;
}

bool PassthroughDevice::msi_enabled() const {
  std::lock_guard lock(mu_);
  return !msi_vectors_.empty();
}

std::vector<int> PassthroughDevice::msi_notifiers() const {
  std::lock_guard lock(mu_);
  std::vector<int> out;
  for (const auto& v : msi_vectors_) out.push_back(v.fd.fd());
  return out;
}

std::vector<std::optional<uint32_t>> PassthroughDevice::msi_gsis() const {
  std::lock_guard lock(mu_);
  std::vector<std::optional<uint32_t>> out;
  for (const auto& v : msi_vectors_) out.push_back(v.irqfd ? v.gsi : std::nullopt);
  return out;
}

std::vector<PciCapabilityRef> PassthroughDevice::guest_capabilities() const {
  std::lock_guard lock(mu_);
  return caps_;
}

// ---------------------------------------------------------------------------------------------
// BAR accesses that trapped

void PassthroughDevice::region_failed(const char* op, int bar, const Error& e) {
  region_errors_->inc();
  if (region_error_logged_.exchange(true)) return;  // a guest can repeat the access: log once
  std::string where = bar < 0 ? name_ + " config" : bar_name(bar);
  log_error(cat({where, ": ", op, ": ", e.message(), " (further errors only counted)"}));
}

void PassthroughDevice::bar_read(int bar, uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), uint8_t{0xff});
  if (detached_ || bar < 0 || bar >= kPciNumBars) return;
  const Bar& b = bars_[static_cast<size_t>(bar)];  // immutable after create
  if (!b.present || data.empty() || offset >= b.size || data.size() > b.size - offset) return;
  if (msix_table_) {
    auto lock = msix_->lock();
    if (msix_table_->bar_read(bar, offset, data)) return;
  }
  trapped_accesses_->inc();
  if (auto s = transport_.region_read(static_cast<uint32_t>(bar), offset, data); !s) {
    std::fill(data.begin(), data.end(), uint8_t{0xff});
    region_failed("read", bar, s.error());
  }
}

void PassthroughDevice::bar_write(int bar, uint64_t offset, std::span<const uint8_t> data) {
  if (detached_ || bar < 0 || bar >= kPciNumBars) return;
  const Bar& b = bars_[static_cast<size_t>(bar)];
  if (!b.present || data.empty() || offset >= b.size || data.size() > b.size - offset) return;
  if (msix_table_) {
    auto lock = msix_->lock();
    if (msix_table_->bar_write(bar, offset, data)) {
      const MsixLayout& l = msix_table_->layout();
      if (bar == l.table_bir && offset >= l.table_offset) {
        const uint64_t v = (offset - l.table_offset) / sizeof(MsixTableEntry);
        if (v < msix_table_writes_.size()) msix_table_writes_[v]->inc();
      }
      return;
    }
  }
  trapped_accesses_->inc();
  if (auto s = transport_.region_write(static_cast<uint32_t>(bar), offset, data); !s)
    region_failed("write", bar, s.error());
}

// ---------------------------------------------------------------------------------------------

void PassthroughDevice::detach() {
  std::lock_guard lock(mu_);
  if (detached_.exchange(true)) return;
  if (intx_) intx_disable();
  if (msix_table_ && msix_table_->enabled()) {
    if (auto s = transport_.disable_irq(kMsixIrq); !s)
      log_error(cat({name_, ": detach: disabling MSI-X: ", s.error().message()}));
    // Turn MSI-X off in the emulated capability too: the table's change hook makes
    // MsixInterrupts deassign the irqfds and free the GSIs now rather than at destruction.
    auto msix_lock = msix_->lock();
    const auto ctl_off = static_cast<uint16_t>(msix_table_->cap_offset() + 2);
    config_.poke16(ctl_off, static_cast<uint16_t>(config_.peek16(ctl_off) & ~msix::kEnable));
    msix_table_->config_written(config_, ctl_off, 2);
  }
  if (!msi_vectors_.empty()) msi_disable();
  for (Bar& b : bars_) {
    unmap_bar(b);
    b.pieces.clear();  // drops the mmaps of the device's memory
  }
  if (resettable_) {
    if (auto s = transport_.reset(); !s)
      log_error(cat({name_, ": detach: reset failed: ", s.error().message()}));
  }
}

}  // namespace iovirt::vfio
