#include "iovirt/vfio/transport.hpp"

#include <linux/vfio.h>
#include <sys/mman.h>

#include <utility>

namespace iovirt::vfio {

bool DeviceInfo::resettable() const {
  return (flags & VFIO_DEVICE_FLAGS_RESET) != 0;
}

bool RegionInfo::readable() const {
  return (flags & VFIO_REGION_INFO_FLAG_READ) != 0;
}
bool RegionInfo::writable() const {
  return (flags & VFIO_REGION_INFO_FLAG_WRITE) != 0;
}
bool RegionInfo::mappable() const {
  return (flags & VFIO_REGION_INFO_FLAG_MMAP) != 0 && !mmap_areas.empty();
}

RegionMapping::RegionMapping(RegionMapping&& o) noexcept
    : addr_(std::exchange(o.addr_, nullptr)), size_(std::exchange(o.size_, 0)) {}

RegionMapping& RegionMapping::operator=(RegionMapping&& o) noexcept {
  if (this != &o) {
    if (addr_ != nullptr) ::munmap(addr_, size_);
    addr_ = std::exchange(o.addr_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

RegionMapping::~RegionMapping() {
  if (addr_ != nullptr) ::munmap(addr_, size_);
}

}  // namespace iovirt::vfio
