// C layouts of the KVM uAPI structs that end in a flexible array.
//
// <linux/stddef.h> (linux-libc-dev 6.1) declares those arrays with __DECLARE_FLEX_ARRAY, an
// anonymous struct holding an empty struct and the array. In C the empty struct has size 0; in
// C++ it has size 1, so under C++ the array moves (kvm_cpuid2::entries lands at offset 12, not 8)
// and every _IOWR number computed from sizeof(struct) is wrong: KVM rejects them with EINVAL.
// iovirt therefore uses these headers, whose sizes match the kernel's C view, with ioctl
// numbers derived from them, and lays the entries out right after the header.
#pragma once

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstdint>

namespace iovirt::kvm_uapi {

struct CpuidHeader {  // struct kvm_cpuid2 without entries[]
  uint32_t nent;
  uint32_t padding;
};
struct MsrsHeader {  // struct kvm_msrs without entries[]
  uint32_t nmsrs;
  uint32_t pad;
};
struct MsrListHeader {  // struct kvm_msr_list without indices[]
  uint32_t nmsrs;
};
struct IrqRoutingHeader {  // struct kvm_irq_routing without entries[]
  uint32_t nr;
  uint32_t flags;
};
static_assert(sizeof(CpuidHeader) == 8 && sizeof(MsrsHeader) == 8 && sizeof(MsrListHeader) == 4 &&
              sizeof(IrqRoutingHeader) == 8);
static_assert(sizeof(kvm_cpuid_entry2) == 40 && sizeof(kvm_msr_entry) == 16 &&
              sizeof(kvm_irq_routing_entry) == 48);

inline constexpr unsigned long kGetMsrIndexList = _IOWR(KVMIO, 0x02, MsrListHeader);
inline constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
inline constexpr unsigned long kSetGsiRouting = _IOW(KVMIO, 0x6a, IrqRoutingHeader);
inline constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
inline constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
inline constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);

}  // namespace iovirt::kvm_uapi
