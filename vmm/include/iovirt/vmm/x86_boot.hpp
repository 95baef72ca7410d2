// Putting a Linux kernel into guest memory and a vCPU into its 64-bit entry state.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/kvm.hpp"
#include "iovirt/vmm/bzimage.hpp"

namespace iovirt {

struct LinuxBootSpec {
  std::string kernel_path;
  std::string initrd_path;      // empty: none
  std::string cmdline;
  uint64_t low_ram = 0;         // RAM at [0, low_ram)
  uint64_t high_ram = 0;        // RAM at [4 GiB, 4 GiB + high_ram)
  uint64_t rsdp_gpa = 0;
};

struct LinuxBootInfo {
  uint64_t entry = 0;           // 64-bit entry point (kernel load address + 0x200)
  uint64_t zero_page = 0;
  uint64_t initrd_gpa = 0, initrd_size = 0;
  uint16_t protocol = 0;
};

// The e820 map for a VM with this RAM layout.
std::vector<E820Entry> build_e820(uint64_t low_ram, uint64_t high_ram);

// Loads bzImage, initrd and command line, writes the zero page, GDT and identity page tables.
Result<LinuxBootInfo> load_linux(const GuestMemory& mem, const LinuxBootSpec& spec);

// Code at the reset vector (F000:FFF0): there is no firmware, so a guest that reboots by jumping
// there (Linux does when ACPI is hardware-reduced and there is no EFI) finds a stub that pulses
// the i8042 reset line and halts, and the VMM sees a reset like any other.
Status install_reset_stub(const GuestMemory& mem);

// Registers and segment state for the boot protocol's 64-bit entry (BSP only; APs start from
// INIT/SIPI through the in-kernel LAPIC).
Status setup_boot_vcpu(const VcpuFd& vcpu, const LinuxBootInfo& info);

// CPUID for vCPU `index` of `count`: KVM's supported set with APIC ids and topology patched.
std::vector<kvm_cpuid_entry2> vcpu_cpuid(std::vector<kvm_cpuid_entry2> supported, uint32_t index,
                                         uint32_t count, bool tsc_deadline);

// MSRs, FPU and LAPIC LINT0/LINT1 as a PC firmware leaves them.
Status setup_vcpu_common(const VcpuFd& vcpu);

}  // namespace iovirt
