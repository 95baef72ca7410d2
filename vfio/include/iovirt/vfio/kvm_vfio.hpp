// The KVM-VFIO pseudo device (KVM_DEV_TYPE_VFIO): tells KVM which VFIO groups the VM uses, so KVM
// can honour non-coherent DMA (WBINVD emulation, memory types) for devices behind an IOMMU that
// does not snoop, and so the irq-bypass producer/consumer pairing (posted interrupts) can find the
// VFIO side. One per VM; groups are added when their first device is opened and removed on
// destruction. The group fds belong to the Container: destroy this device before the container
// (the DEL on destruction passes those fds to KVM).
#pragma once

#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/fd.hpp"
#include "iovirt/core/kvm.hpp"

namespace iovirt::vfio {

class KvmVfioDevice final {
 public:
  static Result<KvmVfioDevice> create(const VmFd& vm);

  KvmVfioDevice(KvmVfioDevice&&) noexcept = default;
  KvmVfioDevice& operator=(KvmVfioDevice&&) noexcept;
  KvmVfioDevice(const KvmVfioDevice&) = delete;
  KvmVfioDevice& operator=(const KvmVfioDevice&) = delete;
  ~KvmVfioDevice();

  // KVM_SET_DEVICE_ATTR(KVM_DEV_VFIO_GROUP, KVM_DEV_VFIO_GROUP_ADD, &fd). Adding a group twice is
  // a no-op here (two devices of one group).
  Status add_group(int group_fd);
  Status del_group(int group_fd);
  [[nodiscard]] const std::vector<int>& groups() const { return groups_; }

 private:
  explicit KvmVfioDevice(Fd fd) : fd_(std::move(fd)) {}
  void del_all();
  Fd fd_;
  std::vector<int> groups_;
};

}  // namespace iovirt::vfio
