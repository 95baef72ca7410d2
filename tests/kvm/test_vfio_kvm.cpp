// vfio/ on the host's /dev/kvm: the KVM-VFIO pseudo device is created on a real VM, and KVM refuses
// a file that is not a VFIO group (the ADD path and its error reach the caller; the group list
// stays empty). Adding a real group needs /dev/vfio and runs in the lab.
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "iovirt/core/fd.hpp"
#include "iovirt/core/kvm.hpp"
#include "iovirt/vfio/kvm_vfio.hpp"

namespace iovirt::vfio {
namespace {

TEST(VfioKvm, KvmVfioDeviceRefusesANonGroupFd) {
  if (::access("/dev/kvm", F_OK) != 0) GTEST_SKIP() << "/dev/kvm is absent: no KVM on this host";
  auto kvm = Kvm::open();
  if (!kvm) GTEST_SKIP() << "/dev/kvm cannot be opened: " << kvm.error().message();
  auto vm = kvm->create_vm();
  ASSERT_TRUE(vm) << vm.error().message();
  auto dev = KvmVfioDevice::create(*vm);
  if (!dev && dev.error().code() == ENODEV) {
    GTEST_SKIP() << "this kernel has no KVM-VFIO device (CONFIG_KVM_VFIO)";
  }
  ASSERT_TRUE(dev) << dev.error().message();

  Fd not_a_group(::eventfd(0, EFD_CLOEXEC));
  ASSERT_TRUE(not_a_group);
  auto st = dev->add_group(not_a_group.get());
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("KVM_DEV_VFIO_GROUP_ADD"), std::string::npos)
      << st.error().message();
  // EINVAL is "a valid fd that is not a VFIO group": KVM read our int32 fd through attr.addr
  // (EFAULT would mean a bad pointer, EBADF a garbled fd number).
  EXPECT_EQ(st.error().code(), EINVAL) << st.error().message();
  EXPECT_TRUE(dev->groups().empty());
  EXPECT_FALSE(dev->del_group(not_a_group.get())) << "never added";
}

}  // namespace
}  // namespace iovirt::vfio
