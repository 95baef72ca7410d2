// How a passthrough BAR becomes guest memory: the VMM places host memory (a BAR's VFIO mmap) at a
// guest physical address, as a KVM memory slot, so guest loads and stores reach the device with no
// exit. The VMM implements this on its VmFd (it owns the slot numbers); unit tests use a recording
// fake.
#pragma once

#include <cstdint>
#include <string_view>

#include "iovirt/core/error.hpp"

namespace iovirt::vfio {

class MemoryMapper {
 public:
  virtual ~MemoryMapper() = default;
  // Maps `size` bytes at `host` (page-aligned, size a multiple of the page size) at guest physical
  // `gpa`; returns a handle for unmap(). Fails when the range overlaps guest RAM or another slot.
  // `what` names the mapping in errors ("0000:02:00.0 BAR0").
  virtual Result<uint32_t> map(uint64_t gpa, uint64_t size, void* host, std::string_view what) = 0;
  virtual Status unmap(uint32_t handle) = 0;
};

}  // namespace iovirt::vfio
