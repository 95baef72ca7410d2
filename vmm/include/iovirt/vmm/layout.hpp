// Guest physical address map of an iovirt x86-64 VM.
//
//   0x0000_0500  GDT                      0x0000_7000  boot_params (zero page)
//   0x0000_9000  PML4, PDPT, 4 PDs (identity map of the low 4 GiB, 2 MiB pages)
//   0x0002_0000  kernel command line      0x0009_fc00  EBDA (reserved)
//   0x000e_0000  ACPI tables (reserved)   0x0010_0000  bzImage protected-mode kernel
//   RAM below the 32-bit PCI hole; 0xc000_0000..0xfc00_0000 32-bit PCI MMIO window;
//   0xfec0_0000 IOAPIC, 0xfee0_0000 LAPIC; RAM above 4 GiB; then the 64-bit PCI MMIO window.
#pragma once

#include <cstdint>

namespace iovirt::layout {

inline constexpr uint64_t kGdt = 0x500;
inline constexpr uint64_t kIdt = 0x520;
inline constexpr uint64_t kZeroPage = 0x7000;
inline constexpr uint64_t kBootStack = 0x8ff0;
inline constexpr uint64_t kPml4 = 0x9000;
inline constexpr uint64_t kPdpt = 0xa000;
inline constexpr uint64_t kPd = 0xb000;  // four pages: 0xb000..0xefff
inline constexpr uint64_t kCmdline = 0x20000;
inline constexpr uint64_t kCmdlineMax = 0x10000;
inline constexpr uint64_t kEbda = 0x9fc00;
inline constexpr uint64_t kAcpiStart = 0xe0000;
inline constexpr uint64_t kBiosEnd = 0x100000;
inline constexpr uint64_t kResetVector = 0xffff0;    // F000:FFF0, where a CPU reset starts
inline constexpr uint64_t kKernelLoad = 0x100000;

inline constexpr uint64_t kPciHole = 0xc0000000;       // end of low RAM
inline constexpr uint64_t kMmio32Base = 0xc0000000;
inline constexpr uint64_t kMmio32Size = 0x3c000000;    // up to 0xfc00_0000
inline constexpr uint64_t kIoApic = 0xfec00000;
inline constexpr uint64_t kLapic = 0xfee00000;
inline constexpr uint64_t kHighRam = 0x100000000;      // 4 GiB
inline constexpr uint64_t kMmio64Size = 0x800000000;   // 32 GiB above RAM, 1 GiB aligned

inline constexpr uint64_t kTssAddr = 0xfffbd000;       // VMX-only scratch pages, inside the hole
inline constexpr uint64_t kIdentityMap = 0xfffbc000;

// Port I/O
inline constexpr uint16_t kPioIoWindowBase = 0xc000;   // PCI I/O BARs
inline constexpr uint16_t kPioIoWindowSize = 0x4000;
inline constexpr uint16_t kAcpiPmBase = 0x600;         // sleep control, sleep status, reset
inline constexpr uint16_t kCom1 = 0x3f8;
inline constexpr uint32_t kCom1Irq = 4;

}  // namespace iovirt::layout
