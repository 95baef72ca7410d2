// NVMe virtualization management: what an NVMe PF with flexible resources (QEMU's SR-IOV NVMe,
// some enterprise SSDs) needs before its VFs work. Each VF is a secondary controller that starts
// offline with no queues and no interrupt vectors; the host gives it flexible resources taken
// from the primary and sets it online (NVMe Base Specification 2.0, 8.26 "Virtualization
// Enhancements"; 5.22 Virtualization Management command, opcode 1Ch; Identify CNS 14h Primary
// Controller Capabilities and CNS 15h Secondary Controller List). This is what
// `nvme virt-mgmt` does by hand (deploy/lab/l1/lib.sh, lab_nvme_vfs).
//
// The admin commands go through the NvmeAdmin seam (NVME_IOCTL_ADMIN_CMD on /dev/nvmeN for
// real), so the sequence is unit tested against a fake controller.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/sriov/sriov.hpp"

namespace iovirt::sriov {

struct NvmeAdminCmd {
  std::uint8_t opcode = 0;
  std::uint32_t cdw10 = 0;
  std::uint32_t cdw11 = 0;
  std::span<std::uint8_t> data;  // controller-to-host buffer (Identify), empty for none
};

class NvmeAdmin {
 public:
  virtual ~NvmeAdmin() = default;
  // Completion dword 0 on success; an error names the NVMe status or errno.
  virtual Result<std::uint32_t> submit(const NvmeAdminCmd& cmd) = 0;
};

// /dev/nvmeN through NVME_IOCTL_ADMIN_CMD (needs CAP_SYS_ADMIN).
Result<std::unique_ptr<NvmeAdmin>> open_nvme_admin(const std::string& dev_path);

inline constexpr std::uint8_t kNvmeOpcIdentify = 0x06;
inline constexpr std::uint8_t kNvmeOpcVirtMgmt = 0x1c;
inline constexpr std::uint8_t kNvmeCnsPrimaryCaps = 0x14;
inline constexpr std::uint8_t kNvmeCnsSecondaryList = 0x15;
// Virtualization Management actions (CDW10 bits 3:0) and resource types (bits 10:8).
enum class NvmeVirtAct : std::uint8_t {
  PrimaryFlexibleAllocation = 1,
  SecondaryOffline = 7,
  SecondaryAssign = 8,
  SecondaryOnline = 9
};
enum class NvmeResource : std::uint8_t { Queues = 0, Interrupts = 1 };
std::uint32_t nvme_virt_mgmt_cdw10(NvmeVirtAct act, NvmeResource rt, std::uint16_t cntlid);

struct NvmePrimaryCaps {
  std::uint16_t cntlid = 0;
  std::uint8_t crt = 0;         // bit 0 VQ, bit 1 VI flexible resources supported
  std::uint32_t vqfrt = 0;      // VQ flexible resources total
  std::uint16_t vqrfap = 0;     // ... currently allocated to the primary
  std::uint16_t vqfrsm = 0;     // ... maximum per secondary
  std::uint32_t vifrt = 0;      // VI (interrupt) flexible resources total
  std::uint16_t virfap = 0;
  std::uint16_t vifrsm = 0;
};
struct NvmeSecondary {
  std::uint16_t scid = 0;  // its controller id
  bool online = false;
  std::uint16_t vfn = 0;   // VF number, 1-based (virtfn0 is VF number 1)
  std::uint16_t nvq = 0, nvi = 0;
};
Result<NvmePrimaryCaps> nvme_primary_caps(NvmeAdmin& admin);
Result<std::vector<NvmeSecondary>> nvme_secondaries(NvmeAdmin& admin);

// Whether the PF is an NVMe controller (PCI class 01:08:02) and, when it is, its /dev node name
// (nvmeN from <pf>/nvme/); an NVMe PF without a bound nvme driver is an error naming the fix.
Result<std::optional<std::string>> nvme_ctrl_of(const Sriov& sriov, const PciAddress& pf);

// Enables n VFs on an NVMe PF with flexible resources: primary's flexible allocation released
// (and the PF reset for it to take effect) if it holds any, sriov_drivers_autoprobe off while the
// VFs are offline, sriov_numvfs = n, each VF's secondary controller given an equal share of
// queues (>= 2: admin + one I/O) and vectors (>= 1) and set online, then autoprobe restored (and
// the VFs probed) if it was on. A PF without flexible resources (CRT = 0) gets a plain enable().
// `reopen` gives a fresh admin handle after the PF reset.
Status nvme_enable_vfs(Sriov& sriov, const PciAddress& pf, unsigned n,
                       const std::function<Result<std::unique_ptr<NvmeAdmin>>()>& reopen);

}  // namespace iovirt::sriov
