#include "iovirt/vmm/acpi.hpp"

#include "iovirt/vmm/pci_root.hpp"

#include <cstring>

namespace iovirt {

namespace {

using Bytes = std::vector<uint8_t>;

void append(Bytes& out, const Bytes& in) { out.insert(out.end(), in.begin(), in.end()); }
template <class T>
void append_le(Bytes& out, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * i)));
}
template <class T>
void put_le(Bytes& out, size_t off, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) out[off + i] = static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * i));
}
uint8_t checksum(const uint8_t* p, size_t n) {
  uint8_t s = 0;
  for (size_t i = 0; i < n; ++i) s = static_cast<uint8_t>(s + p[i]);
  return static_cast<uint8_t>(-s);
}

constexpr char kOemId[7] = "IOVIRT";
constexpr char kOemTable[9] = "IOVIRTVM";

// Standard 36-byte SDT header; length and checksum are fixed up by finish_table().
Bytes sdt_header(const char sig[5], uint8_t revision) {
  Bytes t(36, 0);
  std::memcpy(t.data(), sig, 4);
  t[8] = revision;
  std::memcpy(t.data() + 10, kOemId, 6);
  std::memcpy(t.data() + 16, kOemTable, 8);
  put_le<uint32_t>(t, 24, 1);
  std::memcpy(t.data() + 28, "IOVT", 4);
  put_le<uint32_t>(t, 32, 1);
  return t;
}
void finish_table(Bytes& t) {
  put_le<uint32_t>(t, 4, static_cast<uint32_t>(t.size()));
  t[9] = 0;
  t[9] = checksum(t.data(), t.size());
}

// Generic Address Structure in system I/O space, byte access.
void put_gas_io(Bytes& t, size_t off, uint16_t port, uint8_t bits) {
  t[off] = 1;  // SystemIO
  t[off + 1] = bits;
  t[off + 2] = 0;
  t[off + 3] = 1;  // byte access
  put_le<uint64_t>(t, off + 4, port);
}

}  // namespace

// ---- AML --------------------------------------------------------------------------------------

Bytes Aml::pkg_length(size_t payload_len) {
  // The encoded length counts its own bytes.
  if (payload_len + 1 < 0x40) return {static_cast<uint8_t>(payload_len + 1)};
  for (size_t n = 2; n <= 4; ++n) {
    size_t total = payload_len + n;
    if (total < (size_t{1} << (4 + 8 * (n - 1)))) {
      Bytes b;
      b.push_back(static_cast<uint8_t>(((n - 1) << 6) | (total & 0xf)));
      for (size_t i = 1; i < n; ++i) b.push_back(static_cast<uint8_t>(total >> (4 + 8 * (i - 1))));
      return b;
    }
  }
  return {};  // > 256 MiB of AML: not something iovirt generates
}

Bytes Aml::integer(uint64_t v) {
  Bytes b;
  if (v == 0) return {0x00};
  if (v == 1) return {0x01};
  if (v <= 0xff) return {0x0a, static_cast<uint8_t>(v)};
  if (v <= 0xffff) {
    b.push_back(0x0b);
    append_le<uint16_t>(b, static_cast<uint16_t>(v));
  } else if (v <= 0xffffffff) {
    b.push_back(0x0c);
    append_le<uint32_t>(b, static_cast<uint32_t>(v));
  } else {
    b.push_back(0x0e);
    append_le<uint64_t>(b, v);
  }
  return b;
}

Bytes Aml::eisa_id(const char id[8]) {
  // Three letters compressed into 5 bits each, then four hex digits; stored big-endian.
  auto hexv = [](char c) -> uint32_t { return static_cast<uint32_t>(c <= '9' ? c - '0' : c - 'A' + 10); };
  uint32_t v = (static_cast<uint32_t>(id[0] - 0x40) << 26) | (static_cast<uint32_t>(id[1] - 0x40) << 21) |
               (static_cast<uint32_t>(id[2] - 0x40) << 16) | (hexv(id[3]) << 12) | (hexv(id[4]) << 8) |
               (hexv(id[5]) << 4) | hexv(id[6]);
  return {0x0c, static_cast<uint8_t>(v >> 24), static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 8),
          static_cast<uint8_t>(v)};
}

// Built byte by byte: g++ 12 at -O2 misreads vector::insert of a range into a one-element vector
// as an out-of-bounds memcpy (-Warray-bounds).
Bytes Aml::string(const std::string& s) {
  Bytes b;
  b.reserve(s.size() + 2);
  b.push_back(0x0d);
  for (char c : s) b.push_back(static_cast<uint8_t>(c));
  b.push_back(0);
  return b;
}

Bytes Aml::name(const char seg[5], const Bytes& value) {
  Bytes b;
  b.reserve(5 + value.size());
  b.push_back(0x08);
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(seg[i]));
  append(b, value);
  return b;
}

Bytes Aml::package(const std::vector<Bytes>& elements) {
  Bytes body{static_cast<uint8_t>(elements.size())};
  for (const auto& e : elements) append(body, e);
  Bytes b{0x12};
  append(b, pkg_length(body.size()));
  append(b, body);
  return b;
}

Bytes Aml::buffer(const Bytes& bytes) {
  Bytes body = integer(bytes.size());
  append(body, bytes);
  Bytes b{0x11};
  append(b, pkg_length(body.size()));
  append(b, body);
  return b;
}

Bytes Aml::scope(const std::string& path, const Bytes& body) {
  // path like "\\_SB_": root prefix plus one 4-char segment.
  Bytes inner(path.begin(), path.end());
  append(inner, body);
  Bytes b{0x10};
  append(b, pkg_length(inner.size()));
  append(b, inner);
  return b;
}

Bytes Aml::device(const char seg[5], const Bytes& body) {
  Bytes inner(seg, seg + 4);
  append(inner, body);
  Bytes b{0x5b, 0x82};
  append(b, pkg_length(inner.size()));
  append(b, inner);
  return b;
}

Bytes Aml::res_io(uint16_t min, uint16_t max, uint8_t align, uint8_t len) {
  Bytes b{0x47, 0x01};  // I/O port descriptor, 16-bit decode
  append_le(b, min);
  append_le(b, max);
  b.push_back(align);
  b.push_back(len);
  return b;
}

Bytes Aml::res_irq_noflags(uint8_t irq) {
  uint16_t mask = static_cast<uint16_t>(1u << (irq & 0xf));
  return {0x22, static_cast<uint8_t>(mask), static_cast<uint8_t>(mask >> 8)};
}

namespace {
// Word/DWord/QWord Address Space Descriptors (ACPI 6.4 section 6.4.3.5) share one layout at three
// widths: tag, length, resource type, general flags (producer, MinFixed|MaxFixed, positive
// decode), type-specific flags, then granularity, min, max, translation and length.
template <class T>
Bytes address_space(uint8_t tag, uint8_t type, uint8_t type_flags, T min, T max) {
  Bytes b{tag};
  append_le<uint16_t>(b, static_cast<uint16_t>(3 + 5 * sizeof(T)));
  b.push_back(type);
  b.push_back(0x0c);
  b.push_back(type_flags);
  append_le<T>(b, 0);
  append_le<T>(b, min);
  append_le<T>(b, max);
  append_le<T>(b, 0);
  append_le<T>(b, static_cast<T>(max - min + 1));
  return b;
}
constexpr uint8_t kMemoryRange = 0, kIoRange = 1, kBusRange = 2;
constexpr uint8_t kMemReadWrite = 0x01;   // read-write, non-cacheable
constexpr uint8_t kIoEntireRange = 0x03;  // ISA and non-ISA ranges
}  // namespace

Bytes Aml::res_word_bus(uint16_t min, uint16_t max) {
  return address_space<uint16_t>(0x88, kBusRange, 0, min, max);
}

Bytes Aml::res_word_io(uint16_t min, uint16_t max) {
  return address_space<uint16_t>(0x88, kIoRange, kIoEntireRange, min, max);
}

Bytes Aml::res_dword_mem(uint32_t min, uint32_t max) {
  return address_space<uint32_t>(0x87, kMemoryRange, kMemReadWrite, min, max);
}

Bytes Aml::res_qword_mem(uint64_t min, uint64_t max) {
  return address_space<uint64_t>(0x8a, kMemoryRange, kMemReadWrite, min, max);
}

Bytes Aml::resource_template(const std::vector<Bytes>& items) {
  Bytes body;
  for (const auto& i : items) append(body, i);
  body.push_back(0x79);  // end tag
  body.push_back(0x00);  // checksum 0: "treat as correct"
  return buffer(body);
}

// ---- tables -----------------------------------------------------------------------------------

namespace {

// _PRT (ACPI 6.4 §6.2.13) for the GSI-routed (APIC) model: per slot 1..31 and pin 0..3
// (INTA#..INTD#), Package {Address 0xSSSSFFFF (any function of slot S), Pin, Source 0 (no link
// device: SourceIndex is the GSI), SourceIndex}. The GSIs are pci_intx_gsi()'s swizzle over
// IOAPIC pins 16..23 (pci_root.hpp). Linux programs each pin level-triggered, active low from it.
Bytes pci_routing_table() {
  std::vector<Bytes> entries;
  entries.reserve(size_t{PciRoot::kNumSlots - 1} * 4);
  for (uint8_t slot = 1; slot < PciRoot::kNumSlots; ++slot) {
    for (uint8_t pin = 0; pin < 4; ++pin) {
      entries.push_back(Aml::package({
          Aml::integer((uint64_t{slot} << 16) | 0xffff),
          Aml::integer(pin),
          Aml::integer(0),
          Aml::integer(pci_intx_gsi(slot, static_cast<uint8_t>(pin + 1))),
      }));
    }
  }
  return Aml::package(entries);  // 124 entries: fits the one-byte NumElements of DefPackage
}

Bytes build_dsdt(const AcpiConfig& c) {
  Bytes pci = Aml::name("_HID", Aml::eisa_id("PNP0A03"));
  append(pci, Aml::name("_UID", Aml::integer(0)));
  append(pci, Aml::name("_SEG", Aml::integer(0)));
  append(pci, Aml::name("_BBN", Aml::integer(0)));
  append(pci, Aml::name("_CRS", Aml::resource_template({
      Aml::res_word_bus(0, 0),
      Aml::res_io(0xcf8, 0xcf8, 1, 8),
      Aml::res_word_io(c.io_base, static_cast<uint16_t>(c.io_base + c.io_size - 1)),
      Aml::res_dword_mem(static_cast<uint32_t>(c.mmio32_base),
                         static_cast<uint32_t>(c.mmio32_base + c.mmio32_size - 1)),
      Aml::res_qword_mem(c.mmio64_base, c.mmio64_base + c.mmio64_size - 1),
  })));
  append(pci, Aml::name("_PRT", pci_routing_table()));
  // COM1: on a hardware-reduced platform there is no legacy PIC, so Linux maps ISA IRQs only for
  // devices the DSDT describes; without this the UART's IRQ 4 never reaches the IOAPIC pin.
  Bytes com1 = Aml::name("_HID", Aml::eisa_id("PNP0501"));
  append(com1, Aml::name("_UID", Aml::integer(1)));
  append(com1, Aml::name("_STA", Aml::integer(0x0f)));
  append(com1, Aml::name("_CRS", Aml::resource_template({
      Aml::res_io(c.com1_port, c.com1_port, 1, 8),
      Aml::res_irq_noflags(c.com1_irq),
  })));
  Bytes devices = Aml::device("COM1", com1);
  append(devices, Aml::device("PCI0", pci));
  Bytes sb = Aml::scope("\\_SB_", devices);
  Bytes t = sdt_header("DSDT", 2);
  append(t, sb);
  append(t, Aml::name("_S5_", Aml::package({Aml::integer(kAcpiS5Type), Aml::integer(0)})));
  finish_table(t);
  return t;
}

Bytes build_fadt(const AcpiConfig& c, uint64_t dsdt_gpa) {
  Bytes t = sdt_header("FACP", 6);
  t.resize(276, 0);
  put_le<uint32_t>(t, 40, static_cast<uint32_t>(dsdt_gpa));
  // IAPC_BOOT_ARCH: no VGA (bit 2), no CMOS RTC (bit 5; kvmclock supplies wall time);
  // no 8042 flag, so Linux does not probe a keyboard controller. MSI stays allowed (bit 3 clear).
  put_le<uint16_t>(t, 109, (1u << 2) | (1u << 5));
  // Flags: RESET_REG_SUP (10), PWR_BUTTON (4) and SLP_BUTTON (5) as control-method/absent,
  // HW_REDUCED_ACPI (20).
  put_le<uint32_t>(t, 112, (1u << 4) | (1u << 5) | (1u << 10) | (1u << 20));
  put_gas_io(t, 116, static_cast<uint16_t>(c.pm_base + 2), 8);  // RESET_REG
  t[128] = kAcpiResetValue;
  t[131] = 0;                                                   // FADT minor version
  put_le<uint64_t>(t, 140, dsdt_gpa);                            // X_DSDT
  put_gas_io(t, 244, c.pm_base, 8);                              // SLEEP_CONTROL_REG
  put_gas_io(t, 256, static_cast<uint16_t>(c.pm_base + 1), 8);  // SLEEP_STATUS_REG
  std::memcpy(t.data() + 268, "IOVIRTVM", 8);                    // hypervisor vendor identity
  finish_table(t);
  return t;
}

Bytes build_madt(const AcpiConfig& c) {
  Bytes t = sdt_header("APIC", 4);
  append_le<uint32_t>(t, c.lapic_addr);
  append_le<uint32_t>(t, 0);  // no PCAT_COMPAT: hardware-reduced, no legacy PIC in use
  for (uint32_t i = 0; i < c.cpus; ++i) {
    // Processor Local APIC: type 0, length 8, processor uid, APIC id, flags (enabled).
    t.insert(t.end(), {0, 8, static_cast<uint8_t>(i), static_cast<uint8_t>(i)});
    append_le<uint32_t>(t, 1);
  }
  // I/O APIC: type 1, length 12, id 0, reserved, address, GSI base 0.
  t.insert(t.end(), {1, 12, 0, 0});
  append_le<uint32_t>(t, c.ioapic_addr);
  append_le<uint32_t>(t, 0);
  // Interrupt source override: ISA IRQ 0 (PIT) is GSI 2, as on every PC.
  t.insert(t.end(), {2, 10, 0, 0});
  append_le<uint32_t>(t, 2);
  append_le<uint16_t>(t, 0);
  finish_table(t);
  return t;
}

uint64_t align16(uint64_t v) { return (v + 15) & ~uint64_t{15}; }

}  // namespace

Result<std::vector<uint8_t>> build_acpi_tables(const AcpiConfig& c) {
  if (c.cpus == 0 || c.cpus > 255) return fail("ACPI: MADT describes 1..255 CPUs with xAPIC entries");
  Bytes dsdt = build_dsdt(c);
  Bytes madt = build_madt(c);

  // Layout: RSDP(36) | XSDT | FADT | MADT | DSDT, each 16-byte aligned.
  uint64_t base = c.rsdp_gpa;
  uint64_t xsdt_at = align16(base + 36);
  uint64_t xsdt_len = 36 + 2 * 8;
  uint64_t fadt_at = align16(xsdt_at + xsdt_len);
  uint64_t madt_at = align16(fadt_at + 276);
  uint64_t dsdt_at = align16(madt_at + madt.size());
  Bytes fadt = build_fadt(c, dsdt_at);

  Bytes xsdt = sdt_header("XSDT", 1);
  append_le<uint64_t>(xsdt, fadt_at);
  append_le<uint64_t>(xsdt, madt_at);
  finish_table(xsdt);

  Bytes rsdp(36, 0);
  std::memcpy(rsdp.data(), "RSD PTR ", 8);
  std::memcpy(rsdp.data() + 9, kOemId, 6);
  rsdp[15] = 2;  // ACPI 2.0+ RSDP
  put_le<uint32_t>(rsdp, 20, 36);
  put_le<uint64_t>(rsdp, 24, xsdt_at);
  rsdp[8] = checksum(rsdp.data(), 20);
  rsdp[32] = checksum(rsdp.data(), 36);

  Bytes out(dsdt_at - base + dsdt.size(), 0);
  auto place = [&](uint64_t at, const Bytes& b) { std::memcpy(out.data() + (at - base), b.data(), b.size()); };
  place(base, rsdp);
  place(xsdt_at, xsdt);
  place(fadt_at, fadt);
  place(madt_at, madt);
  place(dsdt_at, dsdt);
  return out;
}

}  // namespace iovirt
