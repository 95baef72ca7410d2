// ACPI tables for the hardware-reduced platform, read back the way a guest kernel reads them:
// RSDP -> XSDT -> FADT/MADT -> DSDT, checksums and lengths first. Plus the AML encoder.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "iovirt/vmm/acpi.hpp"
#include "iovirt/vmm/pci_root.hpp"

namespace iovirt {
namespace {

using Bytes = std::vector<uint8_t>;

constexpr uint64_t kRsdpGpa = 0xe0000;

AcpiConfig config(uint32_t cpus = 4) {
  AcpiConfig c;
  c.cpus = cpus;
  c.rsdp_gpa = kRsdpGpa;
  c.mmio32_base = 0xc0000000;
  c.mmio32_size = 0x3c000000;
  c.mmio64_base = 0x2000000000;
  c.mmio64_size = 0x800000000;
  c.io_base = 0xc000;
  c.io_size = 0x4000;
  c.pm_base = 0x600;
  c.ioapic_addr = 0xfec00000;
  c.lapic_addr = 0xfee00000;
  return c;
}

template <class T>
T get(const Bytes& b, size_t off) {
  T v{};
  if (off + sizeof v <= b.size()) std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

uint8_t sum(const Bytes& b, size_t off, size_t len) {
  uint8_t s = 0;
  for (size_t i = 0; i < len; ++i) s = static_cast<uint8_t>(s + b[off + i]);
  return s;
}

std::string sig(const Bytes& b, size_t off, size_t len = 4) {
  if (off + len > b.size()) return "<out of blob>";
  return std::string(b.begin() + static_cast<std::ptrdiff_t>(off),
                     b.begin() + static_cast<std::ptrdiff_t>(off + len));
}

bool contains(const Bytes& hay, const Bytes& needle) {
  return std::search(hay.begin(), hay.end(), needle.begin(), needle.end()) != hay.end();
}

// The blob with every table located through the pointers, as a guest would.
struct Tables {
  Bytes blob;
  size_t xsdt = 0, fadt = 0, madt = 0, dsdt = 0;  // offsets into blob
};

// Offset in the blob of guest address `gpa`, or SIZE_MAX when it is not inside it.
size_t offset_of(const Bytes& blob, uint64_t gpa) {
  if (gpa < kRsdpGpa || gpa - kRsdpGpa >= blob.size()) return SIZE_MAX;
  return static_cast<size_t>(gpa - kRsdpGpa);
}

Tables locate(const AcpiConfig& c) {
  Tables t;
  auto r = build_acpi_tables(c);
  EXPECT_TRUE(r) << r.error().message();
  if (!r) return t;
  t.blob = *r;
  t.xsdt = offset_of(t.blob, get<uint64_t>(t.blob, 24));
  if (t.xsdt == SIZE_MAX) return t;
  t.fadt = offset_of(t.blob, get<uint64_t>(t.blob, t.xsdt + 36));
  t.madt = offset_of(t.blob, get<uint64_t>(t.blob, t.xsdt + 44));
  if (t.fadt != SIZE_MAX) t.dsdt = offset_of(t.blob, get<uint64_t>(t.blob, t.fadt + 140));
  return t;
}

// ---- RSDP and XSDT -------------------------------------------------------------------------

TEST(AcpiTables, RsdpHasSignatureRevisionAndBothChecksums) {
  auto r = build_acpi_tables(config());
  ASSERT_TRUE(r) << r.error().message();
  const Bytes& b = *r;

  ASSERT_GE(b.size(), 36u);
  EXPECT_EQ(sig(b, 0, 8), "RSD PTR ");
  EXPECT_EQ(b[15], 2) << "ACPI 2.0+ RSDP";
  EXPECT_EQ(get<uint32_t>(b, 20), 36u);
  EXPECT_EQ(sum(b, 0, 20), 0) << "ACPI 1.0 checksum over the first 20 bytes";
  EXPECT_EQ(sum(b, 0, 36), 0) << "extended checksum over all 36 bytes";
}

TEST(AcpiTables, XsdtListsFadtAndMadtInsideTheBlob) {
  const Tables t = locate(config());

  ASSERT_NE(t.xsdt, SIZE_MAX) << "XSDT address is outside the tables";
  EXPECT_EQ(sig(t.blob, t.xsdt), "XSDT");
  ASSERT_EQ(get<uint32_t>(t.blob, t.xsdt + 4), 36u + 2 * 8) << "two 64-bit entries";
  ASSERT_NE(t.fadt, SIZE_MAX);
  ASSERT_NE(t.madt, SIZE_MAX);
  EXPECT_EQ(sig(t.blob, t.fadt), "FACP");
  EXPECT_EQ(sig(t.blob, t.madt), "APIC");
}

TEST(AcpiTables, EveryTableHasAConsistentLengthAndAZeroChecksum) {
  const Tables t = locate(config());
  ASSERT_NE(t.xsdt, SIZE_MAX);
  ASSERT_NE(t.fadt, SIZE_MAX);
  ASSERT_NE(t.madt, SIZE_MAX);
  ASSERT_NE(t.dsdt, SIZE_MAX);

  for (size_t at : {t.xsdt, t.fadt, t.madt, t.dsdt}) {
    const uint32_t len = get<uint32_t>(t.blob, at + 4);
    SCOPED_TRACE(sig(t.blob, at));
    ASSERT_GE(len, 36u);
    ASSERT_LE(at + len, t.blob.size());
    EXPECT_EQ(sum(t.blob, at, len), 0);
    EXPECT_EQ((kRsdpGpa + at) % 16, 0u) << "tables are 16-byte aligned";
  }
  // The blob ends with the last table: nothing unchecksummed trails it.
  EXPECT_EQ(t.dsdt + get<uint32_t>(t.blob, t.dsdt + 4), t.blob.size());
}

TEST(AcpiTables, TablesDoNotOverlap) {
  const Tables t = locate(config());
  ASSERT_NE(t.dsdt, SIZE_MAX);
  std::vector<std::pair<size_t, size_t>> spans = {{0, 36}};
  for (size_t at : {t.xsdt, t.fadt, t.madt, t.dsdt})
    spans.emplace_back(at, get<uint32_t>(t.blob, at + 4));
  std::sort(spans.begin(), spans.end());

  for (size_t i = 1; i < spans.size(); ++i)
    EXPECT_LE(spans[i - 1].first + spans[i - 1].second, spans[i].first)
        << "table at " << spans[i].first;
}

// ---- FADT ----------------------------------------------------------------------------------

TEST(AcpiTables, FadtIsHardwareReducedAndPointsAtTheDsdt) {
  const Tables t = locate(config());
  ASSERT_NE(t.fadt, SIZE_MAX);

  EXPECT_EQ(get<uint32_t>(t.blob, t.fadt + 4), 276u) << "ACPI 6 FADT length";
  EXPECT_EQ(t.blob[t.fadt + 8], 6) << "FADT major revision";
  const uint32_t flags = get<uint32_t>(t.blob, t.fadt + 112);
  EXPECT_NE(flags & (1u << 20), 0u) << "HW_REDUCED_ACPI";
  EXPECT_NE(flags & (1u << 10), 0u) << "RESET_REG_SUP";
  ASSERT_NE(t.dsdt, SIZE_MAX) << "X_DSDT is outside the tables";
  EXPECT_EQ(sig(t.blob, t.dsdt), "DSDT");
  EXPECT_EQ(get<uint32_t>(t.blob, t.fadt + 40), kRsdpGpa + t.dsdt)
      << "32-bit DSDT agrees with X_DSDT";
}

TEST(AcpiTables, FadtResetAndSleepRegistersAreThePmPorts) {
  const AcpiConfig c = config();
  const Tables t = locate(c);
  ASSERT_NE(t.fadt, SIZE_MAX);
  auto gas_port = [&](size_t off) {
    EXPECT_EQ(t.blob[t.fadt + off], 1) << "SystemIO space at FADT+" << off;
    EXPECT_EQ(t.blob[t.fadt + off + 1], 8) << "8-bit register at FADT+" << off;
    return get<uint64_t>(t.blob, t.fadt + off + 4);
  };

  EXPECT_EQ(gas_port(116), c.pm_base + 2u) << "RESET_REG";
  EXPECT_EQ(t.blob[t.fadt + 128], kAcpiResetValue);
  EXPECT_EQ(gas_port(244), c.pm_base) << "SLEEP_CONTROL_REG";
  EXPECT_EQ(gas_port(256), c.pm_base + 1u) << "SLEEP_STATUS_REG";
}

// ---- MADT ----------------------------------------------------------------------------------

struct MadtEntries {
  std::vector<std::pair<uint8_t, uint8_t>> lapics;  // (processor uid, APIC id) of enabled ones
  std::vector<uint32_t> ioapic_addrs;
  bool well_formed = true;
};

MadtEntries walk_madt(const Tables& t) {
  MadtEntries m;
  const size_t end = t.madt + get<uint32_t>(t.blob, t.madt + 4);
  for (size_t at = t.madt + 44; at < end;) {
    const uint8_t type = t.blob[at];
    const uint8_t len = t.blob[at + 1];
    if (len < 2 || at + len > end) {
      m.well_formed = false;
      break;
    }
    if (type == 0 && len == 8 && (get<uint32_t>(t.blob, at + 4) & 1))
      m.lapics.emplace_back(t.blob[at + 2], t.blob[at + 3]);
    if (type == 1 && len == 12) m.ioapic_addrs.push_back(get<uint32_t>(t.blob, at + 4));
    at += len;
  }
  return m;
}

TEST(AcpiTables, MadtHasOneEnabledLapicPerCpuAndOneIoapic) {
  const AcpiConfig c = config(4);
  const Tables t = locate(c);
  ASSERT_NE(t.madt, SIZE_MAX);

  const MadtEntries m = walk_madt(t);

  EXPECT_TRUE(m.well_formed);
  EXPECT_EQ(get<uint32_t>(t.blob, t.madt + 36), c.lapic_addr);
  ASSERT_EQ(m.lapics.size(), 4u);
  for (uint8_t i = 0; i < 4; ++i)
    EXPECT_EQ(m.lapics[i], std::make_pair(i, i)) << "CPU " << unsigned{i};
  ASSERT_EQ(m.ioapic_addrs.size(), 1u);
  EXPECT_EQ(m.ioapic_addrs[0], c.ioapic_addr);
}

TEST(AcpiTables, MadtScalesToTheLargestCpuCount) {
  const Tables t = locate(config(255));
  ASSERT_NE(t.madt, SIZE_MAX);

  const MadtEntries m = walk_madt(t);

  EXPECT_TRUE(m.well_formed);
  ASSERT_EQ(m.lapics.size(), 255u);
  EXPECT_EQ(m.lapics.back(), std::make_pair(uint8_t{254}, uint8_t{254}));
}

TEST(AcpiTables, ZeroOrMoreThan255CpusAreRefused) {
  for (uint32_t cpus : {0u, 256u}) {
    auto r = build_acpi_tables(config(cpus));

    ASSERT_FALSE(r) << cpus << " CPUs";
    EXPECT_NE(r.error().message().find("CPUs"), std::string::npos) << r.error().message();
  }
}

// ---- DSDT ----------------------------------------------------------------------------------

TEST(AcpiTables, DsdtDescribesS5AndThePciRoot) {
  const Tables t = locate(config());
  ASSERT_NE(t.dsdt, SIZE_MAX);
  const Bytes dsdt(t.blob.begin() + static_cast<std::ptrdiff_t>(t.dsdt), t.blob.end());

  // Name(_S5_, Package(2) {5, 0}): NameOp, "_S5_", PackageOp, PkgLength 5, 2 elements,
  // BytePrefix 5, ZeroOp -- the bytes Linux's sleep-type lookup evaluates.
  EXPECT_TRUE(contains(dsdt, {0x08, '_', 'S', '5', '_', 0x12, 0x05, 0x02, 0x0a, 0x05, 0x00}));
  EXPECT_TRUE(contains(dsdt, {'P', 'C', 'I', '0'}));
  EXPECT_TRUE(contains(dsdt, {'_', 'S', 'B', '_'}));
  EXPECT_TRUE(contains(dsdt, {0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03}))
      << "PNP0A03";
}

// A minimal AML reader for what build_dsdt emits: PkgLength, integer constants, packages.
struct AmlReader {
  const Bytes& b;
  size_t at;
  bool ok = true;

  // PkgLength (ACPI 6.4 §20.2.4): returns where the package ends (the length counts itself).
  size_t pkg_end() {
    if (at >= b.size()) return fail();
    const size_t start = at;
    const uint8_t lead = b[at++];
    const unsigned follow = lead >> 6;
    size_t len = follow == 0 ? (lead & 0x3fu) : (lead & 0x0fu);
    for (unsigned i = 0; i < follow; ++i) {
      if (at >= b.size()) return fail();
      len |= size_t{b[at++]} << (4 + 8 * i);
    }
    return start + len;
  }
  uint64_t integer() {
    if (at >= b.size()) return fail();
    const uint8_t op = b[at++];
    size_t n = 0;
    switch (op) {
      case 0x00: return 0;
      case 0x01: return 1;
      case 0xff: return ~uint64_t{0};
      case 0x0a: n = 1; break;
      case 0x0b: n = 2; break;
      case 0x0c: n = 4; break;
      case 0x0e: n = 8; break;
      default: return fail();
    }
    if (at + n > b.size()) return fail();
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;) v = v << 8 | b[at + i];
    at += n;
    return v;
  }
  // PackageOp PkgLength NumElements; returns the element count and leaves `at` at the first.
  size_t package(size_t* end) {
    if (at >= b.size() || b[at] != 0x12) return fail();
    ++at;
    *end = pkg_end();
    if (at >= b.size() || *end > b.size()) return fail();
    return b[at++];
  }
  size_t fail() {
    ok = false;
    at = b.size();
    return 0;
  }
};

size_t find(const Bytes& hay, const Bytes& needle) {
  auto it = std::search(hay.begin(), hay.end(), needle.begin(), needle.end());
  return it == hay.end() ? SIZE_MAX : static_cast<size_t>(it - hay.begin());
}

TEST(AcpiTables, DsdtRoutesEveryPciSlotAndPinToTheIoapicThroughPrt) {
  const Tables t = locate(config());
  ASSERT_NE(t.dsdt, SIZE_MAX);
  const Bytes dsdt(t.blob.begin() + static_cast<std::ptrdiff_t>(t.dsdt), t.blob.end());

  // Name(_PRT, Package(124) {...}) inside Device(PCI0).
  const size_t prt = find(dsdt, {0x08, '_', 'P', 'R', 'T'});
  ASSERT_NE(prt, SIZE_MAX) << "no _PRT";
  const size_t pci0 = find(dsdt, {'P', 'C', 'I', '0'});
  ASSERT_NE(pci0, SIZE_MAX);
  size_t dev_start = SIZE_MAX;  // the PkgLength after DeviceOp (0x5b 0x82)
  for (size_t i = 2; i < pci0; ++i)
    if (dsdt[i - 2] == 0x5b && dsdt[i - 1] == 0x82) dev_start = i;
  ASSERT_NE(dev_start, SIZE_MAX);
  AmlReader dev{dsdt, dev_start};
  const size_t dev_end = dev.pkg_end();
  ASSERT_TRUE(dev.ok);
  EXPECT_EQ(dev.at, pci0) << "the last DeviceOp before the name is PCI0's";
  EXPECT_GT(prt, pci0);
  EXPECT_LT(prt, dev_end) << "_PRT belongs to PCI0";

  AmlReader r{dsdt, prt + 5};
  size_t table_end = 0;
  const size_t n = r.package(&table_end);
  ASSERT_TRUE(r.ok);
  ASSERT_EQ(n, 31u * 4) << "slots 1..31, INTA..INTD";
  EXPECT_LE(table_end, dev_end);

  std::vector<std::array<uint64_t, 4>> entries;
  for (size_t i = 0; i < n && r.ok; ++i) {
    size_t end = 0;
    ASSERT_EQ(r.package(&end), 4u) << "entry " << i;
    std::array<uint64_t, 4> e{};
    for (auto& v : e) v = r.integer();
    ASSERT_TRUE(r.ok) << "entry " << i;
    EXPECT_EQ(r.at, end) << "entry " << i << " has exactly four integers";
    entries.push_back(e);
  }
  ASSERT_EQ(entries.size(), n);
  EXPECT_EQ(r.at, table_end);

  // Slot 1 INTA -> GSI 17; slot 7 INTB -> (7 + 1) % 8 = 0 -> 16; slot 31 INTD -> (31 + 3) % 8 = 2.
  EXPECT_EQ(entries[0], (std::array<uint64_t, 4>{0x1ffff, 0, 0, 17}));
  EXPECT_EQ(entries[(7 - 1) * 4 + 1], (std::array<uint64_t, 4>{0x7ffff, 1, 0, 16}));
  EXPECT_EQ(entries.back(), (std::array<uint64_t, 4>{0x1fffff, 3, 0, 18}));
  for (size_t i = 0; i < entries.size(); ++i) {
    const uint64_t slot = i / 4 + 1;
    const auto pin = static_cast<uint8_t>(i % 4);
    SCOPED_TRACE("slot " + std::to_string(slot) + " pin " + std::to_string(pin));
    EXPECT_EQ(entries[i][0], slot << 16 | 0xffff) << "any function of the slot";
    EXPECT_EQ(entries[i][1], pin);
    EXPECT_EQ(entries[i][2], 0u) << "Source 0: SourceIndex is a GSI";
    EXPECT_EQ(entries[i][3], pci_intx_gsi(static_cast<uint8_t>(slot), static_cast<uint8_t>(pin + 1)));
    EXPECT_GE(entries[i][3], 16u) << "never an ISA pin";
    EXPECT_LE(entries[i][3], 23u) << "the IOAPIC has 24 pins";
  }
  // The DSDT with the table still checksums to zero (covered for all tables above, but the
  // _PRT is the bulk of it).
  EXPECT_EQ(sum(t.blob, t.dsdt, get<uint32_t>(t.blob, t.dsdt + 4)), 0);
}

TEST(PciIntxRouting, SwizzleSpreadsNeighbouringSlotsOverPins16To23) {
  EXPECT_EQ(pci_intx_gsi(0, 1), 16u);
  EXPECT_EQ(pci_intx_gsi(1, 1), 17u);
  EXPECT_EQ(pci_intx_gsi(1, 4), 20u);
  EXPECT_EQ(pci_intx_gsi(7, 2), 16u);
  EXPECT_EQ(pci_intx_gsi(8, 1), 16u);
  EXPECT_EQ(pci_intx_gsi(31, 4), 18u);
  // INTA of eight consecutive slots uses all eight pins.
  std::vector<uint32_t> gsis;
  for (uint8_t s = 3; s < 11; ++s) gsis.push_back(pci_intx_gsi(s, 1));
  std::sort(gsis.begin(), gsis.end());
  EXPECT_EQ(std::unique(gsis.begin(), gsis.end()), gsis.end());
}

// ---- AML encoder ---------------------------------------------------------------------------

TEST(AmlPkgLength, OneByteUpToAPayloadOf0x3e) {
  EXPECT_EQ(Aml::pkg_length(0), (Bytes{0x01}));
  EXPECT_EQ(Aml::pkg_length(0x3e), (Bytes{0x3f}));
}

TEST(AmlPkgLength, TwoBytesFromAPayloadOf0x3fUpTo0xffd) {
  // Total length (payload + 2 length bytes) low nibble in byte 0, the rest in byte 1.
  EXPECT_EQ(Aml::pkg_length(0x3f), (Bytes{0x41, 0x04}));   // total 0x041
  EXPECT_EQ(Aml::pkg_length(0xffd), (Bytes{0x4f, 0xff}));  // total 0xfff
}

TEST(AmlPkgLength, ThreeBytesFromAPayloadOf0xffeUpTo0xffffc) {
  EXPECT_EQ(Aml::pkg_length(0xffe), (Bytes{0x81, 0x00, 0x01}));    // total 0x01001
  EXPECT_EQ(Aml::pkg_length(0xffffc), (Bytes{0x8f, 0xff, 0xff}));  // total 0xfffff
}

TEST(AmlPkgLength, FourBytesFromAPayloadOf0xffffd) {
  EXPECT_EQ(Aml::pkg_length(0xffffd), (Bytes{0xc1, 0x00, 0x00, 0x01}));  // total 0x100001
  EXPECT_EQ(Aml::pkg_length(0xffffe), (Bytes{0xc2, 0x00, 0x00, 0x01}));  // total 0x100002
}

TEST(AmlPkgLength, EncodedValueAlwaysCountsItsOwnBytes) {
  for (size_t payload : {size_t{0}, size_t{1}, size_t{0x3d}, size_t{0x3e}, size_t{0x3f},
                         size_t{0x40}, size_t{0x100}, size_t{0xffc}, size_t{0xffd}, size_t{0xffe},
                         size_t{0xffffc}, size_t{0xffffd}, size_t{0xfffff}, size_t{0x123456}}) {
    const Bytes b = Aml::pkg_length(payload);
    ASSERT_FALSE(b.empty());
    const size_t follow = b[0] >> 6;
    ASSERT_EQ(b.size(), follow + 1) << "payload " << payload;
    size_t decoded = follow == 0 ? (b[0] & 0x3f) : (b[0] & 0x0f);
    for (size_t i = 1; i < b.size(); ++i) decoded |= size_t{b[i]} << (4 + 8 * (i - 1));

    EXPECT_EQ(decoded, payload + b.size()) << "payload " << payload;
  }
}

TEST(AmlEisaId, Pnp0a03CompressesToTheSpecBytes) {
  EXPECT_EQ(Aml::eisa_id("PNP0A03"), (Bytes{0x0c, 0x41, 0xd0, 0x0a, 0x03}));
}

TEST(AmlEisaId, Pnp0501CompressesToTheSpecBytes) {
  EXPECT_EQ(Aml::eisa_id("PNP0501"), (Bytes{0x0c, 0x41, 0xd0, 0x05, 0x01}));
}

TEST(AmlInteger, UsesTheShortestEncoding) {
  EXPECT_EQ(Aml::integer(0), (Bytes{0x00}));        // ZeroOp
  EXPECT_EQ(Aml::integer(1), (Bytes{0x01}));        // OneOp
  EXPECT_EQ(Aml::integer(2), (Bytes{0x0a, 0x02}));  // BytePrefix
  EXPECT_EQ(Aml::integer(0xff), (Bytes{0x0a, 0xff}));
  EXPECT_EQ(Aml::integer(0x100), (Bytes{0x0b, 0x00, 0x01}));  // WordPrefix
  EXPECT_EQ(Aml::integer(0xffff), (Bytes{0x0b, 0xff, 0xff}));
  EXPECT_EQ(Aml::integer(0x10000), (Bytes{0x0c, 0x00, 0x00, 0x01, 0x00}));  // DWordPrefix
  EXPECT_EQ(Aml::integer(0xffffffff), (Bytes{0x0c, 0xff, 0xff, 0xff, 0xff}));
  EXPECT_EQ(Aml::integer(0x100000000),
            (Bytes{0x0e, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00}));  // QWordPrefix
}

TEST(AmlString, IsStringPrefixBytesAndNul) {
  EXPECT_EQ(Aml::string("ab"), (Bytes{0x0d, 'a', 'b', 0x00}));
}

TEST(AmlPackage, CarriesLengthCountAndElements) {
  EXPECT_EQ(Aml::package({Aml::integer(5), Aml::integer(0)}),
            (Bytes{0x12, 0x05, 0x02, 0x0a, 0x05, 0x00}));
}

TEST(AmlResources, IoAndIrqDescriptorsMatchTheSmallResourceFormat) {
  EXPECT_EQ(Aml::res_io(0x3f8, 0x3f8, 1, 8),
            (Bytes{0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08}));
  EXPECT_EQ(Aml::res_irq_noflags(4), (Bytes{0x22, 0x10, 0x00}));
}

TEST(AmlResources, TemplateIsABufferEndingWithTheEndTag) {
  const Bytes t = Aml::resource_template({Aml::res_irq_noflags(4)});

  // BufferOp, PkgLength, BytePrefix 5 (size), IRQ descriptor, EndTag + checksum.
  EXPECT_EQ(t, (Bytes{0x11, 0x08, 0x0a, 0x05, 0x22, 0x10, 0x00, 0x79, 0x00}));
}

}  // namespace
}  // namespace iovirt
