#include "iovirt/vfio/kvm_vfio.hpp"

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "iovirt/core/log.hpp"

namespace iovirt::vfio {

namespace {

Status group_attr(int dev_fd, uint64_t op, int group_fd, const char* what) {
  int32_t fd32 = group_fd;
  kvm_device_attr attr{};
  attr.flags = 0;
  attr.group = KVM_DEV_VFIO_GROUP;
  attr.attr = op;
  attr.addr = reinterpret_cast<uintptr_t>(&fd32);
  if (::ioctl(dev_fd, KVM_SET_DEVICE_ATTR, &attr) != 0) {
    return fail_errno(std::string("KVM_SET_DEVICE_ATTR(KVM_DEV_VFIO_GROUP_") + what + ") group fd " +
                      std::to_string(group_fd));
  }
  return {};
}

}  // namespace

Result<KvmVfioDevice> KvmVfioDevice::create(const VmFd& vm) {
  auto fd = vm.create_device(KVM_DEV_TYPE_VFIO);
  if (!fd) return std::unexpected(std::move(fd.error()).context("create the KVM-VFIO device"));
  return KvmVfioDevice(std::move(*fd));
}

KvmVfioDevice& KvmVfioDevice::operator=(KvmVfioDevice&& o) noexcept {
  if (this != &o) {
    del_all();
    fd_ = std::move(o.fd_);
    groups_ = std::move(o.groups_);
    o.groups_.clear();
  }
  return *this;
}

KvmVfioDevice::~KvmVfioDevice() {
  del_all();
}

void KvmVfioDevice::del_all() {
  if (!fd_) return;
  for (auto it = groups_.rbegin(); it != groups_.rend(); ++it) {
    auto st = group_attr(fd_.get(), KVM_DEV_VFIO_GROUP_DEL, *it, "DEL");
    if (!st) log_warn("vfio: " + st.error().message());
  }
  groups_.clear();
}

Status KvmVfioDevice::add_group(int group_fd) {
  if (std::find(groups_.begin(), groups_.end(), group_fd) != groups_.end()) return {};
  IOVIRT_CHECK_CTX(group_attr(fd_.get(), KVM_DEV_VFIO_GROUP_ADD, group_fd, "ADD"), "KVM-VFIO");
  groups_.push_back(group_fd);
  return {};
}

Status KvmVfioDevice::del_group(int group_fd) {
  auto it = std::find(groups_.begin(), groups_.end(), group_fd);
  if (it == groups_.end()) return fail("KVM-VFIO: group fd " + std::to_string(group_fd) +
                                           " was not added", EINVAL);
  groups_.erase(it);
  IOVIRT_CHECK_CTX(group_attr(fd_.get(), KVM_DEV_VFIO_GROUP_DEL, group_fd, "DEL"), "KVM-VFIO");
  return {};
}

}  // namespace iovirt::vfio
