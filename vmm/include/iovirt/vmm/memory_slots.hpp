// KVM memory slots for device memory: a passthrough BAR's VFIO mmap placed at the guest address
// the guest programmed into the BAR, so its loads and stores reach the device with no exit.
//
// Slot numbers from `first_slot` up (below it: guest RAM), at most `max_slots` live at once. A
// mapping is refused, with nothing changed, when it is not page-aligned, wraps, or overlaps guest
// RAM or another live mapping: the guest chooses BAR addresses, so a BAR moved over RAM or over
// another BAR must fail here rather than silently shadow memory in KVM. The KVM call is injected
// (VmFd::set_user_memory_region in the VMM) so the bookkeeping is unit-tested without /dev/kvm.
// Thread-safe: BAR moves come from vCPU threads.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include "iovirt/core/error.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/vfio/memory_mapper.hpp"

namespace iovirt {

class DeviceMemorySlots final : public vfio::MemoryMapper {
 public:
  // KVM_SET_USER_MEMORY_REGION(slot, gpa, size, host); size 0 deletes the slot.
  using SetSlot = std::function<Status(uint32_t slot, uint64_t gpa, uint64_t size, void* host)>;

  DeviceMemorySlots(const GuestMemory& ram, uint32_t first_slot, uint32_t max_slots, SetSlot set)
      : ram_(ram), first_slot_(first_slot), max_slots_(max_slots), set_(std::move(set)) {}

  Result<uint32_t> map(uint64_t gpa, uint64_t size, void* host, std::string_view what) override;
  Status unmap(uint32_t handle) override;

  size_t live() const;

 private:
  struct Mapping {
    uint64_t gpa;
    uint64_t size;
    std::string what;
  };
  const GuestMemory& ram_;
  uint32_t first_slot_;
  uint32_t max_slots_;
  SetSlot set_;
  mutable std::mutex mu_;
  std::map<uint32_t, Mapping> live_;  // slot -> mapping
};

}  // namespace iovirt
