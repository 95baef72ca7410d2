// Up-front host checks for passthrough, each failing with one line that names what is wrong and
// the command that fixes it, before any VFIO fd is opened: the device's driver and IOMMU group
// (over an injectable sysfs root, so unit tests run on a fake tree), the VFIO device nodes, and
// the locked-memory budget type1 needs to pin guest RAM.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/sysfs.hpp"

namespace iovirt::vfio {

struct GroupCheck {
  uint32_t group = 0;                    // IOMMU group number: dev_root/vfio/<group>
  std::string driver;                    // the device's driver ("vfio-pci" or a vfio variant)
  std::vector<std::string> group_members;  // every device of the group, the device included
};

// Checks, in order: the device exists in sysfs; it is bound to vfio-pci (or a vfio-pci variant
// driver, whose name contains "vfio"); it has an IOMMU group; every other member of the group is
// unbound, bound to a vfio driver or pci-stub, or is a PCI bridge (class 0x0604, e.g. pcieport),
// as the kernel's group viability rule allows; dev_root/vfio/vfio and dev_root/vfio/<group>
// exist. Reads only.
Result<GroupCheck> check_device(const Sysfs& sysfs, const PciAddress& addr,
                                const std::filesystem::path& dev_root = "/dev");

// What the locked-memory check looks at, injectable for tests.
struct MemlockFacts {
  bool cap_ipc_lock = false;  // CAP_IPC_LOCK in the effective set: no limit applies
  uint64_t limit_bytes = 0;   // RLIMIT_MEMLOCK soft limit; UINT64_MAX for RLIM_INFINITY
};
// This process: capget(2) for CAP_IPC_LOCK (falls back to euid 0 if capget fails) and
// getrlimit(RLIMIT_MEMLOCK).
Result<MemlockFacts> current_memlock_facts();
// Type1 pins every DMA-mapped page and charges it to RLIMIT_MEMLOCK: passes when CAP_IPC_LOCK is
// held or the limit covers bytes_needed (guest RAM size).
Status check_memlock(uint64_t bytes_needed, const MemlockFacts& facts);
Status check_memlock(uint64_t bytes_needed);

}  // namespace iovirt::vfio
