// The facts behind an interrupt-path report for a passthrough device (issue 5): can a device
// interrupt reach the guest without a VM exit (posted interrupts), and how many interrupts has
// the host delivered per vector. Pure functions over sysfs (injectable root) and /proc/interrupts
// text, so they are unit-tested on fake inputs.
//
// Posted-interrupt delivery needs both halves:
//  - the CPU side: Intel APICv (kvm_intel enable_apicv) or AMD AVIC (kvm_amd avic), so KVM can
//    post into a running vCPU;
//  - the IOMMU side: Intel VT-d interrupt remapping with Posted Interrupts (Capability Register
//    bit 59, PI; Extended Capability bit 3, IR — VT-d spec 11.4.2/11.4.3), or AMD-Vi guest virtual
//    APIC (Extended Feature Register bit 7, GASup), so the device's MSI is written straight into
//    the vCPU's posted-interrupt descriptor instead of the host vector.
// What sysfs cannot tell: whether the kernel actually runs the IOMMU in posting mode
// (intremap=nopost, amd_iommu_intr=legacy). Capable hardware is therefore reported as "capable",
// never as "in use"; the per-vector host counts below show the truth at runtime (a vector that
// keeps counting on the host is not being posted).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "iovirt/core/error.hpp"
#include "iovirt/core/sysfs.hpp"

namespace iovirt::vfio {

enum class Tri { No, Yes, Unknown };
[[nodiscard]] std::string_view to_string(Tri t);

struct PostedInterruptSupport {
  std::string cpu_vendor;  // "intel" (kvm_intel loaded), "amd" (kvm_amd), else "unknown"
  Tri cpu_posting = Tri::Unknown;     // APICv / AVIC enabled in KVM
  Tri iommu_remapping = Tri::Unknown;  // interrupt remapping present (VT-d ecap IR)
  Tri iommu_posting = Tri::Unknown;    // VT-d cap PI / AMD-Vi EFR GASup on every IOMMU unit
  std::string summary;                 // one line for logs and the report
};

// Reads sysfs.root()/module/kvm_{intel,amd}/parameters/{enable_apicv,avic} and
// sysfs.root()/class/iommu/*/{intel-iommu/cap,intel-iommu/ecap,amd-iommu/features}.
[[nodiscard]] PostedInterruptSupport detect_posted_interrupts(const Sysfs& sysfs);

// From /proc/interrupts text: for the VFIO vectors of `bdf` ("vfio-msix[3](0000:02:00.0)",
// "vfio-msi[0](...)", "vfio-intx(...)"), the name without the "(bdf)" suffix -> the sum of its
// per-CPU counts. An empty map when the device has no vector registered (interrupts not enabled
// yet). Fails on text without the "CPUn" header line.
Result<std::map<std::string, uint64_t>> host_vector_interrupts(std::string_view proc_interrupts_text,
                                                               std::string_view bdf);

}  // namespace iovirt::vfio
