// ACPI tables for a hardware-reduced x86 platform (ACPI 6.x): RSDP, XSDT, FADT, MADT, DSDT.
// Hardware-reduced means no PM timer, SCI or fixed-function registers: poweroff and reset go
// through the FADT's sleep-control and reset registers, which iovirt decodes on port I/O.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"

namespace iovirt {

// A tiny AML encoder: just what a DSDT describing a PCI root and _S5 needs.
class Aml final {
 public:
  static std::vector<uint8_t> integer(uint64_t v);
  static std::vector<uint8_t> eisa_id(const char id[8]);
  static std::vector<uint8_t> string(const std::string& s);
  static std::vector<uint8_t> name(const char seg[5], const std::vector<uint8_t>& value);
  static std::vector<uint8_t> package(const std::vector<std::vector<uint8_t>>& elements);
  static std::vector<uint8_t> buffer(const std::vector<uint8_t>& bytes);
  static std::vector<uint8_t> scope(const std::string& path, const std::vector<uint8_t>& body);
  static std::vector<uint8_t> device(const char seg[5], const std::vector<uint8_t>& body);
  // PkgLength encoding (ACPI 6.4 section 20.2.4) of a payload of `len` bytes.
  static std::vector<uint8_t> pkg_length(size_t payload_len);

  // Resource template descriptors (ACPI 6.4 section 6.4).
  static std::vector<uint8_t> res_io(uint16_t min, uint16_t max, uint8_t align, uint8_t len);
  static std::vector<uint8_t> res_irq_noflags(uint8_t irq);  // edge, active high, ISA IRQ 0..15
  static std::vector<uint8_t> res_word_bus(uint16_t min, uint16_t max);
  static std::vector<uint8_t> res_word_io(uint16_t min, uint16_t max);
  static std::vector<uint8_t> res_dword_mem(uint32_t min, uint32_t max);
  static std::vector<uint8_t> res_qword_mem(uint64_t min, uint64_t max);
  static std::vector<uint8_t> resource_template(const std::vector<std::vector<uint8_t>>& items);
};

struct AcpiConfig {
  uint32_t cpus = 1;
  uint64_t rsdp_gpa = 0;        // tables follow the RSDP, each 16-byte aligned
  uint64_t mmio32_base = 0, mmio32_size = 0;
  uint64_t mmio64_base = 0, mmio64_size = 0;
  uint16_t io_base = 0, io_size = 0;
  uint16_t pm_base = 0;         // sleep control (+0), sleep status (+1), reset (+2)
  uint32_t ioapic_addr = 0, lapic_addr = 0;
  uint16_t com1_port = 0x3f8;
  uint8_t com1_irq = 4;
};

// Value written to the reset register to reset the platform.
inline constexpr uint8_t kAcpiResetValue = 0x01;
// _S5 sleep type; hardware-reduced sleep control: SLP_TYP in bits 4:2, SLP_EN bit 5.
inline constexpr uint8_t kAcpiS5Type = 5;

// Returns the bytes to copy at cfg.rsdp_gpa (all tables, checksummed).
Result<std::vector<uint8_t>> build_acpi_tables(const AcpiConfig& cfg);

}  // namespace iovirt
